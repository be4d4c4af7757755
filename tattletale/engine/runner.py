"""Runs the scheduler's steps on the device: one forward pass over a ragged batch, then sampling.

Per step the host uploads one int32 array (models/batch.py), launches (or replays) the forward
pass and the sampler, and reads back one token id per sampled sequence. Decode-only steps, the
common case, replay recorded launch sequences (CUDA graphs, Vulkan command buffers, …): a batch
of B decoding sequences is padded to a bucket size with dummy sequences that write to the pool's
scratch page, so one recording per (bucket, attention split plan) serves every such step.
"""

from __future__ import annotations

import os

import tattletale as tt
from tattletale.cache.kv import PagedKV
from tattletale.kernels.attention import PREFILL_BQ, WORK_FIELDS, decode_plan
from tattletale.kernels.sampling import apply_penalties, has_penalties, logprobs, sample_rows
from tattletale.models.batch import Batch, Span, table_width
from tattletale.models.llama import LlamaModel, Workspace

from .request import TokenLogprob


def bucket(n: int) -> int:
    """Decode batch sizes recorded: powers of two up to 8, then multiples of 8."""
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


class ModelRunner:
    def __init__(self, model: LlamaModel, kv: PagedKV, max_batch_tokens: int, max_seqs: int,
                 max_context: int, graphs: bool | None = None):
        dev = model.dev
        self.model, self.kv, self.dev = model, kv, dev
        self.page_size = kv.layout.page_size
        self.max_seqs = max_seqs
        seqs = bucket(max_seqs)
        max_tokens = max(max_batch_tokens, seqs)
        max_splits = decode_plan(max_context)[0]
        self.ws = Workspace(model, max_tokens, max_tokens, seqs, max_splits)
        vocab = model.cfg.vocab
        width = table_width(-(-max_context // self.page_size))
        work_items = max_tokens // PREFILL_BQ + seqs
        words = 4 * max_tokens + max_tokens * width + 7 * seqs + WORK_FIELDS * work_items + 1
        self.buffer = dev.empty(words, tt.i32)
        self.probs = dev.empty((bucket(max_seqs), vocab), tt.f32)
        self.next_ids = dev.empty(bucket(max_seqs), tt.i32)
        # TT_GRAPHS=0 launches every kernel of every step one by one (for debugging)
        self.graphs = os.environ.get("TT_GRAPHS", "1") != "0" if graphs is None else graphs
        self.recordings: dict[tuple, object] = {}

    def execute(self, spans: list[Span], histories: list[list[int]] | None = None,
                want_logprobs: list[int | None] | None = None
                ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Run one step; returns the sampled token of each span with logits="last" (in order),
        and their log-probabilities where `want_logprobs` (per such span) asks for them.
        `histories` (per such span) are the token histories penalties look at."""
        sampled_spans = [s for s in spans if s.logits == "last"]
        decode_only = all(len(s.tokens) == 1 for s in spans)
        if decode_only and self.graphs:
            pad = bucket(len(spans)) - len(spans)
            scratch = [self.kv.scratch_page]
            spans = spans + [Span([0], 0, scratch) for _ in range(pad)]
        batch = Batch(spans, self.page_size)
        batch.bind(self.buffer)
        rows = batch.n_rows
        logits = self.ws.logits.view(0, (rows, self.model.cfg.vocab))
        splits, chunk = decode_plan(batch.longest_decode)
        if decode_only and self.graphs:
            key = (batch.signature, splits, chunk)
            rec = self.recordings.get(key)
            if rec is None:  # the first run compiles every kernel, then the launches are recorded
                self.model.run(self.ws, self.kv, batch, splits * chunk)
                with self.dev.record() as rec:
                    self.model.run(self.ws, self.kv, batch, splits * chunk)
                self.recordings[key] = rec
            else:
                rec.replay()
        else:
            self.model.run(self.ws, self.kv, batch)
        if rows == 0:
            return [], []
        row_of = {id(s): r for r, s in enumerate(batch.sampled)}  # the batch puts decode first
        order = [row_of[id(s)] for s in sampled_spans]
        params = [s.sampling for s in batch.sampled]
        if histories and any(has_penalties(p) for p in params):
            hist: list[list[int]] = [[] for _ in range(rows)]
            for r, h in zip(order, histories):
                hist[r] = h
            apply_penalties(logits, params, hist)
        v = batch.views
        out = self.next_ids.view(0, rows)
        sample_rows(logits, self.probs.view(0, (rows, self.model.cfg.vocab)), out, v["temperature"],
                    v["top_k"], v["top_p"], v["min_p"], v["seed"], v["draw"])
        ids = out.numpy()
        tokens = [int(ids[i]) for i in order]
        lps: list[TokenLogprob | None] = [None] * len(tokens)
        for j, k in enumerate(want_logprobs or []):
            if k is not None:
                row = logits.view(order[j] * logits.shape[1], logits.shape[1]).numpy()
                lp, top = logprobs(row, tokens[j], k)
                lps[j] = TokenLogprob(tokens[j], lp, top)
        return tokens, lps
