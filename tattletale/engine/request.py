"""What flows into and out of the engine: requests, their sampling settings, and output deltas.

Free of HTTP and of the model: the server translates OpenAI requests into `Request`s, the engine
thread turns them into `Output`s, and `tt.LLM` does the same in the caller's thread.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from tattletale.kernels.sampling import SamplingParams

_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"


@dataclass
class Request:
    """One completion to generate: prompt token ids plus how to sample and when to stop."""

    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (never part of the output text)
    stop_token_ids: list[int] = field(default_factory=list)  # besides the model's end tokens
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k ≥ 0: the chosen token's and the top k alternatives
    request_id: str = field(default_factory=new_request_id)


@dataclass
class TokenLogprob:
    """The chosen token's log-probability (after penalties, before temperature and filtering, as
    OpenAI reports them) and the `top` most likely alternatives as (token id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Output:
    """A step's news for one request: the tokens generated since the last Output and their text.

    `text` can lag `token_ids` (bytes of a character still incomplete, or text that may be the
    start of a stop string is held back); the final Output flushes it. On the final Output
    `finish_reason` is "stop" (an end token or stop string), "length" (max_tokens or the context
    is full) or "abort" (cancelled); `error` is set when the request could not run at all.
    """

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
    error: str | None = None


class ContextOverflow(ValueError):
    """The prompt (plus at least one generated token) does not fit in the context."""


@dataclass
class EngineMetrics:
    """A snapshot of the engine's state and counters (the server exports it as Prometheus metrics)."""

    requests_running: int = 0
    requests_waiting: int = 0
    kv_pages_total: int = 0
    kv_pages_used: int = 0
    kv_pages_free: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, the tokens matched
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    batch_tokens_last: int = 0  # tokens in the last step's batch
    batch_seqs_last: int = 0  # sequences in the last step's batch
    steps_total: int = 0
    requests_finished: int = 0
    prefix_cache_pages: int = 0  # pages held by the prefix cache
    preemptions: int = 0
