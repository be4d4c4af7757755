"""Attention: causal prefill (FlashAttention-style) and decode (split over the sequence length).

Both support grouped-query attention (n_kv_heads divides n_heads) and an optional sliding window.
KV is stored token-major in slots of [n_kv_heads, head_dim]: contiguously per sequence, or in pages
of the paged KV cache (tattletale/cache) named by a page table per sequence. Every access goes
through `kv_slot` and `kv_index`, the one place that addressing lives; the page size is a
compile-time constant, so contiguous and paged storage are two specializations of one source.
"""

from __future__ import annotations

import math

import numpy as np

import tattletale as tt
from tattletale.runtimes import Tensor

from .quant import cpu_simd

NEG_INF = -float("inf")


@tt.func
def kv_slot(tables, b, t, width, PAGE):
    """The cache slot (row of [slots, n_kv_heads, head_dim]) holding token t of sequence b.

    PAGE = 0: contiguous storage, `width` slots per sequence. PAGE > 0: paged storage, token t in
    page tables[b·width + t // PAGE] at offset t % PAGE (PAGE is a compile-time constant, so both
    are shifts for powers of two).
    """
    if PAGE == 0:
        return b * width + t
    return tables[b * width + t // PAGE] * PAGE + t % PAGE


@tt.func
def kv_index(slot, h, d, n_kv, D):
    """Element index of head h, dimension d, in cache slot `slot`."""
    return (slot * n_kv + h) * D + d


@tt.kernel
def kv_write_kernel(k_src: tt.Buffer, v_src: tt.Buffer, k_cache: tt.Buffer, v_cache: tt.Buffer,
                    slots: tt.Buffer[tt.i32], n_tokens: tt.i32, src_stride: tt.i32,
                    n_kv: tt.i32, D: tt.constexpr):
    """Store the K and V rows of n_tokens new tokens (rows src_stride apart) in their cache slots."""
    i = tt.global_id(0)
    row = n_kv * D
    if i < n_tokens * row:
        t = i // row
        e = i % row
        dst = slots[t] * row + e
        k_cache[dst] = k_src[t * src_stride + e]
        v_cache[dst] = v_src[t * src_stride + e]


def kv_write(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, n_kv: int,
             head_dim: int, src_stride: int | None = None) -> None:
    """k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t] for each new token t (a slot is a
    position for contiguous storage, page·page_size + offset for paged storage)."""
    n = slots.size * n_kv * head_dim
    kv_write_kernel[-(-n // 256), 256](k, v, k_cache, v_cache, slots, slots.size,
                                       src_stride or n_kv * head_dim, n_kv, head_dim)


@tt.kernel
def decode_attention_kernel(q: tt.Buffer, k: tt.Buffer, v: tt.Buffer, lengths: tt.Buffer[tt.i32],
                            tables: tt.Buffer[tt.i32], part_o: tt.Buffer[tt.f32],
                            part_ml: tt.Buffer[tt.f32], width: tt.i32, n_heads: tt.i32, n_kv: tt.i32,
                            chunk: tt.i32, window: tt.i32, scale: tt.f32, q_stride: tt.i32,
                            D: tt.constexpr, BLOCK: tt.constexpr, PAGE: tt.constexpr):
    """Workgroup (b·H + h, split s) attends query head h of sequence b (query row b) to the keys
    of chunk s of its history.

    Each subgroup takes every NSG-th key; its lanes split the head dimension (D/SG values each)
    and keep an online softmax. Subgroup states are merged through shared memory and the chunk's
    (output, max, sum) written for the combine kernel. A sequence of length 0 (batch padding)
    writes an empty state.
    """
    SG = tt.subgroup_size()
    NSG = BLOCK // SG
    DL = D // SG  # head-dimension values per lane
    tt.static_assert(D % SG == 0, "head_dim must be a multiple of the subgroup size")
    bh = tt.group_id(0)
    split = tt.group_id(1)
    b = bh // n_heads
    h = bh % n_heads
    hk = h // (n_heads // n_kv)
    lane = tt.subgroup_local_id()
    sg = tt.subgroup_id()
    length = lengths[b]
    start = split * chunk
    stop = min(start + chunk, length)
    if window > 0:
        start = max(start, length - window)
    qv = tt.array((DL,), tt.f32)
    o = tt.array((DL,), tt.f32)
    for j in tt.static_range(DL):
        qv[j] = tt.f32(q[b * q_stride + h * D + lane * DL + j]) * scale
        o[j] = 0.0
    m = NEG_INF
    denom = 0.0
    # the slot of the next key is looked up one iteration ahead, so the page-table read is not
    # on the path from one key's address to its loads
    nxt = kv_slot(tables, b, min(start + sg, max(stop - 1, 0)), width, PAGE)
    for t in range(start + sg, stop, NSG):
        slot = nxt
        if t + NSG < stop:
            nxt = kv_slot(tables, b, t + NSG, width, PAGE)
        s = 0.0
        for j in tt.static_range(DL):
            s += qv[j] * k[kv_index(slot, hk, lane * DL + j, n_kv, D)]
        s = tt.subgroup_sum(s)
        m_new = max(m, s)
        corr = tt.exp(m - m_new)
        p = tt.exp(s - m_new)
        denom = denom * corr + p
        for j in tt.static_range(DL):
            o[j] = o[j] * corr + p * v[kv_index(slot, hk, lane * DL + j, n_kv, D)]
        m = m_new
    # merge the NSG subgroup states
    sm = tt.shared((NSG,), tt.f32)
    sl = tt.shared((NSG,), tt.f32)
    so = tt.shared((NSG, D), tt.f32)
    if lane == 0:
        sm[sg] = m
        sl[sg] = denom
    for j in tt.static_range(DL):
        so[sg, lane * DL + j] = o[j]
    tt.barrier()
    out = (bh * tt.num_groups(1) + split)
    tid = tt.local_id(0)
    gm = NEG_INF
    for i in tt.static_range(NSG):
        gm = max(gm, sm[i])
    for d in range(tid, D, BLOCK):
        acc = 0.0
        for i in tt.static_range(NSG):
            if sl[i] > 0.0:
                acc += so[i, d] * tt.exp(sm[i] - gm)
        part_o[out * D + d] = acc
    if tid == 0:
        total = 0.0
        for i in tt.static_range(NSG):
            if sl[i] > 0.0:
                total += sl[i] * tt.exp(sm[i] - gm)
        part_ml[out * 2] = gm
        part_ml[out * 2 + 1] = total


@tt.kernel
def combine_splits_kernel(part_o: tt.Buffer[tt.f32], part_ml: tt.Buffer[tt.f32], out: tt.Buffer,
                          n_splits: tt.i32, D: tt.constexpr):
    """out[bh, d] = Σ_s o_s·e^(m_s−M) / Σ_s l_s·e^(m_s−M); one workgroup per (sequence, head)."""
    bh = tt.group_id(0)
    d = tt.local_id(0)
    gm = NEG_INF
    for s in range(n_splits):
        if part_ml[(bh * n_splits + s) * 2 + 1] > 0.0:
            gm = max(gm, part_ml[(bh * n_splits + s) * 2])
    num = 0.0
    den = 0.0
    for s in range(n_splits):
        i = bh * n_splits + s
        lsum = part_ml[i * 2 + 1]
        if lsum > 0.0:
            w = tt.exp(part_ml[i * 2] - gm)
            den += lsum * w
            num += part_o[i * D + d] * w
    out[bh * D + d] = num / den if den > 0.0 else 0.0


DECODE_CHUNK = 512  # keys per workgroup of decode attention


MAX_SPLITS = 64  # beyond DECODE_CHUNK · MAX_SPLITS keys, chunks grow instead


def decode_splits(longest: int, chunk: int = DECODE_CHUNK) -> int:
    """Workgroups per (sequence, head) of decode attention for histories up to `longest`."""
    return max(1, -(-longest // chunk))


def decode_plan(longest: int) -> tuple[int, int]:
    """(splits, chunk) for histories up to `longest`: chunks of DECODE_CHUNK keys, doubled until
    at most MAX_SPLITS are needed, so the scratch for partial results stays bounded. A history
    bound of splits·chunk gives the same plan, so recordings can be keyed by it."""
    chunk = DECODE_CHUNK
    while decode_splits(longest, chunk) > MAX_SPLITS:
        chunk *= 2
    return decode_splits(longest, chunk), chunk


def split_scratch(dev, partials: tuple[Tensor, Tensor] | None, rows: int, d: int
                  ) -> tuple[Tensor, Tensor]:
    """Room for `rows` partial results of split attention ([rows, d] outputs, [rows, 2] max and
    sum): views of preallocated `partials` (recorded launches allocate nothing), or new buffers."""
    if partials is not None:
        return partials[0].view(0, (rows, d)), partials[1].view(0, (rows, 2))
    return dev.empty((rows, d), tt.f32), dev.empty((rows, 2), tt.f32)


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, lengths: Tensor, n_kv: int,
                     out: Tensor | None = None, window: int = 0, scale: float | None = None,
                     chunk: int = DECODE_CHUNK, longest: int | None = None,
                     partials: tuple[Tensor, Tensor] | None = None,
                     q_stride: int | None = None, tables: Tensor | None = None,
                     page_size: int = 0) -> Tensor:
    """One query token per sequence over its whole KV history.

    q: [B, H, D] (row b is sequence b's query; rows q_stride elements apart); lengths: [B] i32
    (valid tokens, 0 for padding rows). Contiguous storage: k_cache, v_cache [B, max_len, n_kv, D].
    Paged storage (`tables` [B, width] i32 page ids, `page_size` > 0): k_cache, v_cache
    [n_pages · page_size, n_kv, D], one layer's view of the page pool.
    `longest` bounds the lengths (default: max_len, or width·page_size) and sets how many chunks
    of `chunk` keys are attended in parallel before being combined; `partials` is preallocated
    scratch for them ([B·H·splits, D] and [B·H·splits, 2] f32), so that recorded launches
    allocate nothing.
    """
    bsz, n_heads, d = q.shape
    if tables is None:
        width, page_size, tables = k_cache.shape[1], 0, lengths
        capacity = width
    else:
        width = tables.shape[1]
        capacity = width * page_size
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    dev = q.device
    out = out if out is not None else dev.empty(q.shape, tt.f32)
    if cpu_simd(dev):  # one work-item per (query row, head), no splits: attention_cpu
        from .attention_cpu import ROWS_PER_GROUP, cpu_attention_kernel

        cpu_attention_kernel[(-(-bsz // ROWS_PER_GROUP), n_heads),
                             (ROWS_PER_GROUP, 1)](
            q, k_cache, v_cache, out, lengths, tables, width, n_heads, n_kv, window, scale,
            q_stride or n_heads * d, bsz, 1, d, page_size, True)
        return out
    sg = dev.caps.subgroup_size
    block = max(sg, min(128, 4 * sg)) if sg > 1 else 16
    n_splits = decode_splits(longest or capacity, chunk)
    part_o, part_ml = split_scratch(dev, partials, bsz * n_heads * n_splits, d)
    decode_attention_kernel[(bsz * n_heads, n_splits), block](
        q, k_cache, v_cache, lengths, tables, part_o, part_ml, width, n_heads, n_kv, chunk, window,
        scale, q_stride or n_heads * d, d, block, page_size)
    combine_splits_kernel[bsz * n_heads, d](part_o, part_ml, out, n_splits, d)
    return out


WORK_FIELDS = 5  # a prefill work item: first query row, rows, first position, context length, sequence


@tt.kernel
def prefill_attention_kernel(q: tt.Buffer, k: tt.Buffer, v: tt.Buffer, out: tt.Buffer,
                             part_o: tt.Buffer[tt.f32], part_ml: tt.Buffer[tt.f32],
                             work: tt.Buffer[tt.i32], tables: tt.Buffer[tt.i32], width: tt.i32,
                             n_heads: tt.i32, n_kv: tt.i32, window: tt.i32, scale: tt.f32,
                             q_stride: tt.i32, row_base: tt.i32, D: tt.constexpr, BQ: tt.constexpr,
                             BK: tt.constexpr, PAGE: tt.constexpr, SPLIT: tt.constexpr):
    """Causal attention of a ragged batch of query blocks: workgroup (item, head, split) takes
    work item `item` = (first query row, rows ≤ BQ, position of the first row, context length,
    sequence) and the split-th of num_groups(2) equal parts of its keys. With SPLIT, each part's
    unnormalized output, max and sum go to part_o/part_ml (row − row_base, head, split) for
    combine_splits_kernel, so that a few query blocks over a long history still fill the device.

    Each thread owns one query row and its output accumulator; key/value tiles of BK tokens are
    staged through shared memory and consumed with an online softmax, so the score matrix is
    never materialized. The item is read once into shared memory, which makes its fields
    workgroup-uniform (WGSL requires that of the tile loop, which contains barriers).
    """
    item = tt.group_id(0)
    h = tt.group_id(1)
    hk = h // (n_heads // n_kv)
    tid = tt.local_id(0)
    desc = tt.shared((WORK_FIELDS,), tt.i32)
    if tid < WORK_FIELDS:
        desc[tid] = work[item * WORK_FIELDS + tid]
    tt.barrier()
    row0 = desc[0]
    n_rows = desc[1]
    pos0 = desc[2]
    n_ctx = desc[3]
    b = desc[4]
    row = row0 + tid
    pos = pos0 + tid
    qv = tt.array((D,), tt.f32)
    o = tt.array((D,), tt.f32)
    if tid < n_rows:
        for d in tt.static_range(D):
            qv[d] = tt.f32(q[row * q_stride + h * D + d]) * scale
    for d in tt.static_range(D):
        o[d] = 0.0
    m = NEG_INF
    denom = 0.0
    ks = tt.shared((BK, D), tt.f32)
    vs = tt.shared((BK, D), tt.f32)
    last = min(pos0 + n_rows, n_ctx)  # keys this block needs: [first, last)
    first = 0
    if window > 0:
        first = max(0, pos0 - window + 1)
    first = first // BK * BK
    splits = tt.num_groups(2)
    part = (last - first + splits * BK - 1) // (splits * BK) * BK  # keys per split, whole tiles
    lo = first + tt.group_id(2) * part
    hi = min(lo + part, last)
    for kb in range(lo, hi, BK):
        for i in range(tid, BK * D, BQ):
            t = kb + i // D
            if t < hi:
                slot = kv_slot(tables, b, t, width, PAGE)
                ks[i // D, i % D] = k[kv_index(slot, hk, i % D, n_kv, D)]
                vs[i // D, i % D] = v[kv_index(slot, hk, i % D, n_kv, D)]
        tt.barrier()
        if tid < n_rows:
            for j in range(BK):
                t = kb + j
                if t <= pos and (window <= 0 or t > pos - window):
                    s = 0.0
                    for d in tt.static_range(D):
                        s += qv[d] * ks[j, d]
                    m_new = max(m, s)
                    corr = tt.exp(m - m_new)
                    p = tt.exp(s - m_new)
                    denom = denom * corr + p
                    for d in tt.static_range(D):
                        o[d] = o[d] * corr + p * vs[j, d]
                    m = m_new
        tt.barrier()
    if tid < n_rows:
        if SPLIT:
            at = ((row - row_base) * n_heads + h) * splits + tt.group_id(2)
            for d in tt.static_range(D):
                part_o[at * D + d] = o[d]
            part_ml[at * 2] = m
            part_ml[at * 2 + 1] = denom
        else:
            inv = 1.0 / denom
            for d in tt.static_range(D):
                out[(row * n_heads + h) * D + d] = o[d] * inv


PREFILL_BQ = 64  # query rows per prefill workgroup


def prefill_work(spans: list[tuple[int, int, int, int]], bq: int = PREFILL_BQ) -> np.ndarray:
    """The work items of a ragged prefill: one per block of ≤ bq query rows of each span.

    A span (first query row, n_queries, first position, sequence) says that query rows
    row … row+n−1 of the batch hold positions pos … pos+n−1 of that sequence, whose context then
    ends at pos+n (the query tokens attend to every earlier position and to themselves).
    """
    items = [(row + i, min(bq, n - i), pos + i, pos + n, seq)
             for row, n, pos, seq in spans for i in range(0, n, bq)]
    return np.asarray(items, np.int32).reshape(-1, WORK_FIELDS)


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, n_kv: int, out: Tensor | None = None,
                      window: int = 0, scale: float | None = None, q_stride: int | None = None,
                      work: Tensor | None = None, tables: Tensor | None = None,
                      page_size: int = 0, row_base: int = 0, splits: int = 1,
                      partials: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Causal attention of many query tokens; q: [T, H, D] (rows q_stride elements apart).

    Contiguous, one sequence: q holds the last T of the k, v [T_kv, n_kv, D] positions (T_kv ≥ T,
    so a prompt can extend a cached prefix). Paged, a ragged batch: `work` (from `prefill_work`,
    uploaded) lists the query blocks, `tables` [S, width] the sequences' page ids, and k, v are
    one layer's [n_pages · page_size, n_kv, D] view of the page pool; the work items cover rows
    row_base … T−1. `splits` > 1 divides each item's keys over that many workgroups, combined
    afterwards through `partials` ([rows·H·splits, D] and [rows·H·splits, 2] f32 scratch).
    """
    n_q, n_heads, d = q.shape
    dev = q.device
    if work is None:
        n_ctx = k.shape[0]
        work = dev.tensor(prefill_work([(0, n_q, n_ctx - n_q, 0)]))
        tables, width, page_size = work, n_ctx, 0
    else:
        width = tables.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out = out if out is not None else dev.empty(q.shape, tt.f32)
    if cpu_simd(dev):  # one work-item per (query row, head): attention_cpu
        from .attention_cpu import ROWS_PER_GROUP, cpu_attention_kernel

        cpu_attention_kernel[(work.shape[0] * PREFILL_BQ // ROWS_PER_GROUP, n_heads),
                             (ROWS_PER_GROUP, 1)](
            q, k, v, out, work, tables, width, n_heads, n_kv, window, scale,
            q_stride or n_heads * d, 0, PREFILL_BQ, d, page_size, False)
        return out
    bk = 16 if d > 64 else 32
    rows = n_q - row_base  # the rows the work items cover: row_base … n_q − 1
    part_o, part_ml = split_scratch(dev, partials, rows * n_heads * splits, d) if splits > 1 \
        else (out, out)
    prefill_attention_kernel[(work.shape[0], n_heads, splits), PREFILL_BQ](
        q, k, v, out, part_o, part_ml, work, tables, width, n_heads, n_kv, window, scale,
        q_stride or n_heads * d, row_base, d, PREFILL_BQ, bk, page_size, splits > 1)
    if splits > 1:
        combine_splits_kernel[rows * n_heads, d](part_o, part_ml, out.view(row_base * n_heads * d,
                                                                            (rows, n_heads, d)),
                                                 splits, d)
    return out


PREFILL_TARGET_GROUPS = 4096  # workgroups a prefill launch should have to fill a large GPU
PREFILL_MIN_KEYS = 256  # keys per split at least


def prefill_splits(n_items: int, n_heads: int, longest: int, cap: int) -> int:
    """Key splits per prefill work item: more while a few query blocks attend to a long history
    (so the launch still fills the device), never below PREFILL_MIN_KEYS keys a split or above
    `cap` (the scratch for partial results)."""
    want = -(-PREFILL_TARGET_GROUPS // max(1, n_items * n_heads))
    return max(1, min(want, longest // PREFILL_MIN_KEYS, cap))
