"""`tt.LLM`: load a model on a device and generate text, streamed or whole.

A thin synchronous front of the engine: each call submits one request and steps the engine in
the caller's thread until it is done. The engine's prefix cache keeps the KV pages of earlier
calls, so a prompt that starts like an earlier one (a chat's history) only computes the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tattletale.kernels.sampling import SamplingParams

from .core import load_engine
from .request import ContextOverflow, Output, Request

__all__ = ["LLM", "ContextOverflow", "Generation", "Stats"]


@dataclass
class Stats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tps(self) -> float:
        computed = self.prompt_tokens - self.reused_tokens
        return computed / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = self.generated_tokens - 1  # the first token comes out of the prefill
        return n / self.decode_s if self.decode_s > 0 and n > 0 else 0.0


@dataclass
class Generation:
    text: str
    ids: list[int]
    finish_reason: str  # "stop" | "length"
    stats: Stats = field(default_factory=Stats)


class LLM:
    """A model loaded on a device.

    >>> llm = tt.LLM()                    # the bundled SmolLM2-135M-Instruct, fastest device
    >>> llm.generate("The capital of France is", max_tokens=8, temperature=0).text

    Engine options (kv_memory, page_size, max_batch_tokens, prefix_cache, graphs, …) pass through.
    """

    def __init__(self, model: str | None = None, backend: str | None = None, device_index: int = 0,
                 max_context: int | None = None, progress: bool = False, **options):
        self.engine = load_engine(model, backend, device_index=device_index, progress=progress,
                                  max_context=max_context, **options)
        self.path = self.engine.path
        self.device = self.engine.model.dev
        self.tokenizer = self.engine.tokenizer
        self.template = self.engine.template
        self.config = self.engine.config
        self.max_context = self.engine.max_context
        self.stats = Stats()
        self.last_ids: list[int] = []
        self.finish_reason = ""

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template."""
        return self.engine.chat_prompt(messages)

    def check_fits(self, ids: list[int]) -> None:
        """Raise ContextOverflow unless the prompt leaves room for one generated token."""
        self.engine.check_fits(len(ids))

    def stream(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int | None = None,
               repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, stop: list[str] | None = None,
               stop_token_ids: list[int] | None = None, ignore_eos: bool = False) -> Iterator[str]:
        """Yield text pieces as tokens are generated. Afterwards, even when the caller stops early
        (close(), an exception, Ctrl-C), `self.stats`, `self.last_ids` and `self.finish_reason`
        describe the run."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        self.check_fits(ids)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty,
                                  frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                  seed=seed if seed is not None else int(np.random.randint(2**31)))
        request = Request(ids, sampling, max_tokens, list(stop or []), list(stop_token_ids or []),
                          ignore_eos)
        outputs: list[Output] = []
        stats = self.stats = Stats(prompt_tokens=len(ids))
        generated = self.last_ids = []
        self.finish_reason = "interrupted"
        engine = self.engine
        engine.submit(request, outputs.append)
        t0 = time.perf_counter()
        done = False
        try:
            while not done:
                engine.step()
                for out in outputs:
                    if out.token_ids and not stats.generated_tokens:
                        stats.prefill_s = time.perf_counter() - t0
                        stats.reused_tokens = out.cached_tokens
                        t0 = time.perf_counter()
                    generated += out.token_ids
                    stats.generated_tokens = len(generated)
                    if out.finished:
                        done = True
                        self.finish_reason = out.finish_reason
                        if out.error:
                            raise RuntimeError(out.error)
                    if out.text:
                        yield out.text
                outputs.clear()
        finally:  # also on close() and exceptions (Ctrl-C): end the request, keep the stats true
            if not done:
                engine.cancel(request.request_id)
                engine.step()
            if stats.generated_tokens:
                stats.decode_s = time.perf_counter() - t0
            else:
                stats.prefill_s = time.perf_counter() - t0

    def generate(self, prompt: str | list[int], **kwargs) -> Generation:
        text = "".join(self.stream(prompt, **kwargs))
        return Generation(text, self.last_ids, self.finish_reason, self.stats)
