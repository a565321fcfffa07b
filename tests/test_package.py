"""The built wheel, installed in a fresh venv without the source tree, as a user gets it.

The wheel is built offline from a copy of the repository's packaged files (`pip wheel --no-deps
--no-build-isolation --no-index`, this venv's setuptools). The fresh venv has no pip and no
pdserve of its own but the wheel; it reaches the project venv's dependencies through a `.pth`
line (so nothing is downloaded), and that same line makes torch and vLLM unimportable, so a
command that needs either fails here. Every command runs from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ("pyproject.toml", "README.md", "pdserve", "profiles", "manifests")
BLOCKED = ("torch", "vllm", "transformers")
"""What the gateway side of pdserve must never import (vLLM runs in its own image)."""
TIMEOUT_S = 120


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    python: Path
    bin: Path
    home: Path  # the working directory of every command: outside the checkout

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args),
            cwd=self.home,
            env=clean_env(self.home),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def pdserve(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.bin / "pdserve"), *args, check=check)


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no profile directory override, this
    machine's helm binary (the wheel carries no helm), a cache of the test's own."""
    from pdserve.helm.binary import helm_path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PDSERVE_"))}
    env.update(PDSERVE_HELM=str(helm_path()), PDSERVE_CACHE_DIR=str(home / "cache"))
    return env


def build_wheel(workdir: Path) -> Path:
    """The wheel, built from a copy of the files a wheel is made of (symbolic links kept)."""
    source = workdir / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in PACKAGED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist), str(source)],
        check=True, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    (wheel,) = dist.glob("pdserve-*.whl")
    return wheel


def install_wheel(workdir: Path) -> InstalledWheel:
    wheel = build_wheel(workdir)
    env_dir = workdir / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The project venv's packages after the wheel's own (a plain path line: the editable
    # pdserve's finder there is never loaded), and torch/vLLM made unimportable.
    block = f"import sys; sys.modules.update(dict.fromkeys({BLOCKED!r}))"
    Path(site, "zz_project_deps.pth").write_text(f"{sysconfig.get_path('purelib')}\n{block}\n")
    home = workdir / "home"
    home.mkdir()
    return InstalledWheel(wheel=wheel, python=python, bin=env_dir / "bin", home=home)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def shipped_profiles() -> list[str]:
    return sorted(path.stem for path in (ROOT / "profiles").glob("*.yaml"))


def test_the_wheel_is_imported_not_the_checkout(installed: InstalledWheel) -> None:
    code = (
        "import pdserve, pdserve.package_data as d, sys; "
        "print(pdserve.__file__); print(d.chart_dir()); print(sys.modules.get('torch') is not None)"
    )
    module, chart, torch_loaded = installed.run(str(installed.python), "-c", code).stdout.split()
    venv_root = installed.python.parent.parent
    assert Path(module).is_relative_to(venv_root), module
    assert Path(chart).is_relative_to(venv_root) and (Path(chart) / "Chart.yaml").is_file()
    assert not Path(chart).is_symlink()
    assert torch_loaded == "False"
    blocked = installed.run(str(installed.python), "-c", "import torch", check=False)
    assert blocked.returncode != 0, "the venv must not be able to import torch"


def test_profile_list_shows_every_shipped_profile(installed: InstalledWheel) -> None:
    listed = installed.pdserve("profile", "list").stdout
    names = sorted(line.split()[0] for line in listed.splitlines() if line.strip())
    assert names == shipped_profiles()
    assert "INVALID" not in listed


def test_profile_validate_by_name_and_by_path(installed: InstalledWheel) -> None:
    out = installed.pdserve("profile", "validate", *shipped_profiles()).stdout
    assert out.count(": ok (") == len(shipped_profiles())
    copy = installed.home / "mine.yaml"
    shutil.copy(ROOT / "profiles" / "a100-l4.yaml", copy)
    assert ": ok (" in installed.pdserve("profile", "validate", str(copy)).stdout
    show = yaml.safe_load(installed.pdserve("profile", "show", "a100-l4").stdout)
    assert set(show["pools"]) == {"prefill", "decode"}


def test_render_and_helm_template_of_the_packaged_chart(installed: InstalledWheel) -> None:
    values = installed.home / "values-a100-l4.yaml"
    installed.pdserve("render", "--profile", "a100-l4", "-o", str(values))
    chart = installed.run(str(installed.python), "-m", "pdserve.package_data", "chart")
    chart_dir = Path(chart.stdout.strip())
    helm = clean_env(installed.home)["PDSERVE_HELM"]
    args = ["template", "pd", str(chart_dir), "--namespace", "pdserve", "-f", str(values)]
    rendered = installed.run(helm, *args).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    deployments = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Deployment"}
    assert {"pd-pdserve-gateway", "pd-pdserve-prefill", "pd-pdserve-decode"} <= deployments
    installed.run(helm, "lint", str(chart_dir), "--strict", "-f", str(values))
