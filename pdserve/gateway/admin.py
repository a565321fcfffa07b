"""The admin API: pool state, the active profile, and the live profile switch."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pdserve import profile as profiles
from pdserve.gateway.auth import check_admin
from pdserve.gateway.errors import OpenAIError, error_response
from pdserve.gateway.openai_api import gateway_of
from pdserve.policies.types import ScaleDecision
from pdserve.pools.manager import PoolManager
from pdserve.pools.replica import replica_state
from pdserve.pools.switch import SwitchInProgress

router = APIRouter(prefix="/admin")


def decision_view(decision: ScaleDecision) -> dict[str, Any]:
    return {
        "desired": decision.desired,
        "current": decision.current,
        "direction": decision.direction,
        "reason": decision.reason,
        "panic": decision.panic,
        "at": decision.at,
    }


def pools_view(manager: PoolManager, now: float) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for name, pool in manager.pools.items():
        snap = manager.snapshot(name, now)
        view[name] = {
            "role": pool.spec.role.value,
            "in_profile": name in manager.profile.pools,
            "replicas": pool.state_counts(),
            "desired": pool.desired,
            "queue_depth": snap.queued_requests,
            "queued_prompt_tokens": snap.queued_prompt_tokens,
            "concurrency": snap.concurrency,
            "prefill_tokens_per_s": pool.prefill_tokens_per_s,
            "endpoints": [
                {
                    "id": r.id,
                    "url": r.url,
                    "state": replica_state(r).value,
                    "inflight": r.inflight,
                    "waiting": r.waiting,
                    "running": r.running,
                    "kv_usage": r.kv_usage,
                    "labels": r.handle.labels,
                }
                for r in pool.replicas.values()
            ],
            "decisions": [decision_view(d) for d in pool.decisions],
            "last_decision": decision_view(pool.last_decision) if pool.last_decision else None,
        }
    return view


def _authorized(request: Request) -> None:
    check_admin(gateway_of(request).auth, request.headers.get("authorization"))


@router.get("/pools")
async def get_pools(request: Request) -> Response:
    try:
        _authorized(request)
    except OpenAIError as exc:
        return error_response(exc)
    return JSONResponse(pools_view(gateway_of(request).manager, time.monotonic()))


def profile_view(manager: PoolManager) -> dict[str, Any]:
    pending = manager.switch.pending
    return {
        "active": manager.profile.name,
        "pending": pending.name if pending is not None else None,
        "profile": manager.profile.model_dump(mode="json"),
    }


@router.get("/profile")
async def get_profile(request: Request) -> Response:
    try:
        _authorized(request)
    except OpenAIError as exc:
        return error_response(exc)
    return JSONResponse(profile_view(gateway_of(request).manager))


async def _requested_profile(request: Request) -> profiles.Profile:
    """`{"name": NAME-or-PATH}` or `{"profile": {...a whole profile...}}`."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError(400, 'body must be JSON: {"name": PROFILE}', "invalid_json") from None
    try:
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            return await asyncio.to_thread(profiles.load, body["name"])
        if isinstance(body, dict) and isinstance(body.get("profile"), dict):
            return profiles.parse(body["profile"], "PUT /admin/profile")
    except profiles.ProfileError as exc:
        raise OpenAIError(400, str(exc), "invalid_profile", "name") from None
    raise OpenAIError(400, 'give {"name": PROFILE} or {"profile": {...}}', "invalid_value")


@router.put("/profile")
async def put_profile(request: Request) -> Response:
    manager = gateway_of(request).manager
    try:
        _authorized(request)
        new = await _requested_profile(request)
        if new.model.name != manager.profile.model.name:
            raise OpenAIError(
                400, "a live switch keeps the served model; restart to change it", "invalid_value"
            )
        await manager.switch.begin(new)
    except SwitchInProgress as exc:
        return error_response(OpenAIError(409, str(exc), "switch_in_progress"))
    except OpenAIError as exc:
        return error_response(exc)
    return JSONResponse(profile_view(manager), status_code=202)
