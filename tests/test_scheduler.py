"""The scheduler alone (no device): random interleavings of submissions, cancellations and steps
under a tiny page pool, with a stand-in model whose next token is a function of the sequence so
far. After every step the page accounting must hold (every page free, or counted exactly by the
page tables and the prefix cache); every request must finish (no deadlock under preemption);
and a drained engine leaves only the prefix cache's pages in use.
"""

from __future__ import annotations

import zlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tattletale.cache.pages import PagePool
from tattletale.cache.radix import PrefixCache
from tattletale.engine.request import Request
from tattletale.engine.scheduler import Scheduler, Sequence

PAGE, PAGES = 4, 24
CONTEXT = PAGE * PAGES


def next_token(tokens: list[int]) -> int:
    """The stand-in model: deterministic in the tokens so far, from a small alphabet."""
    return zlib.crc32(bytes(t & 0xFF for t in tokens[-8:])) % 5


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = PagePool(PAGES, PAGE)
        self.cache = PrefixCache(self.pool)
        self.sched = Scheduler(self.pool, self.cache, max_batch_tokens=10, max_seqs=4)
        self.live: list[Sequence] = []
        self.done: list[Sequence] = []

    @rule(prompt=st.lists(st.integers(0, 3), min_size=1, max_size=40), max_tokens=st.integers(1, 30))
    def submit(self, prompt: list[int], max_tokens: int) -> None:
        seq = Sequence(Request(prompt, max_tokens=max_tokens), list(prompt), len(prompt))
        self.sched.add(seq)
        self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        seq = self.live.pop(pick % len(self.live))
        self.sched.finish(seq, "abort")
        self.done.append(seq)

    @rule()
    def step(self) -> None:
        plan = self.sched.schedule()
        for seq in plan.out_of_memory:
            self.live.remove(seq)
            self.done.append(seq)
        assert sum(s.n for s in plan.spans) <= self.sched.max_batch_tokens
        assert len(plan.spans) <= self.sched.max_seqs
        assert not plan.copies  # whole pages are shared, a partial last page never
        for span in plan.spans:
            seq = span.seq
            assert seq.table is not None and seq.table.n_tokens >= span.start + span.n
            assert span.start == seq.n_computed
            seq.n_computed += span.n
            if seq.n_computed >= seq.n_prompt:
                self.sched.offer(seq)
            if span.samples:
                seq.tokens.append(next_token(seq.tokens))
                if seq.n_generated >= seq.request.max_tokens or len(seq.tokens) >= CONTEXT:
                    self.sched.finish(seq, "length")
                    self.live.remove(seq)
                    self.done.append(seq)

    @invariant()
    def pages_are_accounted_for(self) -> None:
        self.sched.verify()
        for seq in self.sched.waiting:
            assert seq.table is None
        for seq in self.sched.running:
            assert seq.table is not None and seq.table.n_tokens >= seq.n_computed

    def teardown(self) -> None:
        for _ in range(2000):  # drain: every request must finish
            if not self.sched.has_work():
                break
            self.step()
        assert not self.sched.has_work(), "requests left unfinished: a deadlock"
        self.sched.verify()
        assert self.pool.n_used == self.cache.n_pages
        self.cache.evict(PAGES)
        assert self.pool.n_free == PAGES


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_outputs_do_not_depend_on_preemption() -> None:
    """The same requests through a roomy pool and through one so small that sequences are
    preempted and recomputed generate the same tokens (recomputation resumes exactly)."""
    def generate(pages: int) -> tuple[list[list[int]], int]:
        pool = PagePool(pages, PAGE)
        sched = Scheduler(pool, PrefixCache(pool), max_batch_tokens=12, max_seqs=8)
        seqs = [Sequence(Request([i % 4] * (5 + 3 * i), max_tokens=20), [i % 4] * (5 + 3 * i),
                         5 + 3 * i) for i in range(8)]
        for s in seqs:
            sched.add(s)
        while sched.has_work():
            for span in sched.schedule().spans:
                seq = span.seq
                seq.n_computed += span.n
                sched.offer(seq)
                if span.samples:
                    seq.tokens.append(next_token(seq.tokens))
                    if seq.n_generated >= seq.request.max_tokens:
                        sched.finish(seq, "length")
            sched.verify()
        return [s.tokens for s in seqs], sched.preemptions

    roomy, none = generate(200)
    tight, some = generate(16)
    assert none == 0 and some > 0
    assert tight == roomy
