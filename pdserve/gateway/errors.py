"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the gateway itself answers, in OpenAI's shape (the OpenAPI schema's)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail = Field(description="What went wrong, as OpenAI reports it.")


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


def carries_error_event(chunk: bytes) -> bool:
    """Whether a relayed SSE chunk holds an error event (`data: {"error": ...}`): how vLLM
    ends a stream it cannot finish (its engine died, a KV load failed under policy `fail`)."""
    return b'data: {"error"' in chunk


def worker_error(status: int, content: bytes) -> bytes:
    """A worker's error answer in OpenAI's shape: vLLM writes `code` as the HTTP status (an
    integer) and `type` as its exception's name; the message and param are kept."""
    try:
        detail = json.loads(content).get("error")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, dict):
        detail = {"message": content.decode("utf-8", "replace")[:2000] or f"worker: {status}"}
    code, param = detail.get("code"), detail.get("param")
    body = error_body(
        str(detail.get("message", "")),
        ERROR_TYPES.get(status, "server_error"),
        param if isinstance(param, str) else None,
        None if code is None or isinstance(code, int) else str(code),
    )
    return json.dumps(body).encode()
