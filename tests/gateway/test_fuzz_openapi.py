"""Property-based fuzzing of a real gateway (`pdserve up`, both routes over simulated workers)
from its own OpenAPI document: bodies generated from the documented request schemas (valid,
mutated, arbitrary JSON, raw bytes), in several text encodings, framed by Content-Length or
chunked, with generated auth, request-id, priority and deadline headers, on every documented
operation and on paths and methods it does not have. Never a 5xx, never down; every error in
OpenAI's shape with a documented status; every success valid against the documented schema
(SSE events too). `PDSERVE_FUZZ_EXAMPLES` sets the count (default 1000, about a minute here)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdserve.gateway.openapi import PROFILE_NAME_PATTERN
from pdserve.stack import Stack, stack
from tests.support import PROFILES

EXAMPLES = int(os.environ.get("PDSERVE_FUZZ_EXAMPLES", "1000"))
KEY, ADMIN = "fuzz-key", "fuzz-admin"
LONG = "Sphinx of black quartz, judge my vow. " * 3  # over the 64-token threshold: P/D


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("fuzz")
    data = yaml.safe_load((PROFILES / "gw-disaggregated.yaml").read_text())
    data["model"]["max_model_len"] = 256  # long completions are cut short: a fast fuzz
    data["engine"]["sim_time_scale"] = 100
    data["gateway"].update({"max_body_bytes": 16384, "body_timeout_s": 5, "queue_timeout_s": 10})
    path = directory / "gw-fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {"PDSERVE_API_KEYS": KEY, "PDSERVE_ADMIN_TOKEN": ADMIN}
    with stack(path, env=env, log_dir=directory) as running:
        yield running


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema that resolves the document's `#/components/...` references on its own."""
    return {**schema, "components": document["components"]}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def _body_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    media = content.get("application/json")
    return media["schema"] if media else None


def _valid_body(document: dict[str, Any], path: str, schema: dict[str, Any]) -> st.SearchStrategy:
    if path == "/admin/profile":  # never a real switch: names no profile has
        return st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True).map(
            lambda n: {"name": f"fuzz-{n}"}
        )
    generated = from_schema(document, schema)
    if path.startswith("/v1/"):  # often the served model, either route, streamed or not
        prompt = st.sampled_from(["hi", LONG])
        if path.endswith("chat/completions"):
            text = prompt.map(lambda p: {"messages": [{"role": "user", "content": p}]})
        else:
            text = prompt.map(lambda p: {"prompt": p})
        served = st.tuples(
            text,
            st.fixed_dictionaries(
                {
                    "model": st.just("tiny"),
                    "stream": st.sampled_from([True, True, False]),
                    "max_tokens": st.integers(1, 16),
                }
            ),
        ).map(lambda p: {**p[0], **p[1]})
        merged = st.tuples(generated, served).map(lambda p: {**p[0], **p[1]})
        return st.one_of(generated, served, merged)
    return generated


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if integer:
        low = None if low is None else int(low) + ("exclusiveMinimum" in schema)
        high = None if high is None else int(high) - ("exclusiveMaximum" in schema)
        near = -8 if low is None else low  # values near the low bound: the usual ones
        small = st.integers(near, near + 300 if high is None else min(high, near + 300))
        return st.one_of(st.integers(low, high), small)
    return st.floats(
        low,
        high,
        allow_nan=False,
        allow_infinity=False,
        exclude_min="exclusiveMinimum" in schema,
        exclude_max="exclusiveMaximum" in schema,
    )


def from_schema(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid against a JSON Schema of the OpenAPI document (the keywords it uses).
    Written here: hypothesis-jsonschema 0.23 calls Hypothesis internals this Hypothesis lacks."""
    schema = _resolve(document, schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return st.one_of([from_schema(document, s) for s in schema[combinator]])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {name: from_schema(document, sub) for name, sub in properties.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "array":
        items = from_schema(document, schema.get("items", {}))
        low = schema.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 4), 4)))
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"])
        return st.text(min_size=schema.get("minLength", 0), max_size=40)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON_VALUES


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


def _mutated(body: st.SearchStrategy) -> st.SearchStrategy:
    """A generated body with one key dropped or given a value of any JSON type."""

    def mutate(pair: tuple[Any, Any, Any]) -> Any:
        value, index, replacement = pair
        if not isinstance(value, dict) or not value:
            return replacement
        key = sorted(value)[index % len(value)]
        changed = dict(value)
        if index % 2:
            changed.pop(key)
        else:
            changed[key] = replacement
        return changed

    return st.tuples(body, st.integers(0, 50), JSON_VALUES).map(mutate)


@st.composite
def _requests(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    operations = _operations(document)
    method, path, operation = draw(st.sampled_from(operations))
    schema = _body_schema(operation)
    if schema is not None:
        valid = _valid_body(document, path, schema)
        body = draw(st.one_of(valid, valid, _mutated(valid), JSON_VALUES))
    else:
        body = draw(st.one_of(st.none(), JSON_VALUES))
    if draw(st.integers(0, 19)) == 0:  # a path or a method the gateway does not have
        path = draw(st.sampled_from([path, "/v1/embeddings", "/admin/x", "/v1/../admin/pools"]))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    return {
        "method": method,
        "path": path,
        "body": body,
        "raw": draw(st.one_of(st.none(), st.binary(max_size=64))),
        "encoding": draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32", "latin-1"])),
        "chunked": draw(st.booleans()),
        "content_type": draw(
            st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-16"])
        ),
        "headers": draw(_headers(path)),
    }


def _headers(path: str) -> st.SearchStrategy[dict[str, str]]:
    secret = ADMIN if path.startswith("/admin") else KEY
    authorization = st.one_of(
        st.just(f"Bearer {secret}"),
        st.just(f"Bearer {secret}"),
        st.just(f"Bearer {secret}"),
        st.just(f"Bearer {secret}"),
        HEADER_TEXT,
        HEADER_TEXT.map(lambda t: f"Bearer {t}"),
    )
    optional = {
        "x-request-id": HEADER_TEXT,
        "x-pdserve-priority": st.one_of(st.integers(-5, 5).map(str), HEADER_TEXT),
        "x-pdserve-deadline-s": st.one_of(st.floats(0.01, 60).map(str), HEADER_TEXT),
    }
    return st.fixed_dictionaries({"authorization": authorization}, optional=optional)


def _content(request: dict[str, Any]) -> bytes | Iterator[bytes] | None:
    if request["method"] in ("GET", "DELETE") and request["raw"] is None:
        return None
    if request["raw"] is not None:
        data: bytes = request["raw"]
    else:
        data = json.dumps(request["body"]).encode(request["encoding"], errors="replace")
    if request["chunked"]:
        return iter([data[: len(data) // 2], data[len(data) // 2 :]])
    return data


class Checker:
    """Checks one answer against the gateway's OpenAPI document; counts what it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: Counter[str] = Counter()

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        jsonschema.validate(instance, _schema(self.document, schema))

    def documented(self, method: str, path: str) -> dict[str, Any] | None:
        operation = self.document["paths"].get(path, {}).get(method.lower())
        return operation if isinstance(operation, dict) else None

    def check(self, request: dict[str, Any], response: httpx.Response) -> None:
        status = response.status_code
        self.seen[str(status)] += 1
        assert status < 500, (request, status, response.text[:500])
        operation = self.documented(request["method"], request["path"])
        documented = operation["responses"] if operation else {}
        if status >= 400:
            error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
            self.validate(response.json(), error_schema)
            assert operation is None or str(status) in documented, (request, status)
            return
        assert operation is not None, (request, status)
        assert str(status) in documented, (request, status, sorted(documented))
        self.check_success(documented[str(status)], response)

    def check_success(self, documented: dict[str, Any], response: httpx.Response) -> None:
        media = response.headers.get("content-type", "").split(";")[0]
        content = documented.get("content", {})
        if media == "text/event-stream":
            self.seen["sse"] += 1
            event_schema = content["text/event-stream"]["x-pdserve-event"]
            events = [ln[6:] for ln in response.text.splitlines() if ln.startswith("data: ")]
            if events[-1] != "[DONE]":  # a worker failed mid-stream: the error event ends it
                last = json.loads(events[-1])
                self.validate(last["error"], {"$ref": "#/components/schemas/ErrorDetail"})
                self.seen["sse_error_event"] += 1
                events.append("[DONE]")
            for event in events[:-1]:
                self.validate(json.loads(event), event_schema)
        elif media == "application/json" and "application/json" in content:
            schema = content["application/json"]["schema"]
            if schema:
                self.validate(response.json(), schema)


@pytest.mark.integration
def test_generated_requests_never_break_the_gateway(
    gateway: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=60) as client:
        document = client.get("/openapi.json").json()
        checker = Checker(document)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(_requests(document))
        def one(request: dict[str, Any]) -> None:
            fields = {**request["headers"], "content-type": request["content_type"]}
            # as bytes: latin-1 is HTTP's own; h11 refuses a value's outer whitespace
            headers = [(k.encode(), v.strip(" \t").encode("latin-1")) for k, v in fields.items()]
            response = client.request(
                request["method"], request["path"], content=_content(request), headers=headers
            )
            checker.check(request, response)

        one()
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
    assert gateway.process.poll() is None  # still serving
    total = sum(v for k, v in checker.seen.items() if k.isdigit())
    with capsys.disabled():
        print(f"\nfuzz: {total} generated requests, by status {dict(sorted(checker.seen.items()))}")
    assert total >= EXAMPLES
    assert checker.seen["200"] > 0 and checker.seen["sse"] > 0  # the happy paths were reached


@pytest.mark.unit
def test_the_document_declares_bodies_streams_and_openai_errors() -> None:
    from pdserve import profile as profiles
    from pdserve.gateway.app import create_app

    app = create_app(profiles.load(str(PROFILES / "gw-standard.yaml")), env={})
    document = app.openapi()
    jsonschema.Draft202012Validator.check_schema(_schema(document, {}))
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for method, path, operation in _operations(document):
        if path.startswith(("/v1/", "/admin/")):
            assert "401" in operation["responses"], (method, path)
        for status, answer in operation["responses"].items():
            if status.startswith("4") or status.startswith("5"):
                assert answer["content"]["application/json"]["schema"] == error, (path, status)
    for path, body in [("/v1/completions", "CompletionBody"), ("/v1/chat/completions", "ChatBody")]:
        post = document["paths"][path]["post"]
        assert _body_schema(post) == {"$ref": f"#/components/schemas/{body}"}
        assert "x-pdserve-event" in post["responses"]["200"]["content"]["text/event-stream"]
        assert {"400", "401", "404", "413", "429", "503"} <= set(post["responses"])
    put = document["paths"]["/admin/profile"]["put"]
    assert "oneOf" in _body_schema(put)
    name = _resolve(document, {"$ref": "#/components/schemas/ProfileByName"})
    assert name["properties"]["name"]["pattern"] == PROFILE_NAME_PATTERN
