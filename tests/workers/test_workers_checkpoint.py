"""The seeded checkpoints: identical bytes everywhere, a byte tokenizer, safe concurrent writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdserve.workers import checkpoint

pytestmark = pytest.mark.unit

# sha256 of tiny's model.safetensors. It changes only with a deliberate new CHECKPOINT_VERSION.
TINY_WEIGHTS_SHA256 = "ae1b2b44586a3834ceb5ecb8250d1743f5b6f0882a537cfa15e182009b1be1a9"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tiny_weights_match_the_published_checksum(cache: Path) -> None:
    path = checkpoint.ensure_model("tiny")
    assert path == cache / f"tiny-v{checkpoint.CHECKPOINT_VERSION}"
    assert sha256(path / "model.safetensors") == TINY_WEIGHTS_SHA256


def test_two_writes_give_identical_files(tmp_path: Path) -> None:
    first = checkpoint.write_checkpoint("tiny", str(tmp_path / "a"))
    second = checkpoint.write_checkpoint("tiny", str(tmp_path / "b"))
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    for name in names:
        assert sha256(first / name) == sha256(second / name), name


def test_config_is_a_float32_llama(tmp_path: Path) -> None:
    config = json.loads(
        (checkpoint.write_checkpoint("tiny", str(tmp_path)) / "config.json").read_text()
    )
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "float32"
    assert config["vocab_size"] == checkpoint.VOCAB_SIZE == 264


@pytest.mark.parametrize(
    ("kind", "parameters_millions"),
    [("tiny", (2, 6)), ("small", (170, 210))],
)
def test_parameter_counts(kind: str, parameters_millions: tuple[int, int]) -> None:
    shape = checkpoint.SHAPES[kind]
    head_dim = shape.hidden // shape.heads
    per_layer = (
        2 * shape.hidden * shape.hidden
        + 2 * shape.kv_heads * head_dim * shape.hidden
        + 3 * shape.hidden * shape.intermediate
    )
    total = shape.layers * per_layer + 2 * checkpoint.VOCAB_SIZE * shape.hidden
    low, high = parameters_millions
    assert low * 1e6 <= total <= high * 1e6


def test_seeded_uniform_has_the_intended_spread_and_depends_on_the_name() -> None:
    values = checkpoint.seeded_uniform("model.layers.0.mlp.up_proj.weight", (512, 512))
    assert values.dtype == np.float32
    assert abs(float(values.std()) - checkpoint.INIT_STD) < 0.002
    assert abs(float(values.mean())) < 0.002
    assert float(np.abs(values).max()) <= checkpoint.INIT_STD * 3**0.5
    other = checkpoint.seeded_uniform("model.layers.1.mlp.up_proj.weight", (512, 512))
    assert not np.array_equal(values, other)
    again = checkpoint.seeded_uniform("model.layers.0.mlp.up_proj.weight", (512, 512))
    assert np.array_equal(values, again)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("a", [97]),
        ("Hi there", [72, 105, 32, 116, 104, 101, 114, 101]),
        ("é", [0xC3, 0xA9]),
        ("<|user|>x", [259, 120]),
    ],
)
def test_tokenizer_is_one_token_per_byte(text: str, ids: list[int]) -> None:
    tokenizer = checkpoint.build_tokenizer()
    assert tokenizer.encode(text).ids == ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_chat_template_renders_with_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.write_checkpoint("tiny", str(tmp_path)))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>be brief\n<|user|>hi\n<|assistant|>"


def test_local_paths_pass_through_and_missing_ones_fail(tmp_path: Path) -> None:
    written = checkpoint.write_checkpoint("tiny", str(tmp_path / "mine"))
    assert checkpoint.ensure_model(str(written)) == written
    with pytest.raises(FileNotFoundError, match="no-such"):
        checkpoint.ensure_model(str(tmp_path / "no-such"))
    with pytest.raises(ValueError, match="unknown checkpoint"):
        checkpoint.write_checkpoint("huge", str(tmp_path / "x"))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PDSERVE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert checkpoint.cache_dir() == tmp_path / "xdg" / "pdserve"
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path / "explicit"))
    assert checkpoint.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PDSERVE_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert checkpoint.cache_dir() == tmp_path / "home" / ".cache" / "pdserve"


def test_concurrent_first_use_gives_one_complete_checkpoint(cache: Path) -> None:
    code = "from pdserve.workers.checkpoint import ensure_model; print(ensure_model('tiny'))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(outputs)) == 1
    final = Path(outputs[0])
    assert sha256(final / "model.safetensors") == TINY_WEIGHTS_SHA256
    assert [p.name for p in cache.iterdir()] == [final.name]  # no staging dirs left behind
