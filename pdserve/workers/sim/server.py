"""The simulated worker's HTTP server: vLLM's OpenAI routes, /health, /metrics, and the internal
KV pull endpoint; `run(args)` is what `pdserve worker --engine sim` calls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve.workers.sim import kv, lora, protocol
from pdserve.workers.sim.auth import ApiKeyGate, api_keys
from pdserve.workers.sim.cli import SimSettings, settings_from
from pdserve.workers.sim.engine import Engine, Faults
from pdserve.workers.sim.metrics import SimMetrics
from pdserve.workers.sim.protocol import ApiError, ParsedRequest
from pdserve.workers.sim.refuse import Refusal
from pdserve.workers.sim.service import Service, WorkerConfig
from pdserve.workers.sim.timing import Timing, load_timing, with_limits

T = TypeVar("T")


def _json(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


class HangGate:
    """Pure ASGI: with the hang fault on, every request (health included) waits forever."""

    def __init__(self, app: ASGIApp, hang: bool) -> None:
        self.app = app
        self.hang = hang

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hang and scope["type"] == "http":
            await asyncio.Event().wait()
        await self.app(scope, receive, send)


async def _sse(service: Service, req: ParsedRequest, request_id: str) -> AsyncIterator[str]:
    model, created, chat = req.adapter or service.config.served_model, int(time.time()), req.chat
    produced = 0
    try:
        async for token in service.stream(req, request_id):
            if chat and not produced:  # vLLM sends the role with its first output, not before
                yield f"data: {_json(protocol.role_chunk(request_id, created, model))}\n\n"
            produced += 1
            chunk = protocol.token_chunk(request_id, created, model, chat, token.text, token.finish)
            yield f"data: {_json(chunk)}\n\n"
    except ApiError as exc:
        yield f"data: {_json(exc.body())}\n\n"
    if req.include_usage:
        usage = protocol.usage_chunk(
            request_id, created, model, chat, len(req.prompt_ids), produced
        )
        yield f"data: {_json(usage)}\n\n"
    yield "data: [DONE]\n\n"


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None once the client disconnected (work cancelled): vLLM's
    `with_cancellation` aborts a non-streamed request the same way, freeing its blocks."""
    task = asyncio.ensure_future(work)

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _completion(service: Service, request: Request, chat: bool) -> Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(ApiError(400, "JSON decode error", "Bad Request", "body"))
    headers = request.headers
    service.record_received(
        request.url.path, headers.get("x-request-id"), body, headers.get("traceparent")
    )
    try:
        cfg = service.config
        adapters = service.lora.loaded
        req = protocol.parse_request(body, chat, cfg.served_model, cfg.max_model_len, adapters)
        request_id = protocol.new_id(chat)
        if req.stream:
            service.check_faults(req)  # before the stream: a 500, not an error event
            return StreamingResponse(_sse(service, req, request_id), media_type="text/event-stream")
        outcome = await _unless_client_leaves(request, service.complete(req, request_id))
        if outcome is None:
            return Response(status_code=499)  # nobody reads it
    except ApiError as exc:
        return _error(exc)
    builder = protocol.chat_response if chat else protocol.completion_response
    return JSONResponse(builder(outcome))


def _routes(app: FastAPI, service: Service) -> None:
    cfg = service.config

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _completion(service, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _completion(service, request, chat=True)

    @app.get("/v1/models")
    async def models() -> Response:
        now = int(time.time())
        listed = protocol.models_response(cfg.served_model, cfg.model_root, cfg.max_model_len, now)
        listed["data"] += service.lora.cards(cfg.served_model, now)
        return JSONResponse(listed)

    lora.add_routes(app, service.lora)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        service.engine.refresh_metrics()
        return Response(service.engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/sim/received")
    async def received() -> Response:
        """What the last requests carried (tests check what a gateway forwards)."""
        return JSONResponse(list(service.received))

    @app.post(kv.PULL_PATH)
    async def pull(request: Request) -> Response:
        answer = service.serve_pull(await request.json())
        if answer is None:
            return JSONResponse({"error": "no such blocks"}, status_code=404)
        return JSONResponse(answer)


async def _sweep_leases(service: Service) -> None:
    while True:
        await asyncio.sleep(0.25)
        service.expire_leases()


def create_app(config: WorkerConfig, timing: Timing, time_scale: float, faults: Faults) -> ASGIApp:
    """The worker's ASGI app; its engine loop runs in the app's lifespan."""
    engine = Engine(timing, SimMetrics(config.served_model), time_scale, faults)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client:
            service.client = client
            tasks = [asyncio.create_task(engine.run()), asyncio.create_task(_sweep_leases(service))]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    service = Service(config, engine)
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _routes(app, service)
    return HangGate(app, faults.hang)


def _config(settings: SimSettings) -> WorkerConfig:
    return WorkerConfig(
        served_model=settings.served_model,
        model_root=settings.served_model,
        host=settings.host,
        port=settings.port,
        role=settings.role,
        max_model_len=settings.max_model_len,
        kv_load_failure_policy=settings.kv_load_failure_policy,
        kv_lease_s=settings.kv_lease_s,
        max_loras=settings.max_loras,
        lora_modules=settings.lora_modules,
    )


async def _serve(config: WorkerConfig, app: ASGIApp, faults: Faults, time_scale: float) -> None:
    if faults.refuse:
        await asyncio.Event().wait()  # alive, but the port never opens
    await asyncio.sleep(faults.cold_start_s / time_scale)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    Refusal(server).install(asyncio.get_running_loop())
    await server.serve()


def run(args: argparse.Namespace) -> int:
    """Serve one simulated worker until interrupted (SIGINT or SIGTERM)."""
    try:
        settings = settings_from(args)
        timing = with_limits(
            load_timing(settings.timing, settings.accelerator),
            settings.kv_cache_gib,
            settings.max_num_seqs,
            settings.max_num_batched_tokens,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = _config(settings)
    app = create_app(config, timing, settings.time_scale, settings.faults)
    keys = api_keys(getattr(args, "api_key", None))
    if keys:
        app = ApiKeyGate(app, keys)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, app, settings.faults, settings.time_scale))
    return 0
