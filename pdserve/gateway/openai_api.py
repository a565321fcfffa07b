"""The OpenAI API: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve import disagg
from pdserve.gateway.auth import PRIORITY_HEADER, client_priority
from pdserve.gateway.errors import OpenAIError, error_response
from pdserve.gateway.proxy import Exchange
from pdserve.gateway.requests import max_new_tokens, parse_body
from pdserve.gateway.state import Gateway
from pdserve.policies.routing import decide_route
from pdserve.policies.types import RoutingSnapshot
from pdserve.pools.manager import PoolManager
from pdserve.pools.prefix import block_hashes
from pdserve.profile import Profile

AFFINITY_PREFIX_CHARS = 512

router = APIRouter()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def routing_snapshot(manager: PoolManager, profile: Profile, now: float) -> RoutingSnapshot:
    return manager.routing_snapshot(profile, now)


def affinity_key(body: dict[str, Any]) -> str:
    prompt = body.get("messages", body.get("prompt"))
    text = json.dumps(prompt, sort_keys=True)[:AFFINITY_PREFIX_CHARS]
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def check_length(profile: Profile, body: dict[str, Any], prompt_tokens: int) -> None:
    limit = profile.model.max_model_len
    wanted = prompt_tokens + max_new_tokens(body)
    if prompt_tokens >= limit or wanted > limit:
        param = "messages" if "messages" in body else "prompt"
        raise OpenAIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{wanted} tokens ({prompt_tokens} in the {param}, {max_new_tokens(body)} for the "
            "completion). Please reduce the length of the prompt or completion.",
            "context_length_exceeded",
            param,
        )


REQUEST_HEADERS = frozenset((b"authorization", PRIORITY_HEADER.encode(), b"x-request-id"))


def request_headers(scope: Scope) -> dict[str, str]:
    """The headers the gateway reads, in one pass over the raw ones (first value wins)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in REQUEST_HEADERS:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def exchange_for(gw: Gateway, scope: Scope, raw_body: bytes, chat: bool) -> Exchange:
    """Authenticate, validate, count and route one request (raises `OpenAIError`)."""
    headers = request_headers(scope)
    priority = client_priority(gw.auth, headers.get("authorization"), headers.get(PRIORITY_HEADER))
    body = disagg.strip_client_kv_params(parse_body(raw_body, chat))
    profile = gw.manager.profile
    if body["model"] != profile.model.name:
        raise OpenAIError(
            404, f"The model `{body['model']}` does not exist.", "model_not_found", "model"
        )
    prompt_tokens, token_ids = await gw.counter.encode(body)
    check_length(profile, body, prompt_tokens)
    key = affinity_key(body)
    decode = profile.decode_pool
    hashes = block_hashes(token_ids, gw.manager.block_size(decode))
    cached = gw.manager.expected_cached_tokens(decode, key, hashes)
    snapshot = routing_snapshot(gw.manager, profile, time.monotonic())
    decision = decide_route(profile, prompt_tokens - cached, snapshot)
    return Exchange(
        path=scope["path"],
        body=body,
        request_id=headers.get("x-request-id") or secrets.token_hex(16),
        profile=profile,
        route=decision.route,
        prompt_tokens=prompt_tokens,
        priority=priority,
        affinity_key=key,
        block_hashes=hashes,
    )


async def complete(gw: Gateway, scope: Scope, raw_body: bytes, chat: bool) -> ASGIApp:
    """The response to one completion request: the worker's, or an error in OpenAI's shape."""
    exchange = None
    try:
        exchange = await exchange_for(gw, scope, raw_body, chat)
        return await gw.forwarder.complete(exchange)
    except OpenAIError as exc:
        route = exchange.route if exchange is not None else "none"
        gw.metrics.count_request(route, exc.status)
        headers = exchange.headers() if exchange is not None else None
        if headers is None:
            headers = {"x-pdserve-profile": gw.manager.profile.name, "x-pdserve-route": "none"}
        return error_response(exc, headers)


class CompletionsEndpoint:
    """POST /v1/completions or /v1/chat/completions as plain ASGI: the gateway's hottest path
    reads and validates its own body, so the framework's request wrapping would be pure cost."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = scope["app"].state.gateway
        try:
            raw_body = await read_body(receive)
        except ClientGone:
            return
        response = await complete(gw, scope, raw_body, self.chat)
        await response(scope, receive, send)


router.routes.append(Route("/v1/completions", CompletionsEndpoint(chat=False), methods=["POST"]))
router.routes.append(
    Route("/v1/chat/completions", CompletionsEndpoint(chat=True), methods=["POST"])
)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    gw = gateway_of(request)
    try:
        client_priority(gw.auth, request.headers.get("authorization"), None)
    except OpenAIError as exc:
        return error_response(exc)
    profile = gw.manager.profile
    card = {
        "id": profile.model.name,
        "object": "model",
        "created": 0,
        "owned_by": "pdserve",
        "max_model_len": profile.model.max_model_len,
    }
    return JSONResponse({"object": "list", "data": [card]})
