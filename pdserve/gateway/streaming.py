"""A streamed response as plain ASGI: relays chunks as they come, and stops when the client goes.

Starlette's `StreamingResponse` watches for the disconnect with an anyio task group (a cancel
scope, a task and its cancellation per response); this does the same with one small watcher
task, a cost paid by every streamed completion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from starlette.types import Message, Receive, Scope, Send


class RelayResponse:
    def __init__(
        self, chunks: AsyncGenerator[bytes, None], status: int, headers: dict[str, str]
    ) -> None:
        self.chunks = chunks  # closed when the response ends, however it ends
        self.status_code = status
        self.start: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        finished = gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                gone = True
                relay.cancel()

        watcher = asyncio.create_task(watch())
        try:
            # the first step runs the source up to its first chunk, so that its own clean-up
            # (releasing the worker) runs however this response ends, even before a byte went
            first = await anext(self.chunks, b"")
            await send(self.start)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
        except asyncio.CancelledError:
            if not gone:
                raise
            relay.uncancel()  # the client went away: not a cancellation of the server
        finally:
            finished = True
            watcher.cancel()
            await self.chunks.aclose()
