"""pdserve: disaggregated prefill/decode serving for LLMs, with vLLM as its engine."""

__version__ = "0.1.0"
