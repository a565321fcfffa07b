"""A profile's trace collector reaches its vLLM workers as `--otlp-traces-endpoint` (vLLM's own
request spans), checked by vLLM's server parser; without one the flag is left out."""

from __future__ import annotations

import pytest

from pdserve import profile as profiles
from pdserve.workers.vllm_command import WorkerSpec, vllm_command
from tests.support.vllm_parser import vllm_server_parser

pytestmark = pytest.mark.unit


def _argv(gateway: dict[str, object]) -> list[str]:
    profile = profiles.load("disaggregated").model_copy(deep=True)
    profile.gateway = profile.gateway.model_copy(update=gateway)
    spec = WorkerSpec.from_profile(profile, "decode", port=8100, side_channel_port=5600)
    return vllm_command(spec).argv


def test_the_collector_goes_to_every_worker() -> None:
    argv = _argv({"otlp_traces_endpoint": "http://otel-collector:4317"})
    parsed = vllm_server_parser()(argv[3:])
    assert parsed.otlp_traces_endpoint == "http://otel-collector:4317"


def test_no_collector_no_flag() -> None:
    assert "--otlp-traces-endpoint" not in _argv({})
