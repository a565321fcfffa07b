"""`pdserve up` beyond loopback: the admin API needs a token there (gateway.auth), so `up` makes
one for the run when none is set and its own readiness poll and banner use it; on loopback, or
with a token set, nothing is made. (A test server binds 127.0.0.1 only, so the bind is given to
the function, not to a server.)"""

from __future__ import annotations

import pytest

from pdserve.gateway.auth import AuthConfig, check_admin
from pdserve.gateway.errors import OpenAIError
from pdserve.up import admin_token

pytestmark = pytest.mark.unit


def test_a_token_is_made_for_a_non_loopback_bind_without_one() -> None:
    token, generated = admin_token("0.0.0.0", {})
    assert generated and token is not None and len(token) >= 24
    other, _ = admin_token("0.0.0.0", {})
    assert other != token  # fresh per run, never a fixed default
    # the app made after it (reading the environment `serve` sets) opens its admin API to it
    auth = AuthConfig.from_env({"PDSERVE_ADMIN_TOKEN": token}, "0.0.0.0")
    check_admin(auth, f"Bearer {token}")
    with pytest.raises(OpenAIError):
        check_admin(auth, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_none(host: str) -> None:
    assert admin_token(host, {}) == (None, False)


def test_a_token_set_by_the_operator_is_kept() -> None:
    assert admin_token("0.0.0.0", {"PDSERVE_ADMIN_TOKEN": "mine"}) == ("mine", False)
    assert admin_token("127.0.0.1", {"PDSERVE_ADMIN_TOKEN": "mine"}) == ("mine", False)
