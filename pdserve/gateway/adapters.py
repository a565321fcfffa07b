"""Loading a LoRA adapter on a replica before a request for it is sent there.

A request whose `model` is an adapter rides on its base model's pools; each hop (prefill and
decode) holds the adapter on its replica while the request is sent: resident already, or
loaded through vLLM's runtime API (`/v1/load_lora_adapter`), first unloading the least
recently used idle adapter when the replica holds `max_loras`
(`policies.adapters.place_adapter`). A load that fails is the replica failing before its first
byte (`UpstreamError`): the request moves to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pdserve.gateway.errors import OpenAIError
from pdserve.gateway.upstream import Upstream, UpstreamError
from pdserve.policies.adapters import place_adapter
from pdserve.pools.adapters import AdapterResidency, ReplicaResidency
from pdserve.pools.replica import Replica
from pdserve.profile import Profile
from pdserve.profile_adapters import AdapterSpec

LOAD_TIMEOUT_S = 120.0  # vLLM reads the adapter's weights before it answers
WORKER_CACHE_ENV = "PDSERVE_WORKER_CACHE_DIR"
"""Set (by the chart) where the workers run elsewhere: their cache directory, where each worker
pod writes its model's seeded adapters; the gateway names them there and writes nothing."""


def adapter_of(profile: Profile, body: dict[str, Any]) -> AdapterSpec | None:
    """The adapter a request names in `model` (None: the base model)."""
    model = body.get("model")
    if not isinstance(model, str) or model == profile.model.name:
        return None
    return profile.model.adapter(model)


class AdapterLoader:
    def __init__(
        self,
        upstream: Upstream,
        residency: AdapterResidency | None = None,
        clock: Callable[[], float] = time.monotonic,
        worker_cache: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.residency = residency or AdapterResidency()
        self.clock = clock
        self.worker_cache = worker_cache or os.environ.get(WORKER_CACHE_ENV) or None

    def holding(self, profile: Profile, body: dict[str, Any]) -> frozenset[str]:
        """The replicas that hold the request's adapter (admission tries them first)."""
        adapter = adapter_of(profile, body)
        return frozenset(self.residency.holding(adapter.name)) if adapter else frozenset()

    @contextlib.asynccontextmanager
    async def hold(
        self, profile: Profile, body: dict[str, Any], replica: Replica
    ) -> AsyncIterator[None]:
        """The request's adapter resident on `replica` (and not evicted) while it is sent."""
        adapter = adapter_of(profile, body)
        if adapter is None:
            yield
            return
        at_start = [a.name for a in profile.model.adapters if a.load == "start"]
        state = self.residency.of(replica.id, at_start)
        async with state.lock:
            await self._make_resident(state, adapter, replica, profile.model.max_loras)
            state.in_use[adapter.name] += 1
        try:
            yield
        finally:
            state.in_use[adapter.name] -= 1
            if adapter.name in state.resident:
                state.resident[adapter.name] = self.clock()

    async def _make_resident(
        self, state: ReplicaResidency, adapter: AdapterSpec, replica: Replica, max_loras: int
    ) -> None:
        if adapter.name in state.resident:
            state.resident[adapter.name] = self.clock()
            return
        placement = place_adapter(adapter.name, [state.view(replica.id)], max_loras)
        if placement is None:
            raise UpstreamError(
                f"{replica.id} holds {max_loras} adapters, all in use: cannot load {adapter.name}"
            )
        if placement.evict is not None:
            await self._post(replica, "/v1/unload_lora_adapter", {"lora_name": placement.evict})
            state.unloaded(placement.evict)
        path = await self._path_of(adapter)
        await self._post(
            replica, "/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": path}
        )
        state.loaded(adapter.name, self.clock())

    async def _path_of(self, adapter: AdapterSpec) -> str:
        """The adapter's directory (a seeded one written on first use); a source that names
        none is the profile's fault: the client gets a clear 503, the replica stays in. With
        the workers' cache elsewhere (`worker_cache`), a seeded one is named there as is."""
        from pdserve.workers.adapters import SEEDED_PREFIX, ensure_adapter, seeded_dir

        try:
            if self.worker_cache and adapter.source.startswith(SEEDED_PREFIX):
                return str(seeded_dir(adapter.source, Path(self.worker_cache)))
            return str(await asyncio.to_thread(ensure_adapter, adapter.source))
        except (OSError, ValueError) as exc:
            raise OpenAIError(
                503, f"adapter {adapter.name} cannot be loaded: {exc}", "adapter_unavailable"
            ) from None

    async def _post(self, replica: Replica, path: str, body: dict[str, str]) -> None:
        """vLLM's answer: 200; 400 to a load of one held already, 404 to an unload of one
        not held (both leave the wanted state)."""
        status, content = await self.upstream.post_json(
            f"{replica.url}{path}", body, {}, LOAD_TIMEOUT_S
        )
        settled = status == 200 or (status == 400 and b"already been loaded" in content)
        if not settled and not (status == 404 and path.endswith("unload_lora_adapter")):
            text = content[:200].decode("utf-8", "replace")
            raise UpstreamError(f"{replica.id}{path} answered {status}: {text}")
