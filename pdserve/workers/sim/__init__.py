"""The simulated vLLM-compatible worker: same API, metrics and P/D protocol as vLLM, a timing
model instead of a GPU, and injectable faults. A test and benchmark tool, never the default."""
