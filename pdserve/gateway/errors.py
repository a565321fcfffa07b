"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: OpenAIError, headers: dict[str, str] | None = None) -> JSONResponse:
    all_headers = dict(headers or {})
    if exc.retry_after_s is not None:
        all_headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    body = error_body(exc.message, ERROR_TYPES.get(exc.status, "server_error"), exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=all_headers)


def sse_error_event(message: str, code: str = "replica_failed") -> bytes:
    """The SSE event that ends a stream whose worker failed after the first token."""
    payload = error_body(message, "server_error", None, code)
    return f"data: {json.dumps(payload)}\n\n".encode()
