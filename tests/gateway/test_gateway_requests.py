"""Request body validation: a bad body is a 400 naming the parameter; unknown fields pass."""

from __future__ import annotations

import pytest

from pdserve.gateway.errors import OpenAIError
from pdserve.gateway.requests import parse_body

pytestmark = pytest.mark.unit


BAD_BODIES = [
    (b"{not json", False, None),
    (b"[1, 2]", False, None),
    (b'{"model": "tiny"}', False, "prompt"),
    (b'{"model": 3, "prompt": "x"}', False, "model"),
    (b'{"model": "tiny", "prompt": "x", "max_tokens": -1}', False, "max_tokens"),
    (b'{"model": "tiny", "prompt": "x", "max_tokens": "10"}', False, "max_tokens"),
    (b'{"model": "tiny", "prompt": "x", "temperature": 3}', False, "temperature"),
    (b'{"model": "tiny", "prompt": "x", "stream": "yes"}', False, "stream"),
    (b'{"model": "tiny", "messages": []}', True, "messages"),
    (b'{"model": "tiny", "messages": [{"content": "x"}]}', True, "messages.0.role"),
]


@pytest.mark.parametrize(("raw", "chat", "param"), BAD_BODIES)
def test_bad_bodies_are_400_naming_the_parameter(raw: bytes, chat: bool, param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_body(raw, chat)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_good_body_passes_through_unknown_fields() -> None:
    body = parse_body(b'{"model": "tiny", "prompt": [1, 2], "ignore_eos": true}', False)
    assert body["ignore_eos"] is True
