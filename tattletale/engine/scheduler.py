"""Which tokens of which sequences the next step runs: continuous batching over paged KV memory.

Host-side only (no device, no HTTP), so it can be tested on its own. Every step:

1. Running sequences, oldest first, each get their next tokens: one for a sequence that is
   decoding, a chunk for one whose prompt is still being computed; all under a token budget per
   step, so a long prompt is spread over several steps instead of stalling everyone's decoding.
2. Waiting sequences are admitted in arrival order while the budget and free pages allow. On
   admission the prefix cache is matched: a prompt that begins like an earlier one re-uses those
   KV pages and only computes the rest.
3. Pages come from the pool; when it is empty, the prefix cache evicts its least recently used
   pages; when that is not enough, the newest running sequence is preempted (its pages go to the
   prefix cache and it returns to the queue; re-admission recomputes what was evicted). So memory
   pressure slows requests down but never deadlocks or fails them, and there are no slots: one
   request may use the whole context window when memory allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tattletale.cache.pages import OutOfPages, PagePool, PageTable
from tattletale.cache.radix import PrefixCache

from .request import Request

_arrivals = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request's tokens (prompt, then generated) and the pages holding their K/V."""

    request: Request
    tokens: list[int]
    n_prompt: int
    arrival: int = field(default_factory=lambda: next(_arrivals))
    n_computed: int = 0  # leading tokens whose K/V are in `table`'s pages
    table: PageTable | None = None
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied on first admission
    admitted: bool = False
    inserted: int = 0  # tokens already offered to the prefix cache
    finish_reason: str | None = None
    output: Any = None  # the engine's per-request output state (text so far, where its sink is)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def to_compute(self) -> int:
        """Tokens still to run before the next one can be sampled."""
        return len(self.tokens) - self.n_computed


@dataclass
class ScheduledSpan:
    seq: Sequence
    start: int  # first position to run
    n: int  # tokens to run

    @property
    def samples(self) -> bool:
        """Does this span reach the sequence's end (so its last logits are sampled)?"""
        return self.start + self.n == len(self.seq.tokens)


@dataclass
class Plan:
    spans: list[ScheduledSpan]
    copies: list[tuple[int, int]]  # copy-on-write page copies to do before the step
    preempted: list[Sequence]
    out_of_memory: list[Sequence]  # alone and still without room: finished ("length")


class Scheduler:
    def __init__(self, pool: PagePool, prefix_cache: PrefixCache | None, max_batch_tokens: int,
                 max_seqs: int):
        self.pool, self.prefix_cache = pool, prefix_cache
        self.max_batch_tokens, self.max_seqs = max_batch_tokens, max_seqs
        self.waiting: list[Sequence] = []  # kept in arrival order
        self.running: list[Sequence] = []  # kept in arrival order
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hit_tokens = 0  # of those, the tokens found
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.waiting.sort(key=lambda s: s.arrival)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def sequences(self) -> Iterator[Sequence]:
        yield from self.running
        yield from self.waiting

    # ---- one step ----

    def schedule(self) -> Plan:
        budget = self.max_batch_tokens
        spans: list[ScheduledSpan] = []
        copies: list[tuple[int, int]] = []
        preempted: list[Sequence] = []
        out_of_memory: list[Sequence] = []
        for seq in list(self.running):
            if seq not in self.running:  # preempted below, to make room for an older one
                continue
            n = min(seq.to_compute, budget)
            if n <= 0 or len(spans) >= self.max_seqs:
                continue
            while not self._reserve(seq, n, copies):
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:  # the pool cannot hold more of it
                    self.finish(seq, "length")
                    out_of_memory.append(seq)
                    break
                self._preempt(victim)
                preempted.append(victim)
                spans = [s for s in spans if s.seq is not victim]
                if victim is seq:
                    break
            else:
                spans.append(ScheduledSpan(seq, seq.n_computed, n))
                budget -= n
        budget = self.max_batch_tokens - sum(s.n for s in spans)
        while self.waiting and budget > 0 and len(spans) < self.max_seqs:
            seq = self.waiting[0]
            if seq in preempted:
                break  # it just gave its pages up; try again next step
            self._admit(seq)
            n = min(seq.to_compute, budget)
            if not self._reserve(seq, n, copies):
                self._release_pages(seq, offer=False)
                break  # admission by free pages: wait for running sequences to finish
            self.waiting.pop(0)
            self.running.append(seq)
            self.running.sort(key=lambda s: s.arrival)
            spans.append(ScheduledSpan(seq, seq.n_computed, n))
            budget -= n
        return Plan(spans, copies, preempted, out_of_memory)

    def _admit(self, seq: Sequence) -> None:
        """Give a waiting sequence a page table, starting from its longest cached prefix."""
        pages, n = (), 0
        if self.prefix_cache is not None:
            match = self.prefix_cache.match(seq.tokens[:-1])  # ≥ 1 token left to compute
            pages, n = match.pages, match.n_tokens
            self.prefix_cache.release(match)
            if not seq.admitted:
                self.prefix_queries += seq.n_prompt
                self.prefix_hit_tokens += n
                seq.cached_tokens = min(n, seq.n_prompt)
        seq.table = PageTable(self.pool, pages, n)
        seq.n_computed = n
        seq.inserted = n
        seq.admitted = True

    def _reserve(self, seq: Sequence, n: int, copies: list[tuple[int, int]]) -> bool:
        """Grow seq's table by n tokens, evicting cached pages if needed; False if impossible."""
        need = seq.table.pages_needed(n)
        if need > self.pool.n_free and self.prefix_cache is not None:
            self.prefix_cache.evict(need - self.pool.n_free)
        try:
            copies += seq.table.append(n)
        except OutOfPages:
            return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Return a running sequence to the queue; its computed pages go to the prefix cache."""
        self.running.remove(seq)
        self._release_pages(seq, offer=True)
        self.preemptions += 1
        self.add(seq)

    def _release_pages(self, seq: Sequence, offer: bool) -> None:
        if offer:
            self.offer(seq)
        seq.table.free()
        seq.table = None
        seq.n_computed = 0

    # ---- after a step ----

    def offer(self, seq: Sequence) -> None:
        """Put seq's computed whole pages in the prefix cache (once its prompt is computed, and
        when it finishes), so later requests with the same beginning skip them."""
        if self.prefix_cache is None or seq.table is None or seq.n_computed <= seq.inserted:
            return
        ps = self.pool.page_size
        if seq.n_computed // ps > seq.inserted // ps:
            self.prefix_cache.insert(seq.tokens[:seq.n_computed], seq.table.pages)
        seq.inserted = seq.n_computed

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence (finished, cancelled or failed) and free or cache its pages."""
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.table is not None:
            self._release_pages(seq, offer=True)

    def verify(self) -> None:
        """Every page is free, or owned by exactly the tables and cache that count it."""
        owners = [s.table.pages for s in self.sequences() if s.table is not None]
        if self.prefix_cache is not None:
            self.prefix_cache.verify()
            owners.append(list(self.prefix_cache.cached_pages()))
        self.pool.verify(owners)
