"""Workers: the seeded checkpoints, composing and running vLLM servers, the simulated worker."""
