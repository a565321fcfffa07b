"""The OpenAI API: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve import disagg
from pdserve.gateway import model_routing
from pdserve.gateway.auth import PRIORITY_HEADER, client_priority
from pdserve.gateway.client_watch import ClientWatch
from pdserve.gateway.errors import OpenAIError, error_response
from pdserve.gateway.proxy import Exchange
from pdserve.gateway.requests import max_new_tokens, parse_body
from pdserve.gateway.state import Gateway
from pdserve.pools.prefix import block_hashes
from pdserve.profile import Profile

AFFINITY_PREFIX_CHARS = 512

router = APIRouter()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


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


DEADLINE_HEADER = "x-pdserve-deadline-s"
REQUEST_HEADERS = frozenset(
    (
        b"authorization",
        PRIORITY_HEADER.encode(),
        DEADLINE_HEADER.encode(),
        b"x-request-id",
        b"traceparent",
    )
)


def deadline_of(header: str | None) -> float | None:
    """`x-pdserve-deadline-s`: seconds the client will wait for its request to start."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise OpenAIError(400, f"{DEADLINE_HEADER} must be a positive number", "invalid_value")
    return seconds


REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id_of(header: str | None) -> str:
    """The client's `x-request-id` when it is a plain token, else a fresh one: the id goes
    into worker requests, response headers and logs, so nothing else a client sends does."""
    if header is not None and REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)


TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_of(header: str | None) -> str | None:
    """A W3C `traceparent` that is well formed, to pass on to the workers; else none."""
    if header is not None and TRACEPARENT.fullmatch(header.strip()):
        return header.strip()
    return None


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
    """Authenticate, validate and count one request (raises `OpenAIError`); its route is
    chosen when it can start (`Forwarder.place`)."""
    headers = request_headers(scope)
    priority = client_priority(gw.auth, headers.get("authorization"), headers.get(PRIORITY_HEADER))
    deadline_s = deadline_of(headers.get(DEADLINE_HEADER))
    body = disagg.strip_client_kv_params(parse_body(raw_body, chat))
    pick = gw.rollouts.pick(body, scope["headers"])
    if pick is not None:  # a rolled-out name: the chosen version's workers serve their own name
        body = {**body, "model": pick.served}
    target = model_routing.resolve(gw.manager.profile, body["model"])
    profile = target.profile  # the model's own pools and routing
    prompt_tokens, token_ids = await (await gw.counters.of(target.model)).encode(body)
    check_length(profile, body, prompt_tokens)
    key = affinity_key(body)
    decode = profile.decode_pool
    hashes = block_hashes(token_ids, gw.manager.block_size(decode))
    cached = gw.manager.expected_cached_tokens(decode, key, hashes)
    return Exchange(
        path=scope["path"],
        body=body,
        request_id=request_id_of(headers.get("x-request-id")),
        profile=profile,
        route="local",  # until placed
        prompt_tokens=prompt_tokens,
        uncached_tokens=prompt_tokens - cached,
        deadline_s=deadline_s,
        priority=priority,
        affinity_key=key,
        block_hashes=hashes,
        traceparent=traceparent_of(headers.get("traceparent")),
        rollout=pick,
    )


async def complete(gw: Gateway, scope: Scope, raw_body: bytes, chat: bool) -> ASGIApp:
    """The response to one completion request: the worker's, or an error in OpenAI's shape."""
    exchange = None
    try:
        exchange = await exchange_for(gw, scope, raw_body, chat)
        return await gw.forwarder.complete(exchange)
    except OpenAIError as exc:
        if exchange is None:  # once it has one, the forwarder's telemetry counted it
            gw.metrics.count_request("none", exc.status)
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
        watch = ClientWatch(receive)  # a client that leaves while held or prefilled stops it
        try:
            response = await watch.run(complete(gw, scope, raw_body, self.chat))
            if response is not None:
                await response(scope, watch.receive, send)
        finally:
            watch.close()


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
    cards = model_routing.model_cards(gw.manager.profile)
    return JSONResponse({"object": "list", "data": cards})
