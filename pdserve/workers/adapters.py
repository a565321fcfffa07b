"""Seeded LoRA adapters for the seeded checkpoints, in PEFT's on-disk layout, so adapter tests
download nothing.

An adapter is `adapter_config.json` (PEFT's LoRA config) and `adapter_model.safetensors`, whose
tensors are named `base_model.model.<module>.lora_A.weight` (rank x in) and `...lora_B.weight`
(out x rank), as PEFT saves them and vLLM's LoRA loader reads them. Weights come from the same
counter-based generator as the checkpoint (`checkpoint.seeded_uniform`), keyed by the adapter's
name: every machine writes the same bytes, and two names give two different adapters.

PEFT initialises B to zero (an untrained adapter changes nothing); a seeded B of the
checkpoint's scale makes the update as large as the base weights, so greedy output through the
adapter differs from the base model's and a test comparing them can fail.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pdserve.cache import cache_dir
from pdserve.workers.checkpoint import SHAPES, Shape, seeded_uniform

if TYPE_CHECKING:
    import numpy as np

ADAPTER_VERSION = 1
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEEDED_PREFIX = "seeded:"
"""`seeded:<base>/<name>[@<rank>]` names a seeded adapter of a seeded base (e.g.
`seeded:tiny/pirate`); any other adapter source is a directory in PEFT's layout."""


def parse_seeded(source: str) -> tuple[str, str, int]:
    """(base, name, rank) of a `seeded:` source."""
    spec = source.removeprefix(SEEDED_PREFIX)
    spec, _, rank = spec.partition("@")
    base, _, name = spec.partition("/")
    if base not in SHAPES or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"adapter {source!r}: expected seeded:<base>/<name>[@<rank>] with base one of "
            f"{sorted(SHAPES)} and a name of letters, digits, '-' and '_'"
        )
    return base, name, int(rank) if rank else 8


def seeded_dir(source: str, root: Path) -> Path:
    """Where the seeded adapter `source` lives under the cache directory `root` (`write_adapter`
    writes it there; a chart's pods seed it under their model cache and load it from there)."""
    base, name, rank = parse_seeded(source)
    return root / "adapters" / f"{base}-{name}-r{rank}-v{ADAPTER_VERSION}"


def ensure_adapter(source: str) -> Path:
    """A LoRA adapter directory vLLM can load: a seeded one from the cache (written on first
    use, safe for concurrent callers), or a local PEFT directory, checked to exist."""
    if source.startswith(SEEDED_PREFIX):
        base, name, rank = parse_seeded(source)
        return write_adapter(base, name, rank)
    path = Path(source).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"adapter {source!r}: not seeded:<base>/<name> or a directory with adapter_config.json"
        )
    return path


def write_adapter(base: str, name: str, rank: int = 8, out: Path | None = None) -> Path:
    """Write the seeded adapter `name` of the seeded checkpoint `base`; returns its directory.

    Written into a temporary sibling and renamed into place (as the checkpoint is), so a reader
    never sees half an adapter."""
    final = out or seeded_dir(f"{SEEDED_PREFIX}{base}/{name}@{rank}", cache_dir())
    if (final / "adapter_config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        from safetensors.numpy import save_file

        tensors = adapter_weights(SHAPES[base], name, rank)
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = adapter_config(base, rank)
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        try:
            staging.rename(final)
        except OSError:
            if not (final / "adapter_config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def adapter_config(base: str, rank: int) -> dict[str, object]:
    """PEFT's LoRA config, with the fields vLLM's loader reads."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": rank,  # scale 1: the seeded B sets the size of the update
        "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def module_sizes(shape: Shape) -> dict[str, tuple[int, int]]:
    """(out, in) of every adapted linear layer, by module path."""
    kv = shape.kv_heads * (shape.hidden // shape.heads)
    per_layer = {
        "self_attn.q_proj": (shape.hidden, shape.hidden),
        "self_attn.k_proj": (kv, shape.hidden),
        "self_attn.v_proj": (kv, shape.hidden),
        "self_attn.o_proj": (shape.hidden, shape.hidden),
        "mlp.gate_proj": (shape.intermediate, shape.hidden),
        "mlp.up_proj": (shape.intermediate, shape.hidden),
        "mlp.down_proj": (shape.hidden, shape.intermediate),
    }
    return {
        f"model.layers.{layer}.{module}": size
        for layer in range(shape.layers)
        for module, size in per_layer.items()
    }


def adapter_weights(shape: Shape, name: str, rank: int) -> dict[str, np.ndarray]:
    """lora_A (rank x in) and lora_B (out x rank) of every adapted module.

    A is scaled by 1/sqrt(in) so A x has the size of x; B by 1/sqrt(rank), so B A x is about
    as large as the base layer's W x."""
    tensors = {}
    for module, (out_features, in_features) in module_sizes(shape).items():
        prefix = f"base_model.model.{module}"
        a = seeded_uniform(f"lora/{name}/{prefix}.lora_A", (rank, in_features))
        b = seeded_uniform(f"lora/{name}/{prefix}.lora_B", (out_features, rank))
        tensors[f"{prefix}.lora_A.weight"] = a / (0.2 * in_features**0.5)
        tensors[f"{prefix}.lora_B.weight"] = b * (in_features**0.5 / rank**0.5)
    return tensors


def main(argv: list[str] | None = None) -> int:
    """`python -m pdserve.workers.adapters SOURCE...`: write each seeded adapter into the cache
    ($PDSERVE_CACHE_DIR) and print its directory (a chart pod's init container runs it)."""
    for source in sys.argv[1:] if argv is None else argv:
        print(ensure_adapter(source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
