"""API keys (`PDSERVE_API_KEYS`, Bearer on /v1/*) and the admin token (`PDSERVE_ADMIN_TOKEN`).

`PDSERVE_API_KEYS` is a comma-separated list of `key` or `key:priority`; a key's priority orders
its requests in the pool hold queues (higher first, lowest shed first). Unset: no auth.

The admin API is open without a token only on a gateway bound to a loopback address; bound to
any other address it answers 401 until `PDSERVE_ADMIN_TOKEN` is set. Keys and tokens are
compared as bytes in constant time, every configured key each time, so neither the time taken
nor a non-ASCII header tells a client anything about them.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pdserve.gateway.errors import OpenAIError

PRIORITY_HEADER = "x-pdserve-priority"


@dataclass(frozen=True)
class AuthConfig:
    api_keys: dict[str, int] = field(default_factory=dict)  # key -> priority
    admin_token: str | None = None
    admin_open: bool = True  # no token needed: the gateway listens on loopback only

    @classmethod
    def from_env(cls, env: Mapping[str, str], bind_host: str = "127.0.0.1") -> AuthConfig:
        keys: dict[str, int] = {}
        for item in env.get("PDSERVE_API_KEYS", "").split(","):
            key, _, priority = item.strip().partition(":")
            if key:
                keys[key] = int(priority) if priority.strip().lstrip("-").isdigit() else 0
        return cls(keys, env.get("PDSERVE_ADMIN_TOKEN") or None, is_loopback(bind_host))


def is_loopback(host: str) -> bool:
    """A bind address only this machine can reach (`""` and `0.0.0.0` are every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume others can reach it


def _secret(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def matching_secret(secrets: Iterable[str], presented: str) -> str | None:
    """The secret equal to `presented`, comparing with every one of them in constant time."""
    given = _secret(presented)
    found = None
    for secret in secrets:
        if hmac.compare_digest(_secret(secret), given):
            found = secret
    return found


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
        match = matching_secret(auth.api_keys, token)
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
        if auth.admin_open:
            return
        raise OpenAIError(
            401,
            "the admin API is closed: the gateway listens on a non-loopback address and "
            "PDSERVE_ADMIN_TOKEN is unset; set it and send Authorization: Bearer <token>",
            "admin_token_unset",
        )
    token = _bearer(authorization)
    if token is None or matching_secret([auth.admin_token], token) is None:
        raise OpenAIError(
            401, "admin token required: Authorization: Bearer <token>", "unauthorized"
        )
