"""API keys and the priorities they carry."""

from __future__ import annotations

import pytest

from pdserve.gateway.auth import AuthConfig, client_priority
from pdserve.gateway.errors import OpenAIError

pytestmark = pytest.mark.unit


def test_api_keys_and_priorities() -> None:
    auth = AuthConfig.from_env({"PDSERVE_API_KEYS": "alpha:5, beta", "PDSERVE_ADMIN_TOKEN": "t"})
    assert auth.api_keys == {"alpha": 5, "beta": 0}
    assert client_priority(auth, "Bearer alpha", None) == 5
    assert client_priority(auth, "Bearer beta", "9") == 0  # with keys, the key decides
    for header in (None, "Bearer wrong", "Basic alpha"):
        with pytest.raises(OpenAIError) as caught:
            client_priority(auth, header, None)
        assert caught.value.status == 401
    open_auth = AuthConfig.from_env({})
    assert client_priority(open_auth, None, "7") == 7
