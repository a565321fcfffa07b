"""Files pdserve ships beside its code: the serving profiles and the Helm chart.

Both stay at the top of the repository (`profiles/`, `manifests/helm/pdserve/`). The package
reaches them through `pdserve/assets/`, which holds a symbolic link to each: a source or
editable checkout reads the top-level directories through the links, and a built wheel carries
the linked files as package data (pyproject.toml, `[tool.setuptools.package-data]`), so the same
`importlib.resources` lookup finds them in both. `python -m pdserve.package_data chart` prints
the chart's directory, for `helm install` from an installed package.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

ASSETS = ("profiles", "chart")


def asset_dir(name: str) -> Path:
    """The directory of one shipped asset (`profiles` or `chart`), as a filesystem path.

    pdserve is never imported from a zip (helm and the profile loader need real files), so the
    package's resources are a directory on disk."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; pdserve ships {', '.join(ASSETS)}")
    return Path(str(files("pdserve").joinpath("assets", name)))


def profiles_dir() -> Path:
    """The shipped serving profiles (`profiles/*.yaml`)."""
    return asset_dir("profiles")


def chart_dir() -> Path:
    """The shipped Helm chart (`manifests/helm/pdserve`)."""
    return asset_dir("chart")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print where pdserve's shipped files are.")
    parser.add_argument("asset", choices=ASSETS)
    args = parser.parse_args(argv)
    path = asset_dir(args.asset)
    if not path.is_dir():
        print(
            f"{path}: missing; reinstall pdserve from a wheel with its package data",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
