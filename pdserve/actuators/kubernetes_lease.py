"""Leader election among gateways through one `coordination.k8s.io/v1` Lease (part of the
Kubernetes actuator: only the elected gateway scales; every gateway proxies).

It follows the Lease's documented fields the way client-go's leaderelection does:
- `holderIdentity` names the leader; `leaseDurationSeconds` is how long the others wait,
  after they last saw the lease change, before they may take it; `acquireTime` is when the
  holder took it, `renewTime` when it last renewed, `leaseTransitions` counts hand-overs;
- every write is an update carrying the `resourceVersion` it read (optimistic concurrency): of
  two gateways taking a lapsed lease at once the API server lets one win, the other gets 409;
- expiry is judged on this gateway's own clock from when it observed the record change, never
  by comparing `renewTime` with its wall clock (clock skew between nodes cannot elect two);
- the leader stops acting when it could not renew within the renew deadline (two thirds of the
  duration, as client-go's 10 s of 15), before any follower may take over; on shutdown it
  releases the lease (empty holder, duration 1 s) so a successor need not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration_s: int
    retry_s: float
    request_timeout_s: float = 10.0

    @property
    def renew_deadline_s(self) -> float:
        return self.duration_s * 2 / 3


def _now() -> datetime:
    return datetime.now(UTC)


class LeaseElector:
    """Campaigns for the lease every `retry_s` while `running()` is open; `leading` says
    whether this gateway holds it now, `wait(leading)` waits for that to be so."""

    def __init__(
        self,
        api: client.ApiClient,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self._config = config
        self._clock = clock
        self._observed: tuple[str | None, datetime | None] | None = None
        self._observed_at = 0.0
        self._renewed_at = -float("inf")
        self._changed = asyncio.Condition()
        self.leading = False
        self.transitions_seen = 0

    @property
    def identity(self) -> str:
        return self._config.identity

    async def wait(self, leading: bool) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.leading is leading)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LeaseElector]:
        task = asyncio.create_task(self._campaign(), name="pdserve-lease")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.leading:
                await self._release()

    async def _campaign(self) -> None:
        while True:
            try:
                held = await self.try_once()
            except Exception:  # the API server may be away for a while; keep campaigning
                log.exception("lease %s: election round failed", self._config.name)
                held = False
            if not held and self.leading and self._past_deadline():
                await self._set_leading(False)
            await asyncio.sleep(self._config.retry_s)

    def _past_deadline(self) -> bool:
        return self._clock() - self._renewed_at > self._config.renew_deadline_s

    async def try_once(self) -> bool:
        """One round: create the lease, renew ours, or take a lapsed one. True: we hold it."""
        lease = await self._read()
        if lease is None:
            held = await self._create()
        else:
            held = await self._acquire_or_renew(lease)
        if held:
            self._renewed_at = self._clock()
            await self._set_leading(True)
        return held

    async def _acquire_or_renew(self, lease: client.V1Lease) -> bool:
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        duration = spec.lease_duration_seconds or self._config.duration_s
        ours = spec.holder_identity == self.identity
        lapsed = self._clock() >= self._observed_at + duration
        if not ours and spec.holder_identity and not lapsed:
            if self.leading:
                await self._set_leading(False)  # someone took it while we could not renew
            return False
        now = _now()
        if not ours:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + (
                1 if spec.holder_identity else 0
            )
            log.info("lease %s: taking it from %r", self._config.name, spec.holder_identity)
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self._config.duration_s
        spec.renew_time = now
        lease.spec = spec
        return await self._replace(lease)

    async def _read(self) -> client.V1Lease | None:
        try:
            return await asyncio.to_thread(
                self._leases.read_namespaced_lease,
                self._config.name,
                self._config.namespace,
                _request_timeout=self._config.request_timeout_s,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def _create(self) -> bool:
        now = _now()
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._config.name),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self._config.duration_s,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            await asyncio.to_thread(
                self._leases.create_namespaced_lease,
                self._config.namespace,
                lease,
                _request_timeout=self._config.request_timeout_s,
            )
        except ApiException as error:
            if error.status == 409:  # another gateway created it first
                return False
            raise
        return True

    async def _replace(self, lease: client.V1Lease) -> bool:
        """Update with the resourceVersion read; 409: someone wrote it since, they win."""
        try:
            await asyncio.to_thread(
                self._leases.replace_namespaced_lease,
                self._config.name,
                self._config.namespace,
                lease,
                _request_timeout=self._config.request_timeout_s,
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def _release(self) -> None:
        """Hand the lease back at shutdown so a follower takes over at its next try."""
        await self._set_leading(False)
        with contextlib.suppress(Exception):
            lease = await self._read()
            if lease is None or lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            await self._replace(lease)
            log.info("lease %s: released", self._config.name)

    async def _set_leading(self, leading: bool) -> None:
        if leading is self.leading:
            return
        log.info(
            "lease %s: %s %s", self._config.name, self.identity, "leads" if leading else "follows"
        )
        async with self._changed:
            self.leading = leading
            self.transitions_seen += 1
            self._changed.notify_all()
