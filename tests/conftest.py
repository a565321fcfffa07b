"""Shared test configuration: tiers are markers; the gpu tier skips cleanly without CUDA."""

from __future__ import annotations

import pytest

# Shared fixtures, available to every folder: the real-vLLM `cluster` (and `pd`, `tiny_model`)
# and the in-process `gateway_server`.
pytest_plugins = ["tests.support.vllm_cluster", "tests.support.gateway_server"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="gpu tier: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
