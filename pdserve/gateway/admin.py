"""The admin API: pool state, the active profile, and the live profile switch."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from pdserve import profile as profiles
from pdserve.gateway.auth import check_admin
from pdserve.gateway.errors import OpenAIError
from pdserve.gateway.openai_api import gateway_of
from pdserve.gateway.openapi import PROFILE_NAME_PATTERN
from pdserve.policies.types import ScaleDecision
from pdserve.pools.interface import GatewayPools
from pdserve.pools.switch import SwitchInProgress
from pdserve.pools.views import PoolView, ReplicaView

PROFILE_NAME = re.compile(PROFILE_NAME_PATTERN)


def decision_view(decision: ScaleDecision) -> dict[str, Any]:
    return {
        "desired": decision.desired,
        "current": decision.current,
        "direction": decision.direction,
        "reason": decision.reason,
        "panic": decision.panic,
        "at": decision.at,
    }


def endpoint_view(endpoint: ReplicaView) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "state": endpoint.state,
        "inflight": endpoint.inflight,
        "waiting": endpoint.waiting,
        "running": endpoint.running,
        "kv_usage": endpoint.kv_usage,
        "labels": dict(endpoint.labels),
        "kv_fault": endpoint.kv_fault,
    }


def pool_view(pool: PoolView) -> dict[str, Any]:
    last = pool.last_decision
    return {
        "role": pool.role,
        "in_profile": pool.in_profile,
        "replicas": dict(pool.replicas),
        "desired": pool.desired,
        "queue_depth": pool.snapshot.queued_requests,
        "queued_prompt_tokens": pool.snapshot.queued_prompt_tokens,
        "concurrency": pool.snapshot.concurrency,
        "prefill_tokens_per_s": pool.prefill_tokens_per_s,
        "endpoints": [endpoint_view(e) for e in pool.endpoints],
        "decisions": [decision_view(d) for d in pool.decisions],
        "last_decision": decision_view(last) if last is not None else None,
    }


def pools_view(manager: GatewayPools, now: float) -> dict[str, Any]:
    return {pool.name: pool_view(pool) for pool in manager.pool_views(now)}


def _authorized(request: Request) -> None:
    """Every admin route's first step (the router's dependency): an OpenAIError (401/403) is
    answered by the app's handler in the OpenAI error shape."""
    check_admin(gateway_of(request).auth, request.headers.get("authorization"))


router = APIRouter(prefix="/admin", dependencies=[Depends(_authorized)])


@router.get("/pools")
async def get_pools(request: Request) -> Response:
    return JSONResponse(pools_view(gateway_of(request).manager, time.monotonic()))


@router.get("/demand")
async def get_demand(request: Request) -> Response:
    """This gateway's held and diverted demand per pool: the leader of several gateways
    polls it, since only the leader's autoscaler runs (`pools.peers`)."""
    demand = gateway_of(request).manager.local_demand()
    return JSONResponse({name: asdict(held) for name, held in demand.items()})


def profile_view(manager: GatewayPools) -> dict[str, Any]:
    pending = manager.pending_profile
    return {
        "active": manager.profile.name,
        "pending": pending.name if pending is not None else None,
        "profile": manager.profile.model_dump(mode="json"),
    }


@router.get("/profile")
async def get_profile(request: Request) -> Response:
    return JSONResponse(profile_view(gateway_of(request).manager))


def named_profile(name: str) -> profiles.Profile:
    """A profile of the gateway's profiles directory by name. Never a path: a caller of the
    admin API must not make the gateway read files of its choosing."""
    if not PROFILE_NAME.fullmatch(name):
        raise OpenAIError(
            400,
            "name is a profile name (letters, digits, '-' and '_', as `pdserve profile list` "
            'shows), never a path; send {"profile": {...}} for a profile of your own',
            "invalid_profile",
            "name",
        )
    path = profiles.profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profiles.profiles_dir().glob("*.yaml")))
        raise OpenAIError(
            400, f"no profile named {name!r}; known: {known or 'none'}", "invalid_profile", "name"
        )
    return profiles.load(str(path))


async def _requested_profile(request: Request) -> profiles.Profile:
    """`{"name": NAME}` or `{"profile": {...a whole profile...}}`."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError(400, 'body must be JSON: {"name": PROFILE}', "invalid_json") from None
    try:
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            return await asyncio.to_thread(named_profile, body["name"])
        if isinstance(body, dict) and isinstance(body.get("profile"), dict):
            return profiles.parse(body["profile"], "PUT /admin/profile")
    except profiles.ProfileError as exc:
        raise OpenAIError(400, str(exc), "invalid_profile", "name") from None
    raise OpenAIError(400, 'give {"name": PROFILE} or {"profile": {...}}', "invalid_value")


@router.put("/profile")
async def put_profile(request: Request) -> Response:
    manager = gateway_of(request).manager
    new = await _requested_profile(request)
    try:
        await manager.switch_profile(new)
    except SwitchInProgress as exc:
        raise OpenAIError(409, str(exc), "switch_in_progress") from None
    return JSONResponse(profile_view(manager), status_code=202)


@router.get("/rollouts")
async def get_rollouts(request: Request) -> Response:
    """Each rollout's weights, state, last step with its reason, and window figures."""
    return JSONResponse(gateway_of(request).rollouts.view())


def rollout_change(body: Any) -> tuple[float | None, str]:
    """`{"canary_percent": N}` (a step; it resumes a rolled-back rollout) or `{"rollback":
    true}`, each with an optional `reason`; (percent, reason), None for a rollback."""
    if not isinstance(body, dict):
        body = {}
    note = body.get("reason")
    note = f" ({note})" if isinstance(note, str) and note else ""
    percent = body.get("canary_percent")
    rollback = body.get("rollback") is True
    if rollback and percent is None:
        return None, f"admin: rolled back{note}"
    valid = isinstance(percent, int | float) and not isinstance(percent, bool)
    if rollback or not valid or not 0 <= percent <= 100:
        raise OpenAIError(
            400,
            'give {"canary_percent": N} with N in [0, 100], or {"rollback": true}',
            "invalid_value",
            "canary_percent",
        )
    return float(percent), f"admin: canary to {percent:g}%{note}"


@router.post("/rollouts/{model}")
async def post_rollout(request: Request, model: str) -> Response:
    rollouts = gateway_of(request).rollouts
    percent, reason = rollout_change(await _json_body(request))
    if percent is None:
        changed = rollouts.roll_back(model, reason)
    else:
        changed = rollouts.step(model, percent, reason)
    if changed is None:
        known = ", ".join(sorted(rollouts.current())) or "none"
        raise OpenAIError(404, f"no rollout of {model!r}; rollouts: {known}", "not_found")
    return JSONResponse(rollouts.view()[model])


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError(400, "body must be JSON", "invalid_json") from None
