"""The simulated worker's API key, as vLLM's server does it (`--api-key`, else `VLLM_API_KEY`;
vllm/entrypoints/serve/middleware/authenticate.py): paths under /v1, /v2, /inference and
/cohere need `Authorization: Bearer <key>`, else 401 `{"error": "Unauthorized"}`; /health,
/metrics and OPTIONS stay open (probes and scrapes need no key). Pure ASGI."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


def api_keys(flags: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The flag's keys win over the environment's, as in vLLM."""
    environ = os.environ if environ is None else environ
    return [key for key in (flags or [environ.get("VLLM_API_KEY", "")]) if key]


class ApiKeyGate:
    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def _allowed(self, headers: Headers) -> bool:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(digest, known) for known in self._digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = (
            self._digests
            and scope["type"] in ("http", "websocket")
            and scope.get("method") != "OPTIONS"
            and scope["path"].removeprefix(scope.get("root_path", "")).startswith(GUARDED_PREFIXES)
        )
        if guarded and not self._allowed(Headers(scope=scope)):
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)
