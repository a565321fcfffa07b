"""`pdserve gateway`: serve the gateway app with uvicorn."""

from __future__ import annotations

import uvicorn

from pdserve.gateway.app import create_app
from pdserve.profile import Profile


def run_gateway(profile: Profile, host: str | None = None, port: int | None = None) -> int:
    app = create_app(profile)
    config = uvicorn.Config(
        app,
        host=host or profile.gateway.host,
        port=port or profile.gateway.port,
        log_level="info",
        access_log=False,
        proxy_headers=False,  # no client address is used: skip its per-request rewrite
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
    return 0
