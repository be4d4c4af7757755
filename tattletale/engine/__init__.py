"""Generation engines: single-sequence `LLM` now; continuous batching next."""
