"""The LLM kernel library, written once in the DSL for every backend."""
