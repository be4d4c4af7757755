"""y = x @ W.T (+ bias) (+ residual), with W in any of the weight formats of quant.py.

Decode (M = 1 … 16 rows of x) is memory-bound on W: each subgroup owns one output feature n,
its lanes stride over W's row in chunks read with 16-byte vector loads (4 f32, 8 f16/bf16, or one
32-element Q4 block of 16 bytes), decode them in registers, and accumulate one partial sum per x
row; a subgroup reduction finishes each dot product. With subgroups of one lane (CPU OpenCL) each
thread owns a row, which is the cache-friendly order there.
"""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .quant import Weight, half_hi, half_lo, nibble, sbyte

MAX_GEMV_ROWS = 16


@tt.func
def dot4(xv, a, b, c, d):
    return xv.x * a + xv.y * b + xv.z * c + xv.w * d


@tt.kernel
def gemv_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, N: tt.i32, K: tt.i32,
                M: tt.constexpr, FMT: tt.constexpr, BLOCK: tt.constexpr, HAS_BIAS: tt.constexpr,
                HAS_RESIDUAL: tt.constexpr):
    SG = tt.subgroup_size()
    lane = tt.subgroup_local_id()
    n = tt.group_id(0) * (BLOCK // SG) + tt.subgroup_id()
    if n < N:
        acc = tt.array((M,), tt.f32)
        for m in tt.static_range(M):
            acc[m] = 0.0
        K4 = K // 4
        if FMT == "f32":
            for c in range(lane, K4, SG):  # 4 elements per chunk
                wv = tt.vload(w, n * K4 + c, 4)
                for m in tt.static_range(M):
                    acc[m] += dot4(tt.vload(x, m * K4 + c, 4), wv.x, wv.y, wv.z, wv.w)
        elif FMT == "f16" or FMT == "bf16":
            BF = FMT == "bf16"
            for c in range(lane, K // 8, SG):  # 8 elements: four u32 words
                q = tt.vload(w, n * (K // 8) + c, 4)
                for m in tt.static_range(M):
                    x0 = tt.vload(x, m * K4 + 2 * c, 4)
                    x1 = tt.vload(x, m * K4 + 2 * c + 1, 4)
                    acc[m] += dot4(x0, half_lo(q.x, BF), half_hi(q.x, BF), half_lo(q.y, BF),
                                   half_hi(q.y, BF))
                    acc[m] += dot4(x1, half_lo(q.z, BF), half_hi(q.z, BF), half_lo(q.w, BF),
                                   half_hi(q.w, BF))
        else:
            NB = K // 32
            for b in range(lane, NB, SG):  # one 32-element block per step
                d = tt.f32(scales[n * NB + b])
                if FMT == "q8_0":
                    q0 = tt.vload(w, (n * NB + b) * 2, 4)
                    q1 = tt.vload(w, (n * NB + b) * 2 + 1, 4)
                    for m in tt.static_range(M):
                        xb = m * K4 + b * 8
                        s = 0.0
                        for j in tt.static_range(8):
                            word = q0[j] if j < 4 else q1[j - 4]
                            s += dot4(tt.vload(x, xb + j, 4), sbyte(word, 0), sbyte(word, 1),
                                      sbyte(word, 2), sbyte(word, 3))
                        acc[m] += d * s
                else:
                    q = tt.vload(w, n * NB + b, 4)
                    for m in tt.static_range(M):
                        xb = m * K4 + b * 8
                        s = 0.0
                        sx = 0.0
                        for j in tt.static_range(4):
                            word = q[j]
                            lo = tt.vload(x, xb + j, 4)  # elements 4j … 4j+3: low nibbles
                            hi = tt.vload(x, xb + 4 + j, 4)  # elements 16+4j …: high nibbles
                            s += dot4(lo, nibble(word, 0), nibble(word, 2), nibble(word, 4),
                                      nibble(word, 6))
                            s += dot4(hi, nibble(word, 1), nibble(word, 3), nibble(word, 5),
                                      nibble(word, 7))
                            sx += lo.x + lo.y + lo.z + lo.w + hi.x + hi.y + hi.z + hi.w
                        if FMT == "q4_0":
                            acc[m] += d * (s - 8.0 * sx)
                        else:
                            acc[m] += d * s + tt.f32(mins[n * NB + b]) * sx
        for m in tt.static_range(M):
            total = tt.subgroup_sum(acc[m])
            if lane == 0:
                if HAS_BIAS:
                    total += bias[n]
                if HAS_RESIDUAL:
                    total += residual[m * N + n]
                y[m * N + n] = total


def linear(x: Tensor, w: Weight, bias: Tensor | None = None, residual: Tensor | None = None,
           out: Tensor | None = None) -> Tensor:
    """x [M, K] f32 → [M, N] f32: x @ W.T (+ bias[N]) (+ residual[M, N]; may be `out` itself)."""
    n, k = w.shape
    m = x.size // k
    if k % 32 and w.fmt not in ("f32",):
        raise ValueError(f"K = {k} must be a multiple of 32 for {w.fmt} weights")
    if k % 8:
        raise ValueError(f"K = {k} must be a multiple of 8")
    out = out if out is not None else x.device.empty((m, n), tt.f32)
    dev = x.device
    sg = dev.caps.subgroup_size
    block = max(64, sg)
    rows = block // sg
    data = w.data if w.fmt in ("f32", "q8_0", "q4_0", "q4_1") else w.data.bitview(tt.u32)
    dummy = w.scales if w.scales is not None else data
    for m0 in range(0, m, MAX_GEMV_ROWS):
        mt = min(MAX_GEMV_ROWS, m - m0)
        xs = x.view(m0 * k, (mt, k))
        ys = out.view(m0 * n, (mt, n))
        rs = residual.view(m0 * n, (mt, n)) if residual is not None else ys
        gemv_kernel[(n + rows - 1) // rows, block](
            xs, data, dummy, w.mins if w.mins is not None else dummy,
            bias if bias is not None else ys, rs, ys, n, k, mt, w.fmt, block, bias is not None,
            residual is not None)
    return out
