"""The gateway's HTTP/1.1 client to its workers, against real TCP servers on 127.0.0.1 whose
behaviour each test scripts: keep-alive reuse, a connection the server dropped while idle, a
refused connection, a timeout, a chunked stream and a stream cut short; the workers' health and
metrics probes over the same client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.upstream import Upstream, UpstreamError, chunks
from pdserve.pools.replica import Replica
from pdserve.pools.scraper import probe

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT_S = 10.0


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,  # a GET
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def _answer(body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.fixture()
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream()
    await client.start()
    yield client
    await client.close()


async def test_requests_reuse_one_keep_alive_connection(upstream: Upstream) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(_answer(await server.read_request(reader)))

    async with Server(echo) as server:
        for n in range(3):
            status, content = await upstream.post_json(
                f"{server.url}/v1/completions", {"n": n}, {"X-Request-Id": f"r{n}"}, TIMEOUT_S
            )
            assert status == 200 and json.loads(content) == {"n": n}
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"X-Request-Id: r0\r\n" in first and b"Content-Type: application/json\r\n" in first


async def test_a_connection_the_worker_dropped_while_idle_is_replaced(upstream: Upstream) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_answer(await server.read_request(reader)))  # keep-alive, then it goes
        await writer.drain()

    async with Server(once) as server:
        for n in range(2):
            status, _ = await upstream.post_json(server.url, {"n": n}, {}, TIMEOUT_S)
            await asyncio.sleep(0.05)  # the close reaches the client, or races the next request
            assert status == 200
    assert server.connections == 2


async def test_a_refused_connection_is_an_upstream_error(upstream: Upstream) -> None:
    async with Server(lambda reader, writer: asyncio.sleep(0)) as server:
        url = server.url
    with pytest.raises(UpstreamError, match="cannot connect"):
        await upstream.open(url, {}, {}, TIMEOUT_S)


async def test_a_silent_worker_times_out(upstream: Upstream) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(30)

    async with Server(silent) as server:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError, match="within 0.3 s"):
            await upstream.open(server.url, {}, {}, 0.3)
        assert asyncio.get_running_loop().time() - started < 5


def _chunked_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_a_chunked_stream_arrives_piece_by_piece(upstream: Upstream) -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(_chunked_head() + _chunk(b"data: 1\n\n"))
        await release.wait()
        writer.write(_chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await reader.read()  # until the client closes

    async with Server(stream) as server:
        response = await upstream.open(server.url, {"stream": True}, {}, TIMEOUT_S)
        assert response.status == 200 and response.content_type == "text/event-stream"
        pieces = chunks(response)
        assert await asyncio.wait_for(pieces.__anext__(), TIMEOUT_S) == b"data: 1\n\n"
        release.set()
        assert [piece async for piece in pieces] == [b"data: 2\n\n"]
        response.release()


async def test_a_stream_cut_short_raises_and_a_released_stream_closes(upstream: Upstream) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(_chunked_head() + _chunk(b"data: 1\n\n"))
        await writer.drain()  # and the connection closes mid-body

    async with Server(cut) as server:
        response = await upstream.open(server.url, {}, {}, TIMEOUT_S)
        with pytest.raises(UpstreamError):
            async for _ in chunks(response):
                pass
        response.release()

    client_gone = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(_chunked_head() + _chunk(b"data: 1\n\n"))
        await reader.read()  # EOF: the client released the response unread
        client_gone.set()

    async with Server(endless) as server:
        response = await upstream.open(server.url, {}, {}, TIMEOUT_S)
        response.release()
        await asyncio.wait_for(client_gone.wait(), TIMEOUT_S)


METRICS = b"""# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
"""


async def test_probes_read_health_and_metrics_on_one_connection(upstream: Upstream) -> None:
    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            path = server.requests[-1].split(b" ", 2)[1]
            writer.write(_answer(METRICS if path == b"/metrics" else b"{}"))

    async with Server(worker) as server:
        replica = Replica(handle=ReplicaHandle("d-1", "decode", server.url))
        for _ in range(2):
            assert await probe(upstream, replica) is True
    assert (replica.healthy, replica.waiting, replica.running) == (True, 3, 2)
    assert [r.split(b"\r\n", 1)[0] for r in server.requests[:2]] == [
        b"GET /health HTTP/1.1",
        b"GET /metrics HTTP/1.1",
    ]
    assert server.connections == 1  # four probes, one keep-alive connection


async def test_a_worker_that_cannot_be_reached_or_answers_503_is_unhealthy(
    upstream: Upstream,
) -> None:
    async def starting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    async with Server(starting) as server:
        replica = Replica(handle=ReplicaHandle("d-1", "decode", server.url))
        assert await probe(upstream, replica) is False
        assert replica.healthy is False
        url = server.url
    gone = Replica(handle=ReplicaHandle("d-2", "decode", url))
    gone.observe_health(True)
    assert await probe(upstream, gone) is False  # refused: an UpstreamError, not a crash
    assert gone.healthy is False
