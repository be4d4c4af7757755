"""The inputs of one forward pass over a ragged batch, laid out in one int32 array.

A step runs spans of several sequences at once: a decode span is one new token of a running
sequence, a prefill span a run of prompt tokens (a whole prompt or a chunk of one, possibly after
a cached prefix). Everything the kernels read about the batch (token ids, positions, the KV slot
each new token is written to, context lengths, page tables, prefill work items, which rows need
logits, and each sampled row's settings) goes into one int32 array, so a step costs one upload.
The layout depends only on the counts (tokens, sequences, work items, logit rows), so a recorded
launch sequence replays correctly for any batch with the same counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

import tattletale as tt
from tattletale.kernels.attention import WORK_FIELDS, prefill_work
from tattletale.kernels.sampling import SamplingParams
from tattletale.runtimes import Tensor


@dataclass
class Span:
    """`tokens` of one sequence at positions start, start+1, …; `pages` is its page table (it
    already covers the new tokens). `logits`: which tokens' logits to compute, "last", "all" or
    "none"; `sampling`: the settings the last token's logits are sampled with (`draw` numbers the
    draw, for seeded reproducibility)."""

    tokens: Sequence[int]
    start: int
    pages: Sequence[int]
    logits: str = "last"
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    draw: int = 0


# sections of the array, in order: (name, elements per token / sequence / work item / logit row)
_PER_TOKEN = ("ids", "positions", "slots")
_PER_SEQ = ("lengths",)
_PER_ROW = ("logit_rows", "temperature", "top_k", "top_p", "min_p", "seed", "draw")
_F32 = {"temperature", "top_p", "min_p"}
_U32 = {"seed", "draw"}


DECODE_ROWS_MAX = 64  # spans of up to this many tokens attend through the decode kernel


def table_width(pages: int) -> int:
    """Page-table row length for sequences of up to `pages` pages: a power of two (at least 16),
    so that recordings of decode steps are shared by every batch of similar lengths."""
    return max(16, 1 << (pages - 1).bit_length())


class Batch:
    """The host array of a step's inputs and, once `bind` has uploaded it, views of its sections.

    Attention sees two kinds of rows. Decode rows come first: one per token of the short spans
    (at most `decode_rows_max` tokens: decode steps, and short prompt continuations after a
    cached prefix), each with its own context length and a copy of its sequence's page-table row;
    the decode kernel splits each row's keys over many workgroups, which a few queries over a
    long history need. Query row b, length b and table row b belong together. The long spans
    follow, as work items of the prefill kernel, their table rows after the decode rows.
    """

    def __init__(self, spans: Sequence[Span], page_size: int,
                 decode_rows_max: int = DECODE_ROWS_MAX):
        decode = [s for s in spans if len(s.tokens) <= decode_rows_max]
        prefill = [s for s in spans if len(s.tokens) > decode_rows_max]
        self.spans = decode + prefill
        self.page_size = page_size
        self.width = table_width(max(len(s.pages) for s in spans))
        self.n_decode = sum(len(s.tokens) for s in decode)  # decode rows
        self.n_seqs = self.n_decode + len(prefill)  # table rows
        self.n_tokens = sum(len(s.tokens) for s in self.spans)
        self.longest_decode = max((s.start + len(s.tokens) for s in decode), default=0)
        self.longest_prefill = max((s.start + len(s.tokens) for s in prefill), default=0)
        rows, spans_at, sampled = 0, [], []
        for s in self.spans:
            if len(s.tokens) > decode_rows_max:  # (first row, queries, first position, table row)
                spans_at.append((rows, len(s.tokens), s.start, self.n_decode + len(spans_at)))
            n = len(s.tokens)
            if s.logits == "all":
                sampled += [(rows + j, s) for j in range(n)]
            elif s.logits == "last":
                sampled.append((rows + n - 1, s))
            rows += n
        work = prefill_work(spans_at)
        self.n_work = len(work)
        self.n_rows = len(sampled)
        self.sampled = [s for _, s in sampled]  # the span of each logit row
        self.signature = (self.n_tokens, self.n_seqs, self.n_work, self.n_rows, self.width)

        sizes = {**{k: self.n_tokens for k in _PER_TOKEN}, **{k: self.n_seqs for k in _PER_SEQ},
                 **{k: self.n_rows for k in _PER_ROW}, "work": self.n_work * WORK_FIELDS,
                 "tables": self.n_seqs * self.width}
        self.offsets, at = {}, 0
        for name, n in sizes.items():
            self.offsets[name] = (at, n)
            at += n
        self.host = np.zeros(at, np.int32)
        self._fill(sampled, work, len(decode))
        self.views: dict[str, Tensor] = {}

    def _section(self, name: str) -> np.ndarray:
        at, n = self.offsets[name]
        out = self.host[at:at + n]
        return out.view(np.float32) if name in _F32 else out.view(np.uint32) if name in _U32 else out

    def _fill(self, sampled: list[tuple[int, Span]], work: np.ndarray, n_short: int) -> None:
        ps = self.page_size
        tokens, positions, slots = (self._section(k) for k in _PER_TOKEN)
        tables = self._section("tables").reshape(self.n_seqs, self.width)
        lengths = self._section("lengths")
        i = 0  # token (= query row) of the batch
        for b, s in enumerate(self.spans):
            n = len(s.tokens)
            pos = np.arange(s.start, s.start + n)
            pages = np.asarray(s.pages, np.int32)
            tokens[i:i + n] = s.tokens
            positions[i:i + n] = pos
            slots[i:i + n] = pages[pos // ps] * ps + pos % ps
            if b < n_short:  # a decode row per token: its own length, its sequence's table
                tables[i:i + n, :len(pages)] = pages
                lengths[i:i + n] = pos + 1
            else:
                row = self.n_decode + b - n_short
                tables[row, :len(pages)] = pages
                lengths[row] = s.start + n
            i += n
        self._section("work")[:] = work.reshape(-1)
        self._section("logit_rows")[:] = [r for r, _ in sampled]
        for name in ("temperature", "top_k", "top_p", "min_p"):
            self._section(name)[:] = [getattr(s.sampling, name) for _, s in sampled]
        self._section("seed")[:] = [s.sampling.seed & 0xFFFFFFFF for _, s in sampled]
        self._section("draw")[:] = [s.draw & 0xFFFFFFFF for _, s in sampled]

    def bind(self, buffer: Tensor) -> None:
        """Upload into `buffer` (int32, at least as long) and make the section views."""
        buffer.view(0, self.host.size).copy_from(self.host)
        views = {}
        for name, (at, n) in self.offsets.items():
            v = buffer.view(at, max(n, 1))
            views[name] = v.bitview(tt.f32) if name in _F32 else v.bitview(tt.u32) if name in _U32 else v
        views["tables"] = views["tables"].reshape(max(self.n_seqs, 1), self.width) \
            if self.n_seqs else views["tables"]
        views["work"] = views["work"].reshape(max(self.n_work, 1), WORK_FIELDS) \
            if self.n_work else views["work"]
        self.views = views
