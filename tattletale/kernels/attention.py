"""Attention: causal prefill (FlashAttention-style) and decode (split over the sequence length).

Both support grouped-query attention (n_kv_heads divides n_heads) and an optional sliding window.
KV is stored token-major, [tokens, n_kv_heads, head_dim] per sequence; every access goes through
`kv_index`, the one place the paged KV cache will change.
"""

from __future__ import annotations

import math

import tattletale as tt
from tattletale.runtimes import Tensor

NEG_INF = -float("inf")


@tt.func
def kv_index(seq_base, t, h, d, n_kv, D):
    """Element index of head h, dimension d, of token t of a sequence whose KV starts at seq_base."""
    return seq_base + (t * n_kv + h) * D + d


@tt.kernel
def kv_write_kernel(k_src: tt.Buffer, v_src: tt.Buffer, k_cache: tt.Buffer, v_cache: tt.Buffer,
                    positions: tt.Buffer[tt.i32], n_tokens: tt.i32, src_stride: tt.i32,
                    n_kv: tt.i32, D: tt.constexpr):
    """Store the K and V rows of n_tokens new tokens (rows src_stride apart) at their positions."""
    i = tt.global_id(0)
    row = n_kv * D
    if i < n_tokens * row:
        t = i // row
        e = i % row
        dst = kv_index(0, positions[t], e // D, e % D, n_kv, D)
        k_cache[dst] = k_src[t * src_stride + e]
        v_cache[dst] = v_src[t * src_stride + e]


def kv_write(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, n_kv: int,
             head_dim: int, src_stride: int | None = None) -> None:
    """k_cache[positions[t]] = k[t], v_cache[positions[t]] = v[t] for each new token t."""
    n = positions.size * n_kv * head_dim
    kv_write_kernel[-(-n // 256), 256](k, v, k_cache, v_cache, positions, positions.size,
                                       src_stride or n_kv * head_dim, n_kv, head_dim)


@tt.kernel
def decode_attention_kernel(q: tt.Buffer, k: tt.Buffer, v: tt.Buffer, lengths: tt.Buffer[tt.i32],
                            part_o: tt.Buffer[tt.f32], part_ml: tt.Buffer[tt.f32], max_len: tt.i32,
                            n_heads: tt.i32, n_kv: tt.i32, chunk: tt.i32, window: tt.i32,
                            scale: tt.f32, q_stride: tt.i32, D: tt.constexpr, BLOCK: tt.constexpr):
    """Workgroup (b·H + h, split s) attends query head h of sequence b to keys of chunk s.

    Each subgroup takes every NSG-th key; its lanes split the head dimension (D/SG values each)
    and keep an online softmax. Subgroup states are merged through shared memory and the chunk's
    (output, max, sum) written for the combine kernel.
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
    seq = b * max_len * n_kv * D
    qv = tt.array((DL,), tt.f32)
    o = tt.array((DL,), tt.f32)
    for j in tt.static_range(DL):
        qv[j] = tt.f32(q[b * q_stride + h * D + lane * DL + j]) * scale
        o[j] = 0.0
    m = NEG_INF
    denom = 0.0
    for t in range(start + sg, stop, NSG):
        s = 0.0
        for j in tt.static_range(DL):
            s += qv[j] * k[kv_index(seq, t, hk, lane * DL + j, n_kv, D)]
        s = tt.subgroup_sum(s)
        m_new = max(m, s)
        corr = tt.exp(m - m_new)
        p = tt.exp(s - m_new)
        denom = denom * corr + p
        for j in tt.static_range(DL):
            o[j] = o[j] * corr + p * v[kv_index(seq, t, hk, lane * DL + j, n_kv, D)]
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


def decode_splits(longest: int, chunk: int = DECODE_CHUNK) -> int:
    """Workgroups per (sequence, head) of decode attention for histories up to `longest`."""
    return max(1, -(-longest // chunk))


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, lengths: Tensor, n_kv: int,
                     out: Tensor | None = None, window: int = 0, scale: float | None = None,
                     chunk: int = DECODE_CHUNK, longest: int | None = None,
                     partials: tuple[Tensor, Tensor] | None = None,
                     q_stride: int | None = None) -> Tensor:
    """One query token per sequence over its whole KV history.

    q: [B, H, D]; k_cache, v_cache: [B, max_len, n_kv, D]; lengths: [B] i32 (valid tokens);
    `longest` bounds the lengths (default: max_len) and sets how many chunks of `chunk` keys are
    attended in parallel before being combined; `partials` is preallocated scratch for them
    ([B·H·splits, D] and [B·H·splits, 2] f32), so that recorded launches allocate nothing.
    """
    bsz, n_heads, d = q.shape
    max_len = k_cache.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    dev = q.device
    sg = dev.caps.subgroup_size
    block = max(sg, min(128, 4 * sg)) if sg > 1 else 16
    n_splits = decode_splits(longest or max_len, chunk)
    if partials is not None:
        part_o = partials[0].view(0, (bsz * n_heads * n_splits, d))
        part_ml = partials[1].view(0, (bsz * n_heads * n_splits, 2))
    else:
        part_o = dev.empty((bsz * n_heads * n_splits, d), tt.f32)
        part_ml = dev.empty((bsz * n_heads * n_splits, 2), tt.f32)
    out = out if out is not None else dev.empty(q.shape, tt.f32)
    decode_attention_kernel[(bsz * n_heads, n_splits), block](
        q, k_cache, v_cache, lengths, part_o, part_ml, max_len, n_heads, n_kv, chunk, window, scale,
        q_stride or n_heads * d, d, block)
    combine_splits_kernel[bsz * n_heads, d](part_o, part_ml, out, n_splits, d)
    return out


@tt.kernel
def prefill_attention_kernel(q: tt.Buffer, k: tt.Buffer, v: tt.Buffer, out: tt.Buffer,
                             n_q: tt.i32, n_kv_tokens: tt.i32, n_heads: tt.i32, n_kv: tt.i32,
                             window: tt.i32, scale: tt.f32, q_stride: tt.i32, D: tt.constexpr,
                             BQ: tt.constexpr, BK: tt.constexpr):
    """Causal attention of n_q queries (the last n_q of n_kv_tokens positions) for one head.

    Workgroup (query block, head): each thread owns one query row and its output accumulator;
    key/value tiles of BK tokens are staged through shared memory and consumed with an online
    softmax, so the score matrix is never materialized.
    """
    qb = tt.group_id(0)
    h = tt.group_id(1)
    hk = h // (n_heads // n_kv)
    tid = tt.local_id(0)
    row = qb * BQ + tid
    offset = n_kv_tokens - n_q  # absolute position of query 0
    pos = offset + row
    qv = tt.array((D,), tt.f32)
    o = tt.array((D,), tt.f32)
    if row < n_q:
        for d in tt.static_range(D):
            qv[d] = tt.f32(q[row * q_stride + h * D + d]) * scale
    for d in tt.static_range(D):
        o[d] = 0.0
    m = NEG_INF
    denom = 0.0
    ks = tt.shared((BK, D), tt.f32)
    vs = tt.shared((BK, D), tt.f32)
    last = min(offset + qb * BQ + BQ, n_kv_tokens)  # keys this block needs: [first, last)
    first = 0
    if window > 0:
        first = max(0, offset + qb * BQ - window + 1)
    first = first // BK * BK
    for kb in range(first, last, BK):
        for i in range(tid, BK * D, BQ):
            t = kb + i // D
            if t < n_kv_tokens:
                ks[i // D, i % D] = k[kv_index(0, t, hk, i % D, n_kv, D)]
                vs[i // D, i % D] = v[kv_index(0, t, hk, i % D, n_kv, D)]
        tt.barrier()
        if row < n_q:
            for j in range(BK):
                t = kb + j
                if t <= pos and t < n_kv_tokens and (window <= 0 or t > pos - window):
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
    if row < n_q:
        inv = 1.0 / denom
        for d in tt.static_range(D):
            out[(row * n_heads + h) * D + d] = o[d] * inv


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, n_kv: int, out: Tensor | None = None,
                      window: int = 0, scale: float | None = None,
                      q_stride: int | None = None) -> Tensor:
    """Causal attention for one sequence: q [T, H, D] are the last T of the k, v [T_kv, n_kv, D]
    positions (T_kv ≥ T, so a prompt can extend a cached prefix)."""
    n_q, n_heads, d = q.shape
    n_kv_tokens = k.shape[0]
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    bq, bk = 64, 16 if d > 64 else 32
    out = out if out is not None else q.device.empty(q.shape, tt.f32)
    prefill_attention_kernel[(-(-n_q // bq), n_heads), bq](
        q, k, v, out, n_q, n_kv_tokens, n_heads, n_kv, window, scale, q_stride or n_heads * d, d,
        bq, bk)
    return out
