"""The forwarder gives a replica's slot back however a send ends before a response is handed on:
admission counts in-flight requests, so a slot lost to a cancelled or failed send would take the
replica out of service for good."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.proxy import Exchange, Forwarder
from pdserve.pools.manager import PoolManager
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile

pytestmark = pytest.mark.unit


class StuckUpstream:
    """A worker hop that never answers (until cancelled), or fails with an unexpected error."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.opened = asyncio.Event()

    async def open(self, url: str, body: Any, headers: Any, timeout_s: float) -> Any:
        self.opened.set()
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()


async def _forwarder(upstream: StuckUpstream) -> tuple[PoolManager, Forwarder]:
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(one_pool_profile(), MemoryActuator(), probes)
    await manager.start()
    return manager, Forwarder(manager, upstream, GatewayMetrics())  # type: ignore[arg-type]


def _exchange(manager: PoolManager) -> Exchange:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
    return Exchange("/v1/completions", body, "r1", manager.profile, "local", prompt_tokens=5)


def _inflight(manager: PoolManager) -> int:
    return sum(r.inflight for r in manager.pools["decode"].replicas.values())


async def test_a_send_cancelled_while_the_worker_has_not_answered_gives_its_slot_back() -> None:
    upstream = StuckUpstream()
    manager, forwarder = await _forwarder(upstream)
    try:
        task = asyncio.create_task(forwarder.complete(_exchange(manager)))
        await asyncio.wait_for(upstream.opened.wait(), 2)
        assert _inflight(manager) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _inflight(manager) == 0
    finally:
        await manager.close()


async def test_a_send_failing_with_an_unexpected_error_gives_its_slot_back() -> None:
    manager, forwarder = await _forwarder(StuckUpstream(RuntimeError("a bug in the hop")))
    try:
        with pytest.raises(RuntimeError):
            await forwarder.complete(_exchange(manager))
        assert _inflight(manager) == 0
    finally:
        await manager.close()


class ErrorEventResponse:
    """A 200 stream whose worker ends it with its own SSE error event, as vLLM does when its
    engine dies under a stream (SIGTERM) or a KV load fails under policy `fail`."""

    status = 200
    content_type = "text/event-stream"

    async def read(self) -> bytes:
        return b""

    async def chunks(self) -> Any:
        yield b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
        yield b'data: {"error": {"message": "EngineDeadError", "type": "x", "code": 500}}\n\n'
        yield b"data: [DONE]\n\n"

    def release(self) -> None:
        pass


class ErrorEventUpstream:
    async def open(self, url: str, body: Any, headers: Any, timeout_s: float) -> Any:
        return ErrorEventResponse()


async def test_a_stream_the_worker_ends_with_an_error_event_is_counted_as_failed() -> None:
    # found by the vLLM soak: 3 streams ended by vLLM's own error event were counted as 200,
    # so the gateway's counts disagreed with what its clients saw
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(one_pool_profile(), MemoryActuator(), probes)
    await manager.start()
    metrics = GatewayMetrics()
    forwarder = Forwarder(manager, ErrorEventUpstream(), metrics)  # type: ignore[arg-type]
    try:
        ex = _exchange(manager)
        ex.body["stream"] = True
        response = await forwarder.complete(ex)
        sent: list[Any] = []

        async def receive() -> Any:
            await asyncio.Event().wait()

        async def send(message: Any) -> None:
            sent.append(message)

        await response({"type": "http"}, receive, send)  # type: ignore[operator]
        assert b'"error"' in b"".join(m.get("body", b"") for m in sent)
        statuses = {
            s.labels["status"]: s.value
            for family in metrics.registry.collect()
            if family.name == "pdserve_requests"
            for s in family.samples
            if s.name.endswith("_total")
        }
        assert statuses == {"502": 1.0}
        assert _inflight(manager) == 0
    finally:
        await manager.close()
