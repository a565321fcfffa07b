"""The gateway's OpenAPI document (`GET /openapi.json`): FastAPI's own for the routes it
declares, completed with what it cannot see: the completion endpoints (plain ASGI, for speed)
with their request bodies, headers, JSON and SSE responses, the admin API's bodies and answers,
and every error status in OpenAI's shape. tests/gateway/test_fuzz_openapi.py generates requests
from this document and checks the gateway's answers against it."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from pdserve.gateway.errors import ErrorResponse
from pdserve.gateway.requests import ChatBody, CompletionBody
from pdserve.profile import Profile

REF = "#/components/schemas/{model}"
PROFILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM adds fields release by release


class Usage(Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(Open):
    index: int
    text: str
    finish_reason: str | None


class Completion(Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessage(Open):
    role: str
    content: str | None


class ChatChoice(Open):
    index: int
    message: ChatMessage
    finish_reason: str | None


class ChatCompletion(Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class StreamChunk(Open):
    """One `data:` event of a stream: a completion chunk, or (after the first token, when a
    worker fails) an `error` in OpenAI's shape; the stream ends with `data: [DONE]`."""

    id: str | None = None
    object: Literal["text_completion", "chat.completion.chunk"] | None = None
    choices: list[dict[str, Any]] | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None


class ModelCard(Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ProfileByName(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(
        pattern=PROFILE_NAME_PATTERN, description="A shipped profile's name, never a path."
    )


class ProfileInline(BaseModel):
    model_config = ConfigDict(extra="allow")
    profile: Profile = Field(description="A whole profile, as its YAML would be.")


class ProfileState(BaseModel):
    active: str
    pending: str | None
    profile: Profile


class PoolState(Open):
    role: str
    replicas: dict[str, int]
    desired: int
    queue_depth: int
    concurrency: float
    endpoints: list[dict[str, Any]]


class WindowFigures(BaseModel):
    requests: int
    errors: int
    error_rate: float
    ttft_p99_s: float | None


class RolloutStep(BaseModel):
    reason: str
    ago_s: float


class RolloutView(Open):
    stable: str
    canary: str
    weights: dict[str, float] = Field(description="Percent of requests per version.")
    state: Literal["rolling", "complete", "rolled_back"]
    steps: list[float]
    last_step: RolloutStep
    window_s: float
    window: dict[str, WindowFigures] = Field(description="Each version's figures over window_s.")


class RolloutChange(BaseModel):
    """A step (`canary_percent`; it resumes a rolled-back rollout) or `rollback: true`."""

    model_config = ConfigDict(extra="allow")
    canary_percent: float | None = Field(None, ge=0, le=100)
    rollback: bool | None = None
    reason: str | None = Field(None, description="Shown with the step's reason.")


MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse,
    CompletionBody,
    ChatBody,
    Completion,
    ChatCompletion,
    StreamChunk,
    ModelList,
    ProfileByName,
    ProfileInline,
    ProfileState,
    PoolState,
    RolloutView,
    RolloutChange,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_MEANINGS = {
    400: "bad input (the message names the parameter)",
    401: "missing or wrong API key or admin token",
    404: "unknown model or path",
    408: "the body was not received within gateway.body_timeout_s",
    409: "a profile switch is already under way",
    413: "the body is larger than gateway.max_body_bytes",
    429: "over capacity, or it cannot start within its deadline (see Retry-After)",
    503: "no replica can serve it (see Retry-After)",
}


def errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref(ErrorResponse), ERROR_MEANINGS[s]) for s in statuses}


REQUEST_HEADERS = [
    ("x-request-id", {"type": "string"}, "Kept when 1-128 of [A-Za-z0-9._:/+=@-]; else new."),
    ("x-pdserve-priority", {"type": "integer"}, "Queue priority when no API keys are set."),
    ("x-pdserve-deadline-s", {"type": "number", "exclusiveMinimum": 0}, "Start within, or 429."),
    ("x-pdserve-client", {"type": "string"}, "Names the client: a rollout keeps its version."),
]


def completion_operation(body: type[BaseModel], answer: type[BaseModel]) -> dict[str, Any]:
    ok = _json(_ref(answer), "the completion; `stream: true` gives SSE")
    ok["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "`data: <StreamChunk>` events, then [DONE]"},
        "x-pdserve-event": _ref(StreamChunk),
    }
    ok["headers"] = {
        name: {"schema": {"type": "string"}}
        for name in ("x-pdserve-route", "x-pdserve-profile", "x-request-id")
    }
    ok["headers"]["x-pdserve-version"] = {
        "schema": {"enum": ["stable", "canary"]},
        "description": "The version of a rolled-out model that served it (absent otherwise).",
    }
    params = [
        {"name": n, "in": "header", "required": False, "schema": s, "description": d}
        for n, s, d in REQUEST_HEADERS
    ]
    return {
        "tags": ["openai"],
        "operationId": body.__name__,
        "parameters": params,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {"200": ok, **errors(400, 401, 404, 408, 413, 429, 503)},
        "security": [{}, {"bearer": []}],
    }


def admin_operations() -> dict[str, dict[str, Any]]:
    switch = {"oneOf": [_ref(ProfileByName), _ref(ProfileInline)]}
    put: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": switch}}},
        "responses": {
            "202": _json(_ref(ProfileState), "the switch has started"),
            **errors(400, 401, 408, 409, 413),
        },
    }
    get_profile: dict[str, Any] = {
        "responses": {"200": _json(_ref(ProfileState), "the active profile")}
    }
    pools = {"type": "object", "additionalProperties": _ref(PoolState)}
    get_pools: dict[str, Any] = {"responses": {"200": _json(pools, "every pool by name")}}
    counts = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    demand = {"type": "object", "additionalProperties": counts}
    get_demand: dict[str, Any] = {
        "responses": {"200": _json(demand, "requests held or diverted here, per pool")}
    }
    get_rollouts, post_rollout = rollout_operations()
    for operation in (put, get_profile, get_pools, get_demand, get_rollouts, post_rollout):
        operation["responses"].update(errors(401))
        operation["security"] = [{}, {"bearer": []}]
    return {
        "put /admin/profile": put,
        "get /admin/profile": get_profile,
        "get /admin/pools": get_pools,
        "get /admin/demand": get_demand,
        "get /admin/rollouts": get_rollouts,
        "post /admin/rollouts/{model}": post_rollout,
    }


def rollout_operations() -> tuple[dict[str, Any], dict[str, Any]]:
    views = {"type": "object", "additionalProperties": _ref(RolloutView)}
    get: dict[str, Any] = {"responses": {"200": _json(views, "every rollout by its model")}}
    body = {"content": {"application/json": {"schema": _ref(RolloutChange)}}}
    post: dict[str, Any] = {
        "requestBody": {"required": True, **body},
        "responses": {
            "200": _json(_ref(RolloutView), "the rollout after the change"),
            **errors(400, 404, 408, 413),
        },
    }
    return get, post


def build(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    paths = document.setdefault("paths", {})
    paths["/v1/completions"] = {"post": completion_operation(CompletionBody, Completion)}
    paths["/v1/chat/completions"] = {"post": completion_operation(ChatBody, ChatCompletion)}
    models = paths["/v1/models"]["get"]
    models["responses"] = {"200": _json(_ref(ModelList), "the served model"), **errors(401)}
    for key, operation in admin_operations().items():
        method, path = key.split(" ")
        paths[path][method].update(operation)
    return document


def install(app: FastAPI) -> None:
    """Serve `build(app)` as the app's OpenAPI document, built once on first request."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
