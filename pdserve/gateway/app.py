"""The gateway's FastAPI app factory. Every object is built in the lifespan and passed in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pdserve.actuators.base import Actuator
from pdserve.gateway import admin, openai_api
from pdserve.gateway.auth import AuthConfig
from pdserve.gateway.errors import ERROR_TYPES, error_body
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.middleware import BodySizeLimit
from pdserve.gateway.proxy import Forwarder
from pdserve.gateway.state import Gateway
from pdserve.gateway.tokens import PromptCounter
from pdserve.gateway.upstream import Upstream
from pdserve.pools.manager import PoolManager
from pdserve.profile import ActuatorKind, Profile

log = logging.getLogger(__name__)

ActuatorFactory = Callable[[Callable[[], Profile]], Actuator]


def build_actuator(
    profile: Profile, current: Callable[[], Profile], env: Mapping[str, str]
) -> Actuator:
    kind = profile.actuator.kind
    if kind is ActuatorKind.local:
        from pdserve.actuators.local import LocalActuator

        log_dir = env.get("PDSERVE_LOG_DIR")
        return LocalActuator(current, host="127.0.0.1", log_dir=Path(log_dir) if log_dir else None)
    if kind is ActuatorKind.static:
        from pdserve.actuators.static import StaticActuator

        return StaticActuator(current)
    if kind is ActuatorKind.ray:
        from pdserve.actuators.ray import RayActuator

        return RayActuator(current)
    from pdserve.actuators.kubernetes import KubernetesActuator

    return KubernetesActuator(profile.actuator.kubernetes)


def start_autoscaler(manager: PoolManager) -> asyncio.Task[None] | None:
    try:
        from pdserve.autoscaler import Autoscaler
    except ImportError:
        return None
    return asyncio.create_task(Autoscaler(manager, lambda: manager.profile).run())


def create_app(
    profile: Profile,
    actuator_factory: ActuatorFactory | None = None,
    env: Mapping[str, str] | None = None,
    autoscale: bool = True,
) -> FastAPI:
    environment = os.environ if env is None else env
    auth = AuthConfig.from_env(environment)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream()
        await upstream.start()
        try:
            metrics = GatewayMetrics()
            holder: list[PoolManager] = []

            def current() -> Profile:
                return holder[0].launch_profile if holder else profile

            if actuator_factory is not None:
                actuator = actuator_factory(current)
            else:
                actuator = build_actuator(profile, current, environment)
            manager = PoolManager(
                profile,
                actuator,
                upstream,
                on_startup=metrics.observe_startup,
                on_decision=metrics.observe_decision,
            )
            holder.append(manager)
            counter = await asyncio.to_thread(PromptCounter.for_model, profile.model)
            forwarder = Forwarder(manager, upstream, metrics)
            app.state.gateway = Gateway(manager, forwarder, counter, metrics, auth, upstream)
            await manager.start()
            autoscaler = start_autoscaler(manager) if autoscale else None
            try:
                yield
            finally:
                if autoscaler is not None:
                    autoscaler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await autoscaler
                await manager.close()
                await actuator.close()
        finally:
            await upstream.close()

    app = FastAPI(title="pdserve gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    _add_probes(app)
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=profile.gateway.max_body_bytes)
    return app


def _add_probes(app: FastAPI) -> None:
    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        manager = openai_api.gateway_of(request).manager
        serving = {name: manager.ready_count(name) for name in manager.profile.pools}
        decode = manager.profile.decode_pool
        status = 200 if serving.get(decode, 0) > 0 else 503
        return JSONResponse({"ready": status == 200, "pools": serving}, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gw = openai_api.gateway_of(request)
        text = gw.metrics.render(gw.manager, time.monotonic())
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Any) -> Response:
        status = int(getattr(exc, "status_code", 500))
        kind = ERROR_TYPES.get(status, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=status)

    async def validation_error(request: Request, exc: Any) -> Response:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
