"""y = x @ W.T (+ bias) (+ residual), with W in any of the weight formats of quant.py.

Decode (M = 1 … 16 rows of x) is memory-bound on W: each subgroup owns one output feature n,
its lanes stride over W's row in chunks read with 16-byte vector loads (4 f32, 8 f16/bf16, or one
32-element Q4 block of 16 bytes), decode them in registers, and accumulate one partial sum per x
row; a subgroup reduction finishes each dot product. CPU OpenCL (PoCL, subgroups of one lane)
gets its own kernel (matmul_cpu.row_matmul_kernel), shaped for how PoCL vectorizes: one work-item
per output element, SIMD within the work-item.
"""

from __future__ import annotations

import tattletale as tt
from tattletale.codegen import native_mma
from tattletale.runtimes import Tensor

from .gemm import gemm
from .matmul_cpu import cpu_linear
from .quant import Weight, cpu_simd, dequant_element, half_hi, half_lo, nibble, sbyte

MAX_GEMV_ROWS = 16
CPU_LANES = 16  # threads per output feature on devices without subgroups (tuned on PoCL)
GEMV_UNROLL = 1  # chunks per loop step (benchmarks/tune_gemv.py measures 1 and 2)
GEMM_TILE = 64  # BM = BN; 16×16 threads, each computing a 4×4 block of outputs
GEMM_BK = 32  # one quantization block of K per step
# From M = 5 on, 16-bit weights go to the matrix units where the device has them: the split-K GEMM
# costs about the same from 1 to 16 rows (W's traffic), the GEMV's x traffic grows with M (H200,
# f32 x, bf16 W, benchmarks/tune_gemm.py: the GEMV as fast or faster at 1-2 rows, on two of three
# shapes at 4; at 8, the specialization rows 5-7 run too, as fast to 2x slower; 2-5x slower at 16).
MMA_MIN_ROWS = 5


@tt.func
def dot4(xv, a, b, c, d):
    return xv.x * a + xv.y * b + xv.z * c + xv.w * d


@tt.kernel
def gemv_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, N: tt.i32, K: tt.i32,
                rows_m: tt.i32, M: tt.constexpr, FMT: tt.constexpr, BLOCK: tt.constexpr,
                LANES: tt.constexpr, UNROLL: tt.constexpr,
                ROWS: tt.constexpr, HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr):
    """LANES consecutive threads share ROWS consecutive output features: lane j takes chunks j,
    j+LANES, … of K, so neighbouring threads read neighbouring memory (coalesced on GPUs,
    vectorized across work-items by CPU OpenCL). Each chunk of x is loaded once into registers
    and used for all ROWS rows; for the block formats its sum (needed for the offsets) is shared
    too. Partial sums meet in a subgroup reduction when LANES is the subgroup size, in shared
    memory otherwise. M is rows_m rounded up to a power of two (fewer specializations); the
    extra rows re-read x's last row and are not stored."""
    SG = tt.subgroup_size()
    tid = tt.local_id(0)
    lane = tid % LANES
    n0 = (tt.group_id(0) * (BLOCK // LANES) + tid // LANES) * ROWS
    QUANT = FMT == "q8_0" or FMT == "q4_0" or FMT == "q4_1"
    CH = 4 if FMT == "f32" else (8 if FMT == "f16" or FMT == "bf16" else 32)  # elements/chunk
    BF = FMT == "bf16"
    NC = K // CH
    acc = tt.array((M, ROWS), tt.f32)
    for m in tt.static_range(M):
        for r in tt.static_range(ROWS):
            acc[m, r] = 0.0
    xa = tt.array((M, CH), tt.f32)
    sx = tt.array((M,), tt.f32)
    for c0 in range(lane, NC, LANES * UNROLL):  # UNROLL chunks per step: more loads in flight
        for u in tt.static_range(UNROLL):
            c = c0 + u * LANES
            if c < NC:
                for m in tt.static_range(M):
                    for j in tt.static_range(CH // 4):
                        v = tt.vload(x, (min(m, rows_m - 1) * K + c * CH) // 4 + j, 4)
                        xa[m, 4 * j] = v.x
                        xa[m, 4 * j + 1] = v.y
                        xa[m, 4 * j + 2] = v.z
                        xa[m, 4 * j + 3] = v.w
                    if QUANT:
                        sx[m] = 0.0
                        for j in tt.static_range(CH):
                            sx[m] += xa[m, j]
                for r in tt.static_range(ROWS):
                    n = n0 + r
                    if n < N:
                        if FMT == "f32":
                            wv = tt.vload(w, n * NC + c, 4)
                            for m in tt.static_range(M):
                                acc[m, r] += (xa[m, 0] * wv.x + xa[m, 1] * wv.y + xa[m, 2] * wv.z
                                              + xa[m, 3] * wv.w)
                        elif FMT == "f16" or FMT == "bf16":
                            q = tt.vload(w, n * NC + c, 4)  # four u32 words: elements 2k, 2k+1 in word k
                            for m in tt.static_range(M):
                                s = 0.0
                                for k in tt.static_range(4):
                                    s += (xa[m, 2 * k] * half_lo(q[k], BF)
                                          + xa[m, 2 * k + 1] * half_hi(q[k], BF))
                                acc[m, r] += s
                        elif FMT == "q8_0":
                            q0 = tt.vload(w, (n * NC + c) * 2, 4)
                            q1 = tt.vload(w, (n * NC + c) * 2 + 1, 4)
                            d = tt.f32(scales[n * NC + c])
                            for m in tt.static_range(M):
                                s = 0.0
                                for j in tt.static_range(8):
                                    word = q0[j] if j < 4 else q1[j - 4]
                                    for b in tt.static_range(4):
                                        s += xa[m, 4 * j + b] * sbyte(word, b)
                                acc[m, r] += d * s
                        else:
                            q = tt.vload(w, n * NC + c, 4)  # byte j: element j (low), j + 16 (high)
                            d = tt.f32(scales[n * NC + c])
                            offset = -8.0 * d if FMT == "q4_0" else tt.f32(mins[n * NC + c])
                            for m in tt.static_range(M):
                                s = 0.0
                                for j in tt.static_range(4):
                                    word = q[j]
                                    for b in tt.static_range(4):
                                        s += xa[m, 4 * j + b] * nibble(word, 2 * b)
                                        s += xa[m, 16 + 4 * j + b] * nibble(word, 2 * b + 1)
                                acc[m, r] += d * s + offset * sx[m]
    if LANES != SG:
        red = tt.shared((M * ROWS, BLOCK), tt.f32)
        for m in tt.static_range(M):
            for r in tt.static_range(ROWS):
                red[m * ROWS + r, tid] = acc[m, r]
        tt.barrier()
    for m in tt.static_range(M):
        for r in tt.static_range(ROWS):
            if LANES == SG:
                total = tt.subgroup_sum(acc[m, r])
            else:
                total = 0.0
                if lane == 0:
                    for j in tt.static_range(LANES):
                        total += red[m * ROWS + r, tid + j]
            n = n0 + r
            if lane == 0 and n < N and m < rows_m:
                if HAS_BIAS:
                    total += bias[n]
                if HAS_RESIDUAL:
                    total += residual[m * N + n]
                y[m * N + n] = total


@tt.kernel
def gemm_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, M: tt.i32, N: tt.i32, K: tt.i32,
                FMT: tt.constexpr, HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr):
    """Tiled GEMM through shared memory for prefill (any weight format, decoded while staging).

    Workgroup (tile of N, tile of M) with 16×16 threads; thread (tx, ty) owns the 4×4 outputs
    (ty + 16i, tx + 16j), so neighbouring threads read neighbouring shared-memory words and store
    neighbouring outputs (no bank conflicts on GPUs; vectorizable across work-items by CPU
    OpenCL, 1.4-1.6× faster there than 4×4 contiguous blocks). Tiles are stored k-major in shared
    memory so the inner loop reads consecutive addresses.
    """
    BM = 64
    BK = 32
    tx = tt.local_id(0)
    ty = tt.local_id(1)
    tid = ty * 16 + tx
    n0 = tt.group_id(0) * BM
    m0 = tt.group_id(1) * BM
    xs = tt.shared((BK, BM), tt.f32)
    ws = tt.shared((BK, BM), tt.f32)
    acc = tt.array((4, 4), tt.f32)
    for i in tt.static_range(4):
        for j in tt.static_range(4):
            acc[i, j] = 0.0
    for k0 in range(0, K, BK):
        for e in tt.static_range(BM * BK // 256):  # 8 elements of each tile per thread
            idx = e * 256 + tid
            r = idx // BK
            c = idx % BK
            xv = 0.0
            if m0 + r < M and k0 + c < K:
                xv = x[(m0 + r) * K + k0 + c]
            xs[c, r] = xv
            wv = 0.0
            if n0 + r < N and k0 + c < K:
                wv = dequant_element(w, scales, mins, n0 + r, k0 + c, K, FMT)
            ws[c, r] = wv
        tt.barrier()
        for kk in range(BK):
            a = tt.array((4,), tt.f32)
            for i in tt.static_range(4):
                a[i] = xs[kk, ty + 16 * i]
            for j in tt.static_range(4):
                bj = ws[kk, tx + 16 * j]
                for i in tt.static_range(4):
                    acc[i, j] += a[i] * bj
        tt.barrier()
    for i in tt.static_range(4):
        m = m0 + ty + 16 * i
        for j in tt.static_range(4):
            n = n0 + tx + 16 * j
            if m < M and n < N:
                v = acc[i, j]
                if HAS_BIAS:
                    v += bias[n]
                if HAS_RESIDUAL:
                    v += residual[m * N + n]
                y[m * N + n] = v


def gemv_rows(n: int, m: int, lanes: int, fmt: str) -> int:
    """Output rows per lane group: more rows reuse each register copy of x (x traffic is 6× the
    weight traffic for Q4 formats, 2× for 16-bit weights) but leave fewer lane groups to keep
    memory busy. Thresholds from benchmarks/tune_gemv.py on an H200."""
    if m > 4:
        return 1
    quant = fmt in ("q8_0", "q4_0", "q4_1")
    rows, min_threads = (4, 1 << 16) if quant else (2, 1 << 17)
    if m > 1:
        rows = min(rows, 2)
    while rows > 1 and n // rows * lanes < min_threads:
        rows //= 2
    return rows


def linear(x: Tensor, w: Weight, bias: Tensor | None = None, residual: Tensor | None = None,
           out: Tensor | None = None, rows: int | None = None, unroll: int | None = None) -> Tensor:
    """x [M, K] f32 → [M, N] f32: x @ W.T (+ bias[N]) (+ residual[M, N]; may be `out` itself).

    CPU OpenCL takes the kernels of matmul_cpu where they apply (unless rows or unroll ask for
    gemv_kernel). Otherwise up to MAX_GEMV_ROWS rows run the memory-bound GEMV kernel; more run a
    GEMM: for f16/bf16 weights from MMA_MIN_ROWS rows on, on devices with matrix units, gemm.gemm
    (tensor cores; x of any float type, f32 accuracy); otherwise the SIMT kernel below (any
    format, decoded while staging; other CPU backends, where the portable mma lowering is no
    faster).
    """
    n, k = w.shape
    m = x.size // k
    if k % 32 and w.fmt != "f32":
        raise ValueError(f"K = {k} must be a multiple of 32 for {w.fmt} weights")
    if k % 8:
        raise ValueError(f"K = {k} must be a multiple of 8")
    out = out if out is not None else x.device.empty((m, n), tt.f32)
    # Unused buffer parameters get any tensor: their constexpr flags keep them unread.
    scales = w.scales if w.scales is not None else w.data
    mins = w.mins if w.mins is not None else scales
    bias_arg = bias if bias is not None else out
    caps = x.device.caps
    if w.fmt in ("f16", "bf16") and m >= MMA_MIN_ROWS and native_mma(caps.target, caps):
        return gemm(x, w.data, out, bias, residual)
    if cpu_simd(x.device) and rows is None and unroll is None and cpu_linear(x, w, bias, residual, out):
        return out
    if m > MAX_GEMV_ROWS:
        grid = (-(-n // GEMM_TILE), -(-m // GEMM_TILE))
        gemm_kernel[grid, (16, 16)](x, w.data, scales, mins, bias_arg,
                                    residual if residual is not None else out, out, m, n, k, w.fmt,
                                    bias is not None, residual is not None)
        return out
    # 16-bit weights are read as u32 words, eight values per 16-byte load
    data = w.data.bitview(tt.u32) if w.fmt in ("f16", "bf16") else w.data
    sg = x.device.caps.subgroup_size
    lanes = sg if sg > 1 else CPU_LANES
    block = max(64, lanes)
    for m0 in range(0, m, MAX_GEMV_ROWS):
        mt = min(MAX_GEMV_ROWS, m - m0)
        m_spec = 1 << (mt - 1).bit_length()  # 1, 2, 4, 8 or 16
        r = rows or gemv_rows(n, m_spec, lanes, w.fmt)
        ys = out.view(m0 * n, (mt, n))
        rs = residual.view(m0 * n, (mt, n)) if residual is not None else ys
        gemv_kernel[-(-n // (block // lanes * r)), block](
            x.view(m0 * k, (mt, k)), data, scales, mins, bias_arg, rs, ys, n, k, mt, m_spec, w.fmt,
            block, lanes, unroll or GEMV_UNROLL, r, bias is not None, residual is not None)
    return out
