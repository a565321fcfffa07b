"""pdserve: a disaggregated prefill/decode serving orchestrator for LLMs, with vLLM as its engine."""

__version__ = "0.1.0"
