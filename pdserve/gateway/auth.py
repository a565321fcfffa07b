"""API keys (`PDSERVE_API_KEYS`, Bearer on /v1/*) and the admin token (`PDSERVE_ADMIN_TOKEN`).

`PDSERVE_API_KEYS` is a comma-separated list of `key` or `key:priority`; a key's priority orders
its requests in the pool hold queues (higher first, lowest shed first). Unset: no auth.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from pdserve.gateway.errors import OpenAIError

PRIORITY_HEADER = "x-pdserve-priority"


@dataclass(frozen=True)
class AuthConfig:
    api_keys: dict[str, int] = field(default_factory=dict)  # key -> priority
    admin_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthConfig:
        keys: dict[str, int] = {}
        for item in env.get("PDSERVE_API_KEYS", "").split(","):
            key, _, priority = item.strip().partition(":")
            if key:
                keys[key] = int(priority) if priority.strip().lstrip("-").isdigit() else 0
        return cls(keys, env.get("PDSERVE_ADMIN_TOKEN") or None)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def client_priority(auth: AuthConfig, authorization: str | None, header: str | None) -> int:
    """Check the API key; the request's priority: the key's, or (no keys) the header's."""
    priority = 0
    if auth.api_keys:
        token = _bearer(authorization)
        if token is None:
            raise OpenAIError(
                401, "missing API key: send Authorization: Bearer <key>", "no_api_key"
            )
        match = next((k for k in auth.api_keys if hmac.compare_digest(k, token)), None)
        if match is None:
            raise OpenAIError(401, "invalid API key", "invalid_api_key")
        return auth.api_keys[match]
    if header is not None:
        try:
            priority = int(header)
        except ValueError:
            raise OpenAIError(
                400, f"{PRIORITY_HEADER} must be an integer", "invalid_value"
            ) from None
    return priority


def check_admin(auth: AuthConfig, authorization: str | None) -> None:
    if auth.admin_token is None:
        return
    token = _bearer(authorization)
    if token is None or not hmac.compare_digest(token, auth.admin_token):
        raise OpenAIError(
            401, "admin token required: Authorization: Bearer <token>", "unauthorized"
        )
