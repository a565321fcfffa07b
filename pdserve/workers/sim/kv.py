"""KV hand-off of the simulated worker, in vLLM 0.32 NixlConnector's shapes.

The prefill side keeps a finished request's blocks under a lease (`LeaseStore`, clock passed in)
and answers `kv_transfer_params` naming them. The decode side pulls them over HTTP from the
prefill peer's internal endpoint (`PULL_PATH`), which frees them; unclaimed leases expire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PULL_PATH = "/internal/kv/pull"
TRANSFER_MODE = "pull"


@dataclass(frozen=True)
class Lease:
    request_id: str
    block_ids: tuple[int, ...]
    num_tokens: int
    num_bytes: int
    expires_at: float


@dataclass
class LeaseStore:
    engine_id: str
    lease_s: float
    leases: dict[str, Lease] = field(default_factory=dict)
    next_block: int = 1

    def grant(
        self, request_id: str, blocks: int, num_tokens: int, num_bytes: int, now: float
    ) -> Lease:
        block_ids = tuple(range(self.next_block, self.next_block + blocks))
        self.next_block += blocks
        lease = Lease(request_id, block_ids, num_tokens, num_bytes, now + self.lease_s)
        self.leases[request_id] = lease
        return lease

    def take(self, engine_id: Any, request_id: Any) -> Lease | None:
        """The lease a pull claims (and frees), or None if unknown, expired or another engine's."""
        if engine_id != self.engine_id or not isinstance(request_id, str):
            return None
        return self.leases.pop(request_id, None)

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.leases.values() if lease.expires_at <= now]
        for lease in gone:
            del self.leases[lease.request_id]
        return gone


def prefill_params(lease: Lease, engine_id: str, host: str, port: int) -> dict[str, Any]:
    """What vLLM's NixlConnector puts in a prefill response (pull_scheduler.request_finished,
    plus the scheduler's `remote_prefill_cached_tokens`)."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [list(lease.block_ids)],
        "remote_engine_id": engine_id,
        "remote_request_id": lease.request_id,
        "remote_host": host,
        "remote_port": port,
        "tp_size": 1,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": lease.num_tokens,
        "remote_blocks_expiry_time": None,
        "transfer_mode": TRANSFER_MODE,
        "remote_prefill_cached_tokens": 0,
    }


def wants_remote_decode(params: dict[str, Any] | None) -> bool:
    """A prefill request: compute, keep the blocks for a remote decode."""
    return bool(params and params.get("do_remote_decode"))


def wants_remote_prefill(params: dict[str, Any] | None) -> bool:
    """A decode request whose prompt KV waits on a prefill peer."""
    return bool(params and params.get("do_remote_prefill"))


def pull_body(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "remote_engine_id": params.get("remote_engine_id"),
        "remote_request_id": params.get("remote_request_id"),
        "remote_block_ids": params.get("remote_block_ids"),
    }
