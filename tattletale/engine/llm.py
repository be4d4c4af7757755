"""`tt.LLM`: load a model on a device and generate text, streamed or whole.

One sequence at a time, with its KV cache kept between calls: a new prompt that starts with the
tokens already in the cache (a chat's history) only computes the new part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

import tattletale as tt
from tattletale.kernels.sampling import SamplingParams, sample
from tattletale.models import open_model, resolve
from tattletale.models.llama import DecodeGraph, LlamaModel
from tattletale.models.tokenizer import render_chat


def _find_stop(text: str, stop: list[str], start: int) -> int:
    """Where the first stop string in text[start:] begins, or -1."""
    hits = [i for i in (text.find(s, start) for s in stop if s) if i >= 0]
    return min(hits, default=-1)


def _stop_prefix(text: str, stop: list[str]) -> int:
    """The length of the longest end of text that is the beginning of a stop string."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)


class ContextOverflow(ValueError):
    """The prompt (plus at least one generated token) does not fit in the context."""


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
    """

    def __init__(self, model: str | None = None, backend: str | None = None, device_index: int = 0,
                 max_context: int | None = None, progress: bool = False):
        self.path = resolve(model)
        self.file = open_model(self.path)
        self.device = tt.device(backend, device_index) if backend else tt.device()
        self.tokenizer = self.file.tokenizer()
        self.template = self.file.chat_template()
        self.model = LlamaModel(self.device, self.file, progress=progress)
        self.config = self.model.cfg
        self.max_context = min(max_context or self.config.max_positions, self.config.max_positions)
        self.cache = self.model.new_cache(self.max_context)
        self.cached_ids: list[int] = []  # the tokens whose K/V the cache holds
        eos = set(self.config.eos_token_ids)
        for name in (self.tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            tid = self.tokenizer.token_id(name)
            if tid is not None and name in (self.tokenizer.eos_token, "<|im_end|>", "<|eot_id|>"):
                eos.add(tid)
        self.eos_ids = eos
        self.stats = Stats()
        # TT_GRAPHS=0 launches every decode step's kernels one by one (for debugging)
        self.use_graphs = os.environ.get("TT_GRAPHS", "1") != "0"
        self._graph: DecodeGraph | None = None

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template."""
        if not self.template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        else:
            text = render_chat(self.template, messages, self.tokenizer)
        return self.tokenizer.encode(text, add_special=not self.template)

    def check_fits(self, ids: list[int]) -> None:
        """Raise ContextOverflow unless the prompt leaves room for one generated token (the CLI
        checks this before any computation; stream() checks again)."""
        if len(ids) + 1 > self.max_context:
            limit = self.config.max_positions
            more = f"; the model allows up to {limit}" if self.max_context < limit else ""
            raise ContextOverflow(f"the prompt has {len(ids)} tokens, but the context holds "
                                  f"{self.max_context} (prompt and answer together){more}")

    def stream(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int | None = None,
               repetition_penalty: float = 1.0, stop: list[str] | None = None,
               ignore_eos: bool = False) -> Iterator[str]:
        """Yield text pieces as tokens are generated. Afterwards, even when the caller stops early
        (close(), an exception, Ctrl-C), `self.stats`, `self.last_ids` and `self.finish_reason`
        describe the run, and `cached_ids` lists exactly the tokens whose K/V the cache holds."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        self.check_fits(ids)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty,
                                seed=seed if seed is not None else int(np.random.randint(2**31)))
        stats = self.stats = Stats(prompt_tokens=len(ids))
        generated: list[int] = []
        self.last_ids, self.finish_reason = generated, "interrupted"
        # re-use the cached prefix (at least one prompt token must run to produce logits)
        common = 0
        for a, b in zip(self.cached_ids, ids[:-1]):
            if a != b:
                break
            common += 1
        self.cache.length = common
        self.cached_ids = self.cached_ids[:common]
        stats.reused_tokens = common
        t0 = time.perf_counter()
        try:
            logits = self.model.forward(ids[common:], self.cache)
            self.cached_ids = list(ids)
            decoder = self.tokenizer.stream()
            text, emitted, cut = "", 0, -1  # emitted: characters of text yielded so far
            finish = "length"
            # Decode steps replay one recorded launch sequence, sampling included; penalties need
            # the host-side token history, so they take the step-by-step path.
            graph = None
            if repetition_penalty == 1.0 and self.use_graphs:
                if self._graph is None:  # recorded once, re-used by every later call
                    self._graph = DecodeGraph(self.model, self.cache, params)
                else:
                    self._graph.set_params(params)
                graph = self._graph
            token = -1
            for step in range(max_tokens):
                if step == 0 or graph is None:
                    history = ids + generated if repetition_penalty != 1.0 else None
                    token = int(sample(logits, [params], [len(self.cached_ids) - 1],
                                       [history] if history else None)[0])
                else:
                    token = graph.step(token)  # runs the previous token, samples the next
                    self.cached_ids.append(generated[-1])
                if step == 0:
                    stats.prefill_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                generated.append(token)
                stats.generated_tokens = len(generated)
                if token in self.eos_ids and not ignore_eos:
                    finish = "stop"
                    break
                text += decoder.push(token)
                # a stop string may span tokens: text that could begin one is held back
                cut = _find_stop(text, stop, emitted) if stop else -1
                end = cut if cut >= 0 else len(text) - (_stop_prefix(text, stop) if stop else 0)
                if end > emitted:
                    yield text[emitted:end]
                    emitted = end
                if cut >= 0:
                    finish = "stop"
                    break
                if step + 1 == max_tokens or len(self.cached_ids) + 1 >= self.max_context:
                    break
                if graph is None:
                    logits = self.model.forward([token], self.cache)
                    self.cached_ids.append(token)
            if cut < 0 and emitted < len(text):  # held back, but no stop string came
                yield text[emitted:]
            self.finish_reason = finish
        finally:  # also on close() and exceptions (Ctrl-C): the stats describe what ran
            if stats.generated_tokens:
                stats.decode_s = time.perf_counter() - t0
            else:
                stats.prefill_s = time.perf_counter() - t0

    def generate(self, prompt: str | list[int], **kwargs) -> Generation:
        text = "".join(self.stream(prompt, **kwargs))
        return Generation(text, self.last_ids, self.finish_reason, self.stats)
