"""Refusal at run time, a fault of the simulated worker: SIGUSR1 closes its listening socket (new
connections are refused, as by a worker whose port has gone while its process lives on), SIGUSR2
listens on the same port again. Connections already accepted are served to their end.

`kill -USR1 <pid>` from a soak or a test; the start-time `refuse` fault never opens the port.
"""

from __future__ import annotations

import asyncio
import functools
import signal

import uvicorn

REFUSE_SIGNAL = signal.SIGUSR1
ACCEPT_SIGNAL = signal.SIGUSR2


class Refusal:
    """Closes and reopens one uvicorn server's listeners on signals."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.refusing = False
        self._reopening: asyncio.Task[None] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(REFUSE_SIGNAL, self.refuse)
        loop.add_signal_handler(ACCEPT_SIGNAL, self.accept)

    def refuse(self) -> None:
        for listener in getattr(self.server, "servers", []):
            listener.close()  # stops listening; accepted connections stay open
        self.refusing = True

    def accept(self) -> None:
        if self.refusing and self._reopening is None:
            self._reopening = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        """Listen again with uvicorn's own protocol, as `Server.startup` builds it."""
        config, server = self.server.config, self.server
        protocol = functools.partial(
            config.http_protocol_class,  # type: ignore[call-arg]
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(
                protocol, host=config.host, port=config.port, backlog=config.backlog
            )
            server.servers = [listener]
            self.refusing = False
        finally:
            self._reopening = None
