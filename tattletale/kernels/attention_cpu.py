"""Causal attention, prefill and decode, for CPU OpenCL (PoCL), shaped for how PoCL vectorizes
(see matmul_cpu).

The GPU kernel stages key tiles through shared memory between barriers; PoCL turns each barrier
into a loop over the work-group's work-items with every live value kept in memory, and it runs
at a few GFLOP/s there. Here a work-item owns one (query row, head) and walks that row's keys
itself — a loop whose bound depends on the work-item, which PoCL keeps inside it — with the head
dimension as the SIMD lanes of each dot product and output update. Keys are addressed through
attention.kv_slot/kv_index, so contiguous and paged storage are the same source.
"""

from __future__ import annotations

import tattletale as tt

from .attention import NEG_INF, WORK_FIELDS, kv_index, kv_slot

ROWS_PER_GROUP = 16  # query rows (work-items) per work-group


@tt.kernel
def cpu_attention_kernel(q: tt.Buffer, k: tt.Buffer, v: tt.Buffer, out: tt.Buffer,
                         work: tt.Buffer[tt.i32], tables: tt.Buffer[tt.i32], width: tt.i32,
                         n_heads: tt.i32, n_kv: tt.i32, window: tt.i32, scale: tt.f32,
                         q_stride: tt.i32, n_decode: tt.i32, BQ: tt.constexpr, D: tt.constexpr,
                         PAGE: tt.constexpr, DECODE: tt.constexpr):
    """Work-item (item·BQ + i, h) attends query row i of work item `item` (first row, rows,
    first position, context length, sequence; see attention.prefill_work) with head h over its
    causal (and windowed) history, with an online softmax. DECODE: `work` holds the lengths of
    n_decode decode rows instead, row r being the last token of sequence r (its page-table row),
    and a length of 0 (batch padding) writes zeros. A dot product is D products summed by a tree
    of halving vector adds (a running sum would stay scalar: float addition is not
    reassociated)."""
    gi = tt.global_id(0)
    h = tt.group_id(1)
    hk = h // (n_heads // n_kv)
    row = gi
    pos = 0
    b = gi
    live = False
    if DECODE:
        if gi < n_decode:
            pos = work[gi] - 1
            live = True
    else:
        item = gi // BQ
        i = gi % BQ
        if i < work[item * WORK_FIELDS + 1]:
            row = work[item * WORK_FIELDS] + i
            pos = work[item * WORK_FIELDS + 2] + i
            b = work[item * WORK_FIELDS + 4]
            live = True
    if live:
        qv = tt.array((D,), tt.f32)
        o = tt.array((D,), tt.f32)
        prod = tt.array((D,), tt.f32)
        for d in tt.static_range(D):
            qv[d] = tt.f32(q[row * q_stride + h * D + d]) * scale
            o[d] = 0.0
        m = NEG_INF
        denom = 0.0
        first = max(0, pos - window + 1) if window > 0 else 0
        for t in range(first, pos + 1):
            base = tt.i64(kv_index(kv_slot(tables, b, t, width, PAGE), hk, 0, n_kv, D))
            for d in tt.static_range(D):
                prod[d] = qv[d] * tt.f32(k[base + d])
            for s in tt.static_range(1, D.bit_length()):
                for d in tt.static_range(D >> s):
                    prod[d] += prod[d + (D >> s)]
            m_new = max(m, prod[0])
            corr = tt.exp(m - m_new)
            p = tt.exp(prod[0] - m_new)
            denom = denom * corr + p
            for d in tt.static_range(D):
                o[d] = o[d] * corr + p * tt.f32(v[base + d])
            m = m_new
        inv = 1.0 / denom if denom > 0.0 else 0.0
        for d in tt.static_range(D):
            out[(row * n_heads + h) * D + d] = o[d] * inv
