"""The seeded LoRA adapters: PEFT's layout and names, the same bytes on every write, different
adapters for different names, an update as large as the base layer's (so greedy output moves),
and clear errors for sources that are neither seeded nor a PEFT directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pdserve.workers.adapters import (
    TARGET_MODULES,
    adapter_weights,
    ensure_adapter,
    parse_seeded,
    write_adapter,
)
from pdserve.workers.checkpoint import SHAPES, seeded_uniform

pytestmark = pytest.mark.unit


def _digest(directory: Path) -> str:
    return hashlib.sha256((directory / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_peft_layout_with_every_target_module_of_every_layer(tmp_path: Path) -> None:
    path = write_adapter("tiny", "pirate", 8, tmp_path / "a")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert set(config["target_modules"]) == set(TARGET_MODULES)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    shape = SHAPES["tiny"]
    assert len(tensors) == 2 * len(TARGET_MODULES) * shape.layers
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (8, shape.hidden) and b.shape == (shape.hidden, 8)
    assert a.dtype == np.float32 and b.dtype == np.float32


def test_the_same_bytes_every_time_and_another_adapter_for_another_name(tmp_path: Path) -> None:
    first = write_adapter("tiny", "pirate", 8, tmp_path / "one")
    again = write_adapter("tiny", "pirate", 8, tmp_path / "two")
    other = write_adapter("tiny", "poet", 8, tmp_path / "three")
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_the_update_is_as_large_as_the_base_layer() -> None:
    # B A x against W x for a random unit-scale x: an update far smaller would leave greedy
    # output unchanged, and a test comparing adapter and base tokens could not fail
    shape = SHAPES["tiny"]
    tensors = adapter_weights(shape, "pirate", 8)
    prefix = "base_model.model.model.layers.0.mlp.up_proj"
    a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
    w = seeded_uniform("model.layers.0.mlp.up_proj.weight", (shape.intermediate, shape.hidden))
    x = np.random.default_rng(0).standard_normal(shape.hidden).astype(np.float32)
    ratio = np.std(b @ (a @ x)) / np.std(w @ x)
    assert 0.5 < ratio < 2.0


def test_sources_parse_and_bad_ones_say_what_is_expected(tmp_path: Path) -> None:
    assert parse_seeded("seeded:tiny/pirate") == ("tiny", "pirate", 8)
    assert parse_seeded("seeded:tiny/poet@4") == ("tiny", "poet", 4)
    for bad in ("seeded:huge/pirate", "seeded:tiny/", "seeded:tiny/../x"):
        with pytest.raises(ValueError, match="seeded:<base>/<name>"):
            parse_seeded(bad)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ensure_adapter(str(tmp_path))
    peft_dir = write_adapter("tiny", "pirate", 8, tmp_path / "p")
    assert ensure_adapter(str(peft_dir)) == peft_dir
