"""API keys and the admin token, as units: every key compared in constant time, and which
bind addresses leave the admin API open without a token."""

from __future__ import annotations

import pytest

from pdserve.gateway import auth

pytestmark = pytest.mark.unit

KEYS = "sec-key,other-key:5,third-key"


@pytest.mark.parametrize("token", ["sec-key", "third-key", "wrong-key", "sec-ke", ""])
def test_every_key_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """Every configured key goes through hmac.compare_digest, whichever matches (no early
    exit, no `==`, no dict lookup by the presented token)."""
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    config = auth.AuthConfig.from_env({"PDSERVE_API_KEYS": KEYS})
    try:
        auth.client_priority(config, f"Bearer {token}", None)
    except auth.OpenAIError as exc:
        assert exc.status == 401
    assert sorted(a for a, _ in compared) == sorted(k.encode() for k in config.api_keys)
    assert {b for _, b in compared} == {token.encode()}


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.1.2.3", False),
        ("gateway.example", False),
    ],
)
def test_which_binds_are_loopback(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback
    closed = auth.AuthConfig.from_env({}, host)
    if loopback:
        auth.check_admin(closed, None)
    else:
        with pytest.raises(auth.OpenAIError):
            auth.check_admin(closed, None)
