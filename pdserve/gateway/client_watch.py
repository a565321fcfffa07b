"""Watching a client's connection while its request waits and is prefilled, not only while it
streams.

A completion is held in a queue, prefilled on another worker and waits for a decode slot before
its first byte; a client that leaves meanwhile must stop all of that at once, or the prefill
worker keeps computing and pinning KV blocks for nobody. `ClientWatch` reads the ASGI `receive`
from the moment the body is in, cancels the task serving the request when the client goes, and
hands the disconnect on to the response (`RelayResponse` reads it through `receive`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Message, Receive

T = TypeVar("T")

DISCONNECT: Message = {"type": "http.disconnect"}


class ClientWatch:
    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.gone = asyncio.Event()
        self._served: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if self._served is not None:
            self._served.cancel()

    async def receive(self) -> Message:
        """The ASGI `receive` for the response: the disconnect, once the client has gone."""
        await self.gone.wait()
        return DISCONNECT

    async def run(self, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None when the client left first (then `work` was cancelled, and
        its own clean-up ran)."""
        served = asyncio.current_task()
        assert served is not None
        self._served = served
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        try:
            return await work
        except asyncio.CancelledError:
            if not self.gone.is_set():
                raise
            served.uncancel()  # the client went away: not a cancellation of the server
            return None
        finally:
            self._served = None

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
