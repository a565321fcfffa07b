"""The body size limit as pure ASGI middleware: by Content-Length, and while a chunked body
streams in (no Content-Length to trust)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pdserve.gateway.middleware import BodySizeLimit

pytestmark = pytest.mark.unit


async def _echo_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def _client(limit: int) -> httpx.AsyncClient:
    app = BodySizeLimit(Starlette(routes=[Route("/", _echo_length, methods=["POST"])]), limit)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _chunks(total: int, size: int = 16) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.parametrize(("length", "status"), [(64, 200), (65, 413)])
async def test_limit_by_content_length(length: int, status: int) -> None:
    async with _client(64) as client:
        response = await client.post("/", content=b"x" * length)
    assert response.status_code == status
    if status == 413:
        assert response.json()["error"]["code"] == "body_too_large"
    else:
        assert response.text == "64"


@pytest.mark.parametrize(("length", "status"), [(64, 200), (100, 413)])
async def test_limit_while_a_chunked_body_streams_in(length: int, status: int) -> None:
    async with _client(64) as client:
        response = await client.post("/", content=_chunks(length))
    assert response.status_code == status
    if status == 413:
        assert response.json()["error"]["type"] == "invalid_request_error"
