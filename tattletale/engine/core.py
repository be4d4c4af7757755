"""The engine: requests in, streamed outputs out, over continuous batching on paged KV memory.

`Engine.step()` runs one scheduled forward pass and turns its sampled tokens into `Output`s
(text deltas with stop strings held back, log-probabilities, finish reasons). It can be driven
in the caller's thread (`tt.LLM`) or by the engine's own thread (`start()`, used by the server),
which blocks on a condition variable while there is nothing to do: an idle engine uses no CPU
and wakes as soon as a request is submitted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tattletale.cache.kv import PagedKV
from tattletale.cache.pages import PagePool, kv_budget
from tattletale.cache.radix import PrefixCache
from tattletale.models.batch import Span
from tattletale.models.llama import LlamaModel
from tattletale.models.tokenizer import Tokenizer, render_chat

from .request import ContextOverflow, EngineMetrics, Output, Request
from .runner import ModelRunner
from .scheduler import Scheduler, Sequence

Sink = Callable[[Output], None]

DEFAULT_PAGE_SIZE = 16  # tokens per KV page: prefixes are shared in whole pages
DEFAULT_KV_DTYPE = "f16"  # K/V are stored rounded to f16 (half the memory); attention computes in f32
DEFAULT_KV_CONTEXTS = 2  # KV budget without kv_memory: this many full contexts (memory allowing)


def find_stop(text: str, stop: list[str], start: int) -> int:
    """Where the first stop string in text[start:] begins, or -1."""
    hits = [i for i in (text.find(s, start) for s in stop if s) if i >= 0]
    return min(hits, default=-1)


def stop_prefix(text: str, stop: list[str]) -> int:
    """The length of the longest end of text that is the beginning of a stop string."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)


@dataclass
class _Stream:
    """A request's output state: where its text stands and what the sink has not seen yet."""

    sink: Sink
    decoder: object
    text: str = ""
    emitted: int = 0  # characters of text delivered
    new_ids: list[int] = field(default_factory=list)
    new_logprobs: list = field(default_factory=list)


class Engine:
    """Continuous batching of requests over one model on one device.

    Without a tokenizer the engine works on token ids alone (Outputs carry no text): for
    benchmarks on random weights.
    """

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer | None, chat_template: str | None = None, *,
                 model_name: str = "model", kv_memory: str | int | float | None = None,
                 page_size: int = DEFAULT_PAGE_SIZE, max_batch_tokens: int = 512, max_seqs: int = 64,
                 max_context: int | None = None, prefix_cache: bool = True,
                 graphs: bool | None = None, eos_ids: set[int] | None = None,
                 kv_dtype: str = DEFAULT_KV_DTYPE):
        cfg = model.cfg
        self.model, self.tokenizer, self.template = model, tokenizer, chat_template
        self.model_name = model_name
        self.path: Path | None = None  # the model file, when loaded by load_engine
        self.config = cfg
        dev = model.dev
        if kv_dtype not in ("f16", "f32"):
            raise ValueError(f"KV cache dtype {kv_dtype!r}: use f16 or f32")
        layout = model.kv_layout(page_size, kv_dtype)
        context = min(max_context or cfg.max_positions, cfg.max_positions)
        free = dev.free_memory()
        if free is None:  # a CPU device: the host's memory
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if kv_memory is None:
            budget = min(DEFAULT_KV_CONTEXTS * max(context, 512) * layout.bytes_per_token, free // 2)
        else:
            budget = kv_budget(kv_memory, free)
        n_pages = layout.pages_in(budget)
        if n_pages < 2:
            raise ValueError(f"the KV memory budget ({budget} bytes) holds fewer than 2 pages of "
                             f"{layout.bytes_per_page} bytes")
        self.max_context = min(context, n_pages * page_size)
        self.kv = PagedKV(dev, layout, n_pages, kv_dtype)
        self.pool = PagePool(n_pages, page_size, layout.bytes_per_page)
        self.prefix_cache = PrefixCache(self.pool) if prefix_cache else None
        self.scheduler = Scheduler(self.pool, self.prefix_cache, max_batch_tokens, max_seqs)
        self.runner = ModelRunner(model, self.kv, max_batch_tokens, max_seqs, self.max_context, graphs)
        self.eos_ids = set(eos_ids or ())
        self._metrics = EngineMetrics(kv_pages_total=n_pages)
        self._cond = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: set[str] = set()
        self._by_id: dict[str, Sequence] = {}
        self._thread: threading.Thread | None = None
        self._accepting = True
        self._stopping = False

    # ---- requests ----

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (sandboxed)."""
        if not self.template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        else:
            text = render_chat(self.template, messages, self.tokenizer)
        return self.tokenizer.encode(text, add_special=not self.template)

    def check_fits(self, n_prompt: int) -> None:
        """ContextOverflow unless a prompt of n_prompt tokens leaves room for one more."""
        if n_prompt + 1 > self.max_context:
            limit = self.config.max_positions
            more = f"; the model allows up to {limit}" if self.max_context < limit else ""
            raise ContextOverflow(f"the prompt has {n_prompt} tokens, but the context holds "
                                  f"{self.max_context} (prompt and answer together){more}")

    def submit(self, request: Request, sink: Sink) -> None:
        """Queue a request; `sink` receives its Outputs (from the thread running the engine)."""
        if not request.prompt_ids:
            raise ValueError("empty prompt")
        self.check_fits(len(request.prompt_ids))
        if not self._accepting:
            raise RuntimeError("the engine is shutting down")
        seq = Sequence(request, list(request.prompt_ids), len(request.prompt_ids))
        seq.output = _Stream(sink, self.tokenizer.stream() if self.tokenizer else None)
        with self._cond:
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, request_id: str) -> None:
        """End a request at the next step (finish_reason "abort"); unknown ids are ignored."""
        with self._cond:
            self._cancels.add(request_id)
            self._cond.notify()

    # ---- stepping ----

    def has_work(self) -> bool:
        return bool(self._inbox or self._cancels or self.scheduler.has_work())

    def step(self) -> bool:
        """Run one step; False when there was nothing to do."""
        with self._cond:
            inbox, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, set()
        for seq in inbox:
            self._by_id[seq.request.request_id] = seq
            self.scheduler.add(seq)
        for rid in cancels:
            seq = self._by_id.get(rid)
            if seq is not None:
                self._finish(seq, "abort")
        if not self.scheduler.has_work():
            return False
        plan = self.scheduler.schedule()
        for seq in plan.out_of_memory:
            self._finish(seq, "length")
        if not plan.spans:
            return True
        self.kv.copy_pages(plan.copies)
        spans, sampled = [], []
        for s in plan.spans:
            seq = s.seq
            span = Span(seq.tokens[s.start:s.start + s.n], s.start, seq.table.pages,
                        "last" if s.samples else "none", seq.request.sampling, seq.n_generated)
            spans.append(span)
            if s.samples:
                sampled.append(seq)
        tokens, lps = self.runner.execute(
            spans, [seq.tokens for seq in sampled], [seq.request.logprobs for seq in sampled])
        m = self._metrics
        m.steps_total += 1
        m.batch_tokens_last = sum(s.n for s in plan.spans)
        m.batch_seqs_last = len(plan.spans)
        for s in plan.spans:
            s.seq.n_computed += s.n
            if s.start < s.seq.n_prompt <= s.seq.n_computed:  # the prompt is now computed: share it
                self.scheduler.offer(s.seq)
            if not s.samples:
                m.prompt_tokens_total += s.n
            else:
                m.prompt_tokens_total += max(0, s.n - 1)
        for seq, token, lp in zip(sampled, tokens, lps):
            self._accept(seq, token, lp)
        return True

    def _accept(self, seq: Sequence, token: int, lp) -> None:
        """Append a sampled token; deliver the text it completes; finish on a stop condition."""
        req, st = seq.request, seq.output
        seq.tokens.append(token)
        self._metrics.generation_tokens_total += 1
        st.new_ids.append(token)
        if lp is not None:
            st.new_logprobs.append(lp)
        finish = None
        if (token in self.eos_ids and not req.ignore_eos) or token in req.stop_token_ids:
            finish = "stop"
        elif st.decoder is not None:
            st.text += st.decoder.push(token)
            cut = find_stop(st.text, req.stop, st.emitted) if req.stop else -1
            if cut >= 0:
                st.text, finish = st.text[:cut], "stop"
        if finish is None and (seq.n_generated >= req.max_tokens or len(seq.tokens) >= self.max_context):
            finish = "length"
        if finish is not None:
            self._finish(seq, finish)
        else:
            self._deliver(seq, held=stop_prefix(st.text, req.stop) if req.stop else 0)

    def _deliver(self, seq: Sequence, held: int = 0, finish: str | None = None,
                 error: str | None = None) -> None:
        st = seq.output
        end = len(st.text) - held
        text = st.text[st.emitted:end] if end > st.emitted else ""
        st.emitted = max(st.emitted, end)
        out = Output(seq.request.request_id, st.new_ids, text, st.new_logprobs or None,
                     finished=finish is not None, finish_reason=finish,
                     prompt_tokens=seq.n_prompt, completion_tokens=seq.n_generated,
                     cached_tokens=seq.cached_tokens, error=error)
        st.new_ids, st.new_logprobs = [], []
        try:
            st.sink(out)
        except Exception as e:  # a consumer's bug must not take the engine down
            print(f"tt: output consumer failed: {e}", file=sys.stderr)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finish_reason is not None:
            return
        self.scheduler.finish(seq, reason)
        self._by_id.pop(seq.request.request_id, None)
        self._metrics.requests_finished += 1
        self._deliver(seq, finish=reason, error=error)

    def fail_all(self, error: str) -> None:
        """End every request with an error (after a device failure)."""
        for seq in list(self.scheduler.sequences()):
            self._finish(seq, "abort", error)

    # ---- the engine thread ----

    def start(self) -> None:
        """Run the engine in its own thread until shutdown()."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tt-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.has_work() and not self._stopping:
                    self._cond.wait()  # idle: blocked, no CPU used
                if self._stopping and not self.has_work():
                    return
            try:
                self.step()
            except Exception as e:  # a device error: fail the requests, keep serving
                print(f"tt: engine step failed: {type(e).__name__}: {e}", file=sys.stderr)
                self.fail_all(f"internal error: {e}")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let running ones finish for up to `timeout` seconds, cancel
        the rest, and stop the engine thread."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self._thread is not None and self.has_work() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._cond:
            for seq in list(self.scheduler.sequences()) + self._inbox:
                self._cancels.add(seq.request.request_id)
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self.step()

    def metrics(self) -> EngineMetrics:
        m = self._metrics
        m.requests_running = len(self.scheduler.running)
        m.requests_waiting = len(self.scheduler.waiting) + len(self._inbox)
        m.kv_pages_free = self.pool.n_free
        m.kv_pages_used = self.pool.n_used
        m.prefix_cache_pages = self.prefix_cache.n_pages if self.prefix_cache is not None else 0
        m.prefix_cache_queries = self.scheduler.prefix_queries
        m.prefix_cache_hits = self.scheduler.prefix_hit_tokens
        m.preemptions = self.scheduler.preemptions
        return EngineMetrics(**vars(m))


def end_token_ids(config, tokenizer: Tokenizer) -> set[int]:
    """The model's end-of-generation tokens: from its config, plus the usual end-of-turn
    markers its tokenizer knows (chat models end turns with them, not always with eos)."""
    ids = set(config.eos_token_ids)
    for name in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.token_id(name)
        if tid is not None:
            ids.add(tid)
    return ids


def load_engine(model: str | None = None, backend: str | None = None, *, device_index: int = 0,
                progress: bool = False, **options) -> Engine:
    """Open a model (a path, or a bundled short name; None: the default) on a device and build an
    engine for it; `options` are Engine's keyword arguments (kv_memory, page_size, …)."""
    import tattletale as tt
    from tattletale.models import open_model, resolve

    path = resolve(model)
    file = open_model(path)
    dev = tt.device(backend, device_index) if backend else tt.device()
    tokenizer = file.tokenizer()
    llama = LlamaModel(dev, file, progress=progress)
    engine = Engine(llama, tokenizer, file.chat_template(), model_name=path.stem,
                    eos_ids=end_token_ids(llama.cfg, tokenizer), **options)
    engine.path = path
    return engine
