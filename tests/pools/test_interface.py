"""The gateway reaches pools only through the manager's gateway-facing interface
(`pdserve.pools.interface.GatewayPools`): read from the gateway's source, so a new
`manager.pools[...]` or a replica changed behind the manager's back turns this red."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pdserve.gateway
from pdserve.pools.interface import GatewayPools
from pdserve.pools.manager import PoolManager

pytestmark = pytest.mark.unit

GATEWAY = sorted(Path(pdserve.gateway.__file__).parent.glob("*.py"))
REPLICA_READS = {"id", "url"}  # a replica from `acquire` is a lease: read, then hand back


def _interface() -> set[str]:
    return {name for name in vars(GatewayPools) if not name.startswith("_")}


def _uses(tree: ast.AST, owner: str) -> set[tuple[int, str]]:
    """Attributes read or called on `owner` or `<anything>.owner` (e.g. `self.manager.x`)."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if name == owner:
            found.add((node.lineno, node.attr))
    return found


@pytest.mark.parametrize("path", GATEWAY, ids=lambda p: p.name)
def test_the_gateway_uses_only_the_managers_interface(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    outside = sorted(
        (line, attr) for line, attr in _uses(tree, "manager") if attr not in _interface()
    )
    assert outside == [], f"{path.name}: add these to GatewayPools or go through it"


@pytest.mark.parametrize("path", GATEWAY, ids=lambda p: p.name)
def test_the_gateway_only_reads_a_replicas_id_and_url(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    outside = sorted(
        (line, attr) for line, attr in _uses(tree, "replica") if attr not in REPLICA_READS
    )
    assert outside == [], f"{path.name}: go through the manager (release, eject, ...)"


def test_the_manager_has_every_member_of_the_interface() -> None:
    missing = {name for name in _interface() if not hasattr(PoolManager, name)}
    # `profile` is an instance attribute of the manager, the rest are its methods
    assert missing == {"profile"}


@pytest.mark.parametrize("path", GATEWAY, ids=lambda p: p.name)
def test_the_gateway_never_holds_a_pool(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"pdserve.pools.pool", "pdserve.pools.hold"}, "use pools.views"
