"""The gateway's FastAPI app factory. Every object is built in the lifespan and passed in."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pdserve.actuators.base import Actuator
from pdserve.actuators.local import LocalActuator
from pdserve.actuators.static import StaticActuator
from pdserve.gateway import admin, openai_api, openapi
from pdserve.gateway.auth import AuthConfig
from pdserve.gateway.errors import ERROR_TYPES, OpenAIError, error_body, error_response
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.middleware import BodySizeLimit
from pdserve.gateway.proxy import Forwarder
from pdserve.gateway.request_log import RequestLog
from pdserve.gateway.rollouts import Rollouts
from pdserve.gateway.state import Gateway
from pdserve.gateway.telemetry import Telemetry
from pdserve.gateway.tokens import PromptCounter
from pdserve.gateway.tracing import Tracing
from pdserve.gateway.upstream import Upstream
from pdserve.pools.autoscaler import Autoscaler
from pdserve.pools.manager import PoolManager
from pdserve.pools.peers import PeerGateways
from pdserve.profile import ActuatorKind, Profile, Role

log = logging.getLogger(__name__)

ActuatorFactory = Callable[[Profile], Actuator]


@runtime_checkable
class FollowsProfile(Protocol):
    """An actuator that reads the profile when it launches (local, static, Ray): it is built
    with the starting profile, then follows the pool manager's launch profile (the pending one
    during a switch)."""

    def follow(self, profile: Callable[[], Profile]) -> None: ...


def build_actuator(profile: Profile, env: Mapping[str, str]) -> Actuator:
    """The profile's actuator; Ray and Kubernetes are imported only when a profile names them."""
    kind = profile.actuator.kind
    if kind is ActuatorKind.local:
        log_dir = env.get("PDSERVE_LOG_DIR")
        return LocalActuator(
            lambda: profile, host="127.0.0.1", log_dir=Path(log_dir) if log_dir else None
        )
    if kind is ActuatorKind.static:
        return StaticActuator(lambda: profile)
    if kind is ActuatorKind.ray:
        from pdserve.actuators.ray import RayActuator

        return RayActuator(lambda: profile)
    from pdserve.actuators.kubernetes import KubernetesActuator

    return KubernetesActuator(profile.actuator.kubernetes)


def create_app(
    profile: Profile,
    actuator_factory: ActuatorFactory | None = None,
    env: Mapping[str, str] | None = None,
    autoscale: bool = True,
    tracing: Tracing | None = None,
) -> FastAPI:
    environment = os.environ if env is None else env
    auth = AuthConfig.from_env(environment, profile.gateway.host)
    build = actuator_factory or functools.partial(build_actuator, env=environment)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker_key = environment.get("PDSERVE_WORKER_API_KEY") or None
        actuator = build(profile)
        traces = tracing or Tracing.configured(profile.gateway.otlp_traces_endpoint, environment)
        running = running_gateway(profile, actuator, auth, autoscale, worker_key, traces)
        async with running as gateway:
            app.state.gateway = gateway
            yield

    app = FastAPI(title="pdserve gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    _add_probes(app)
    _add_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=profile.gateway.max_body_bytes,
        body_timeout_s=profile.gateway.body_timeout_s,
    )
    openapi.install(app)
    return app


@contextlib.asynccontextmanager
async def running_gateway(
    profile: Profile,
    actuator: Actuator,
    auth: AuthConfig,
    autoscale: bool,
    worker_api_key: str | None = None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Gateway]:
    """Every object a gateway runs on, built in order and closed in reverse: the autoscaler,
    the manager, the actuator (which stops what it launched), then the worker client."""
    async with contextlib.AsyncExitStack() as stack:
        # the workers' key (vLLM's --api-key), sent on every call to them
        upstream = await stack.enter_async_context(Upstream(api_key=worker_api_key))
        stack.push_async_callback(actuator.close)
        metrics = GatewayMetrics()
        traces = tracing or Tracing(None)
        stack.callback(traces.close)  # last: spans of requests ended during shutdown go out
        telemetry = Telemetry(metrics, traces, RequestLog(profile.gateway.log_format))
        counter = await asyncio.to_thread(PromptCounter.for_model, profile.model)
        manager = await _started_manager(stack, profile, actuator, upstream, metrics, autoscale)
        rollouts = Rollouts(lambda: manager.profile)
        telemetry.finished.append(rollouts.finished)
        await stack.enter_async_context(background(rollouts.run_schedule()))
        gateway = Gateway(
            manager,
            Forwarder(manager, upstream, metrics, telemetry=telemetry),
            counter,
            metrics,
            auth,
            upstream,
            rollouts,
        )
        gateway.counters.add(profile.model, counter)  # further models' load on first use
        yield gateway


async def _started_manager(
    stack: contextlib.AsyncExitStack,
    profile: Profile,
    actuator: Actuator,
    upstream: Upstream,
    metrics: GatewayMetrics,
    autoscale: bool,
) -> PoolManager:
    """The pool manager over the actuator, started, with the autoscaler loop when `autoscale`;
    `stack` closes both."""
    manager = PoolManager(
        profile,
        actuator,
        upstream,
        on_startup=metrics.observe_startup,
        on_decision=metrics.observe_decision,
    )
    if isinstance(actuator, FollowsProfile):
        actuator.follow(lambda: manager.launch_profile)
    metrics.export_pools(manager)
    stack.push_async_callback(manager.close)
    await manager.start()
    if autoscale:
        await stack.enter_async_context(autoscaling(manager, actuator))
    return manager


@runtime_checkable
class Leadership(Protocol):
    """One of several gateways, elected (the Kubernetes actuator's Lease)."""

    leading: bool

    async def wait(self, leading: bool) -> None: ...


@runtime_checkable
class ElectsLeader(Protocol):
    def leadership(self) -> contextlib.AbstractAsyncContextManager[Leadership | None]: ...


async def autoscale_while_leading(
    manager: PoolManager, leader: Leadership, peers: PeerGateways | None = None
) -> None:
    """The autoscaler runs only while this gateway leads; a follower only proxies. The leader
    also polls the demand its peers hold, which its autoscaler counts (pools.peers)."""
    while True:
        await leader.wait(True)
        tasks = [asyncio.create_task(Autoscaler(manager, lambda: manager.profile).run())]
        if peers is not None:
            token = os.environ.get("PDSERVE_ADMIN_TOKEN") or None
            tasks.append(asyncio.create_task(manager.peer_poller(peers, token).run()))
        try:
            await leader.wait(False)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def autoscaling(
    manager: PoolManager, actuator: Actuator | None = None
) -> AsyncIterator[None]:
    """The autoscaler loop over the manager's pools while the context is open (while leading,
    when the actuator elects one gateway of several)."""
    async with contextlib.AsyncExitStack() as stack:
        leader = None
        if isinstance(actuator, ElectsLeader):
            leader = await stack.enter_async_context(actuator.leadership())
        peers = actuator if isinstance(actuator, PeerGateways) else None
        await stack.enter_async_context(_autoscaler_task(manager, leader, peers))
        yield


@contextlib.asynccontextmanager
async def _autoscaler_task(
    manager: PoolManager, leader: Leadership | None, peers: PeerGateways | None = None
) -> AsyncIterator[None]:
    if leader is None:
        work = Autoscaler(manager, lambda: manager.profile).run()
    else:
        work = autoscale_while_leading(manager, leader, peers)
    async with background(work):
        yield


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`work` runs as a task while the context is open, cancelled when it closes."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _add_probes(app: FastAPI) -> None:
    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        manager = openai_api.gateway_of(request).manager
        serving = {name: manager.ready_count(name) for name in manager.profile.pools}
        decode = [manager.profile.pool_for(Role.decode, m) for m in manager.profile.served_models()]
        status = 200 if all(serving.get(d or "", 0) > 0 for d in decode) else 503
        return JSONResponse({"ready": status == 200, "pools": serving}, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(
            openai_api.gateway_of(request).metrics.render(),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Any) -> Response:
        status = int(getattr(exc, "status_code", 500))
        kind = ERROR_TYPES.get(status, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=status)

    async def validation_error(request: Request, exc: Any) -> Response:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    async def openai_error(request: Request, exc: Any) -> Response:
        return error_response(exc)  # raised by a route or its dependency (the admin auth)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OpenAIError, openai_error)
