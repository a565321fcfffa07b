"""What the gateway may ask of the pools: the pool manager's gateway-facing interface.

The gateway (`pdserve/gateway/*.py`) reaches pools only through these members of
`pools.manager.PoolManager`; it never indexes `manager.pools`, never touches a pool's hold
queue, and never changes a replica's fields itself. A `Replica` it gets from `acquire` is a
lease: it reads `id` and `url` and hands it back through `release`, `eject`,
`begin_local_prefill` / `end_local_prefill`, `observe_prefill` and `record_prefix`.

Requests:
- `ticket(profile, priority=, prompt_tokens=, uncached_tokens=, affinity_key=, deadline_s=)`:
  a new request's place in admission (arrival order, deadlines).
- `place(ticket)`: its route and first replica, chosen when it can start (late binding;
  `Refused`/`Overloaded` -> 429, `NoReplica` -> 503); `acquire_for(pool, ticket, exclude)`:
  a replica of one pool for it (the decode hop); `settle(ticket)`: its prefill is over.
- `acquire(pool, priority=, prompt_tokens=, affinity_key=, exclude=)`: a ready replica,
  holding the request until one is (`Overloaded` -> 429, `NoReplica` -> 503, `PoolDropped`:
  a live switch dropped the pool, follow the active profile).
- `release(replica, prompt_tokens)`: the request is over.
- `eject(replica)`: a request to it failed; no new requests until a probe says healthy.
- `begin_local_prefill` / `end_local_prefill`: a prompt sent to a decode replica to prefill
  there, until its first token (a rate sample) or a failure.
- `observe_prefill(pool, replica, tokens, sent, now)`: a prefill hop's answer arrived.
- `record_prefix(pool, replica, hashes)`: the replica now caches these KV blocks.
- `record_disaggregated(decode, prefill_id, tokens)`: a disaggregated request's first token
  came from `decode`; `on_kv_fault(observer)`: told of replicas serving without pulled KV.
- `release_target(pool)`: a serving replica for a one-token KV release, outside admission.
- `adapter_residency`: which LoRA adapters each replica holds; the gateway records its loads
  and unloads there, each scrape re-learns it from the replica's /v1/models.

Routing reads:
- `profile`: the active profile; `pending_profile`: the one a switch is moving to;
  `launch_profile`: the one new workers start with (the app hands it to the actuator).
- `routing_snapshot(profile, now)`: both pools' prefill work for the route decision.
- `block_size(pool)`, `expected_cached_tokens(pool, affinity_key, hashes)`: prefix reuse.
- `ready_count(pool)`: ready replicas (the /ready probe).

Observing and steering:
- `pool_views(now)`: read-only copies of every pool (the admin API, the pool gauges).
- `local_demand()`: this gateway's own held and diverted demand per pool, which the leader
  of several gateways polls (`pools.peers`); `peer_poller(peers, token)`: that poll.
- `switch_profile(new)`: begin a live switch (`pools.switch.SwitchInProgress` while one runs).
- `start()` / `close()`: the lifespan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pdserve.policies.types import RoutingSnapshot
from pdserve.pools.adapters import AdapterResidency
from pdserve.pools.admission import Placement, Ticket
from pdserve.pools.kv_proof import FaultObserver
from pdserve.pools.peers import HeldDemand, PeerGateways, PeerPoller
from pdserve.pools.replica import Replica
from pdserve.pools.views import PoolView
from pdserve.profile import Profile


class GatewayPools(Protocol):
    """The members listed above; `PoolManager` implements them (mypy checks it where the
    gateway passes a manager as `GatewayPools`)."""

    @property
    def adapter_residency(self) -> AdapterResidency: ...

    @property
    def profile(self) -> Profile: ...

    @property
    def pending_profile(self) -> Profile | None: ...

    @property
    def launch_profile(self) -> Profile: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(
        self,
        pool_name: str,
        *,
        priority: int = 0,
        prompt_tokens: int = 0,
        affinity_key: str | None = None,
        exclude: Iterable[str] = (),
    ) -> Replica: ...

    def ticket(
        self,
        profile: Profile,
        *,
        priority: int = 0,
        prompt_tokens: int = 0,
        uncached_tokens: int | None = None,
        affinity_key: str | None = None,
        deadline_s: float | None = None,
    ) -> Ticket: ...

    async def place(self, ticket: Ticket) -> Placement: ...

    async def acquire_for(
        self, pool_name: str, ticket: Ticket, exclude: Iterable[str] = ()
    ) -> Replica: ...

    def settle(self, ticket: Ticket) -> None: ...

    def release(self, replica: Replica, prompt_tokens: int = 0) -> None: ...

    def eject(self, replica: Replica) -> None: ...

    def record_disaggregated(
        self, decode: Replica, prefill_id: str, prompt_tokens: int
    ) -> None: ...

    def on_kv_fault(self, observer: FaultObserver) -> None: ...

    def release_target(self, pool_name: str) -> Replica | None: ...

    def begin_local_prefill(self, replica: Replica, prompt_tokens: int) -> None: ...

    def end_local_prefill(
        self, pool_name: str, replica: Replica, prompt_tokens: int, sent: float | None, now: float
    ) -> None: ...

    def observe_prefill(
        self, pool_name: str, replica: Replica, prompt_tokens: int, sent: float, now: float
    ) -> None: ...

    def record_prefix(self, pool_name: str, replica: Replica, hashes: list[int]) -> None: ...

    def routing_snapshot(self, profile: Profile, now: float) -> RoutingSnapshot: ...

    def local_demand(self) -> dict[str, HeldDemand]: ...

    def peer_poller(self, peers: PeerGateways, admin_token: str | None) -> PeerPoller: ...

    def block_size(self, pool_name: str) -> int: ...

    def expected_cached_tokens(
        self, pool_name: str, affinity_key: str | None, hashes: list[int]
    ) -> int: ...

    def ready_count(self, pool_name: str) -> int: ...

    def pool_views(self, now: float) -> list[PoolView]: ...

    async def switch_profile(self, new: Profile) -> None: ...
