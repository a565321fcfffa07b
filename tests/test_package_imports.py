"""Every import is declared: each third-party module that pdserve/ or bench/ imports comes from a
distribution pyproject.toml names (pdserve's own dependencies or one of its extras), read from
the code with `ast`, so a new `import jinja2` without its requirement fails here and not on a
user's fresh install. An import inside `try: ... except ImportError` is optional and exempt."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"pdserve", "bench", "tests"}


def declared() -> tuple[set[str], set[str]]:
    """(pdserve's own dependencies, those of every extra), as canonical distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = {
        canonicalize_name(Requirement(r).name)
        for requirements in project["optional-dependencies"].values()
        for r in requirements
    }
    return core, extras


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try` that catches ImportError (or ModuleNotFoundError)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                names = ast.unparse(handler.type) if handler.type else ""
                if "ImportError" in names or "ModuleNotFoundError" in names:
                    return True
    return False


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute, non-optional imports in one file."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if not _optional(node, parents):
            names |= {module.split(".")[0] for module in modules}
    return names - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def undeclared(directory: str, allowed: set[str]) -> dict[str, list[str]]:
    """Module -> the files importing it, for modules no allowed distribution provides."""
    providers = metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for path in sorted((ROOT / directory).rglob("*.py")):
        for module in imported_modules(path):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & allowed:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    return missing


def test_every_import_of_the_package_is_declared() -> None:
    core, extras = declared()
    assert undeclared("pdserve", core | extras) == {}


def test_every_import_of_the_benchmarks_is_declared() -> None:
    core, extras = declared()
    assert undeclared("bench", core | extras) == {}


def test_the_gateway_needs_no_extra() -> None:
    """The gateway's modules (and the layers under it) import only pdserve's own dependencies:
    the gateway image installs no extra but kubernetes, which only its actuator imports."""
    core, _ = declared()
    layers = ["gateway", "policies", "pools"]
    missing = {layer: undeclared(f"pdserve/{layer}", core) for layer in layers}
    assert missing == dict.fromkeys(layers, {})


def test_the_scan_sees_an_undeclared_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import jinja2\nfrom yaml import safe_load\ntry:\n    import uvloop\n"
        "except ImportError:\n    uvloop = None\nimport os\nfrom . import sibling\n"
    )
    assert imported_modules(source) == {"jinja2", "yaml"}
