"""Freeing a prefill's KV blocks now for a client that left after its prefill answered.

vLLM's NixlConnector keeps a finished prefill's blocks until a decode worker pulls them or the
lease ends (`kv_lease_duration`, renewed by decode heartbeats). When no decode worker has the
request's `kv_transfer_params` yet (the client left while the request waited for a decode slot,
or every decode attempt failed before a worker answered), nobody would pull them: a release
request (`disagg.release_request`: the decode request, one token, not streamed, its answer
discarded) has a decode replica pull them at once, which frees them on the prefill worker.
Releases run as tasks of their own (the client is gone), each bounded by the request timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pdserve import disagg
from pdserve.gateway.upstream import Upstream
from pdserve.pools.manager import PoolManager
from pdserve.pools.replica import Replica

if TYPE_CHECKING:
    from pdserve.gateway.proxy import Exchange

log = logging.getLogger(__name__)


class KvRelease:
    def __init__(self, manager: PoolManager, upstream: Upstream) -> None:
        self.manager = manager
        self.upstream = upstream
        self.running: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("releasing a prefill's KV blocks failed: %r", task.exception())

    async def after_answer(
        self, ex: Exchange, hop: asyncio.Future[tuple[int, bytes]], replica: Replica
    ) -> None:
        """The prefill hop of a client already gone: when it answers, its prefill replica's
        slot is given back and its blocks released."""
        try:
            status, content = await hop
        finally:
            self.manager.release(replica, ex.prompt_tokens)
        parsed = json.loads(content) if status == 200 else {}
        if isinstance(parsed, dict) and disagg.kv_params_of(parsed) is not None:
            await self.release(ex, parsed)

    async def release(self, ex: Exchange, prefilled: dict[str, Any]) -> None:
        replica = self.manager.release_target(ex.profile.decode_pool)
        if replica is None:
            log.warning("no decode replica to release %s's KV: the lease frees it", ex.request_id)
            return
        status, _ = await self.upstream.post_json(
            f"{replica.url}{ex.path}",
            disagg.release_request(ex.body, prefilled),
            {"X-Request-Id": f"{ex.request_id}-release"},
            ex.profile.gateway.request_timeout_s,
        )
        log.info("client of %s left after its prefill: KV released (%d)", ex.request_id, status)
