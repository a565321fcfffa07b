"""The OpenAI API: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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


async def exchange_for(gw: Gateway, request: Request, chat: bool) -> Exchange:
    """Authenticate, validate, count and route one request (raises `OpenAIError`)."""
    priority = client_priority(
        gw.auth, request.headers.get("authorization"), request.headers.get(PRIORITY_HEADER)
    )
    body = disagg.strip_client_kv_params(parse_body(await request.body(), chat))
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
        path=request.url.path,
        body=body,
        request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
        profile=profile,
        route=decision.route,
        prompt_tokens=prompt_tokens,
        priority=priority,
        affinity_key=key,
        block_hashes=hashes,
    )


async def _complete(request: Request, chat: bool) -> Response:
    gw = gateway_of(request)
    exchange = None
    try:
        exchange = await exchange_for(gw, request, chat)
        return await gw.forwarder.complete(exchange)
    except OpenAIError as exc:
        route = exchange.route if exchange is not None else "none"
        gw.metrics.requests.labels(route=route, status=str(exc.status)).inc()
        headers = exchange.headers() if exchange is not None else None
        if headers is None:
            headers = {"x-pdserve-profile": gw.manager.profile.name, "x-pdserve-route": "none"}
        return error_response(exc, headers)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


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
