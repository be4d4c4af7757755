"""y = x @ W.T (+ bias) (+ residual), with W in any of the weight formats of quant.py.

Decode (M = 1 … 16 rows of x) is memory-bound on W: a group of lanes (a subgroup, or part of one
for short rows) owns ROWS output features, its lanes stride over W's rows in chunks read with
16-byte vector loads (4 f32, 8 f16/bf16, one 32-element Q4 block or half a Q8 block), several
chunks' loads in flight before any is used; chunks are decoded in registers (the block formats
exactly, by one of three decoders) and accumulated per x row; shuffles or a subgroup reduction
finish each dot product. CPU OpenCL (PoCL, subgroups of one lane)
gets its own kernel (matmul_cpu.row_matmul_kernel), shaped for how PoCL vectorizes: one work-item
per output element, SIMD within the work-item.
"""

from __future__ import annotations

import tattletale as tt
from tattletale.codegen import native_mma
from tattletale.runtimes import Tensor

from .gemm import gemm
from .matmul_cpu import cpu_linear
from .quant import Weight, cpu_simd, dequant_element, half_hi, half_lo, sbyte

MAX_GEMV_ROWS = 16
CPU_LANES = 16  # threads per output feature on devices without subgroups (tuned on PoCL)
GEMV_UNROLL = 4  # chunks per lane per loop step, 16-bit and f32 weights (benchmarks/tune_gemv.py)
GEMV_UNROLL_QUANT = 2  # the same for the block formats
GEMV_BLOCK = 64  # threads per workgroup of gemv_kernel (at least one lane group)
GEMV_DEC_CUDA_Q4 = "f16"  # decoders of the block formats on CUDA (q4_scaled, gemv_decoder)
GEMV_DEC_CUDA_Q8 = "int"
GEMV_PIPE_QUANT = True  # the block formats load each step's weights a step ahead (gemv_pipe)
# x staged in shared memory (gemv_kernel's XS, padding floats per chunk) on CUDA, per (format, M
# specialization) where it measured faster (H200, tune_gemv.py --xs, 2026-11-22); gemv_xs.
GEMV_XS = {("q4_1", 1): 1, ("q4_1", 4): 1, ("q8_0", 1): 1, ("q8_0", 4): 1,
           ("bf16", 1): 4, ("f16", 1): 4}
GEMV_XS_BYTES = 48 * 1024  # the most shared memory a step's staged x may take
GEMM_TILE = 64  # BM = BN; 16×16 threads, each computing a 4×4 block of outputs
GEMM_BK = 32  # one quantization block of K per step
# From M = 5 on, 16-bit weights go to the matrix units where the device has them: the split-K GEMM
# costs about the same from 1 to 16 rows (W's traffic), the GEMV's x traffic grows with M (H200,
# f32 x, bf16 W, benchmarks/tune_gemm.py: the GEMV as fast or faster at 1-2 rows, on two of three
# shapes at 4; at 8, the specialization rows 5-7 run too, as fast to 2x slower; 2-5x slower at 16).
MMA_MIN_ROWS = 5


@tt.func
def q4_scaled(word, k, DEC):
    """Nibble k (0 … 7) of a u32 as an exact f32 q·16^p, p = q4_pos(k, DEC), by one of three
    decoders. "int": shift, mask and convert. "magic": the nibble masked in place into the
    mantissa of 2^23 (nibbles 5-7 after one shift of the word by 12) and 2^23 subtracted, with
    no conversion; the caller sums each position p apart and scales the sums by 16^-p once per
    block. "f16": two nibbles per mask into the mantissas of an f16 pair (1024 + q; 64 + q for
    the nibbles at bits 4-7 of a half; nibbles 2, 3, 6, 7 after one shift of the word by 8),
    then a half → float conversion and a subtraction."""
    if DEC == "magic":  # word: (w | M, (w >> 12) | M) from q4_magic_words
        src = word[0] if k <= 4 else word[1]
        return tt.bitcast(src & ((15 << (4 * q4_pos(k, DEC))) | 0x4B000000), tt.f32) - 8388608.0
    if DEC == "f16":
        src = word if k % 4 < 2 else word >> 8
        hi = k % 2 == 1
        pair = (src & (0x00F000F0 if hi else 0x000F000F)) | (0x54005400 if hi else 0x64006400)
        return tt.f32(tt.bitcast(tt.u16(pair >> 16 if k >= 4 else pair & 65535), tt.f16)) - \
            (64.0 if hi else 1024.0)
    return tt.f32((word >> (4 * k)) & 15)


@tt.func
def q8_scaled(word, b, DEC):
    """Signed byte b (0 … 3) of a u32 as an exact f32 q·256^p, by the decoders of q4_scaled
    (their mask operation also flips the byte's sign bit, so the field holds q + 128). "magic":
    bytes 2, 3 after a shift of the word by 16, p = b % 2; otherwise p = 0."""
    if DEC == "magic":  # word's sign bits flipped by the caller
        return tt.bitcast(((word >> (8 * b)) & 255) | 0x4B000000, tt.f32) - 8388736.0
    if DEC == "f16":
        pair = ((word if b % 2 == 0 else word >> 8) & 0x00FF00FF) ^ 0x64806480  # 1024 + q + 128
        return tt.f32(tt.bitcast(tt.u16(pair >> 16 if b >= 2 else pair & 65535), tt.f16)) - 1152.0
    return sbyte(word, b)


def q4_pos(k: int, dec: str) -> int:
    """The power of 16 in q4_scaled(word, k, dec)."""
    return (k if k <= 4 else k - 3) if dec == "magic" else 0


@tt.func
def gemv_load(w, scales, mins, wq, dq, mq, wrow, c0, FMT, LANES, U, ROWS):
    """Issue the weight loads of chunks c0, c0 + LANES, … (U of them) of the ROWS rows whose first
    chunk is wrow[r] into wq (words), dq (scales) and mq (offsets): U·ROWS independent 16-byte
    loads per lane (twice that for Q8_0), none of them used yet."""
    LOADS = 2 if FMT == "q8_0" else 1  # 16-byte loads per chunk
    for u in tt.static_range(U):
        for r in tt.static_range(ROWS):
            b = wrow[r] + c0 + u * LANES  # chunk index in the whole matrix
            for h in tt.static_range(LOADS):
                q = tt.vload(w, b * LOADS + h, 4)
                for i in tt.static_range(4):
                    wq[u, r, 4 * h + i] = q[i]
            if FMT == "q8_0" or FMT == "q4_0" or FMT == "q4_1":
                dq[u, r] = tt.f32(scales[b])
                if FMT == "q4_1":
                    mq[u, r] = tt.f32(mins[b])
                elif FMT == "q4_0":
                    mq[u, r] = -8.0 * dq[u, r]


@tt.func
def gemv_step(x, w, scales, mins, acc, wrow, c0, K, rows_m, M, FMT, LANES, U, ROWS, DEC):
    """gemv_load then gemv_compute of one step."""
    LOADS = 2 if FMT == "q8_0" else 1
    wq = tt.array((U, ROWS, 4 * LOADS), tt.u32)
    dq = tt.array((U, ROWS), tt.f32)
    mq = tt.array((U, ROWS), tt.f32)
    gemv_load(w, scales, mins, wq, dq, mq, wrow, c0, FMT, LANES, U, ROWS)
    gemv_compute(x, wq, dq, mq, acc, c0, K, rows_m, M, FMT, LANES, U, ROWS, DEC, 0, 0)


@tt.func
def gemv_stage_step(x, xs, w, scales, mins, acc, wrow, cb, lane, tid, K, rows_m, M, FMT, LANES, U,
                    ROWS, DEC, BLOCK, XS):
    """gemv_step with x staged in shared memory: the step's weight loads, then gemv_stage."""
    LOADS = 2 if FMT == "q8_0" else 1
    CH = 4 if FMT == "f32" else (8 if FMT == "f16" or FMT == "bf16" else 32)
    wq = tt.array((U, ROWS, 4 * LOADS), tt.u32)
    dq = tt.array((U, ROWS), tt.f32)
    mq = tt.array((U, ROWS), tt.f32)
    gemv_load(w, scales, mins, wq, dq, mq, wrow, cb + lane, FMT, LANES, U, ROWS)
    gemv_stage(x, xs, cb, K, rows_m, tid, M, CH, LANES * U, BLOCK, XS)
    gemv_compute(xs, wq, dq, mq, acc, cb + lane, K, rows_m, M, FMT, LANES, U, ROWS, DEC, XS, lane)


@tt.func
def gemv_stage(x, xs, cb, K, rows_m, tid, M, CH, STEP, BLOCK, XS):
    """Copy chunks cb … cb + STEP - 1 of every x row into shared memory, 16-byte loads by the
    whole workgroup (neighbouring threads, neighbouring addresses); each chunk padded by XS
    floats against bank conflicts when lanes read their chunks. Barriers on both sides."""
    NV = STEP * CH // 4  # 4-float vectors per row
    XW = STEP * (CH + XS)
    tt.barrier()
    for m in tt.static_range(M):
        for t in tt.static_range((NV + BLOCK - 1) // BLOCK):
            vi = t * BLOCK + tid
            if NV % BLOCK == 0 or vi < NV:
                v = tt.vload(x, (min(m, rows_m - 1) * K + cb * CH) // 4 + vi, 4)
                o = m * XW + (vi // (CH // 4)) * (CH + XS) + (vi % (CH // 4)) * 4
                for i in tt.static_range(4):
                    xs[o + i] = v[i]
    tt.barrier()


@tt.func
def gemv_compute(x, wq, dq, mq, acc, c0, K, rows_m, M, FMT, LANES, U, ROWS, DEC, XS, xl):
    """Decode the loaded chunks and add their products with x into acc[m, r]: each chunk of x is
    loaded once for all rows (and, for Q4, summed once for the block offsets). With XS, x is the
    shared copy of gemv_stage and the lane's first chunk is its local chunk xl."""
    Q4 = FMT == "q4_0" or FMT == "q4_1"
    CH = 4 if FMT == "f32" else (8 if FMT == "f16" or FMT == "bf16" else 32)  # elements/chunk
    NP = 5 if DEC == "magic" and FMT != "q8_0" else 1  # partial sums per block (q4_pos)
    xa = tt.array((M, CH), tt.f32)
    sx = tt.array((M,), tt.f32)
    sp = tt.array((M, NP), tt.f32)
    mw = tt.array((2,), tt.u32)
    for u in tt.static_range(U):
        c = c0 + u * LANES
        for m in tt.static_range(M):
            if XS:
                o = m * (LANES * U * (CH + XS)) + (xl + u * LANES) * (CH + XS)
                for j in tt.static_range(CH):
                    xa[m, j] = x[o + j]
            else:
                for j in tt.static_range(CH // 4):
                    v = tt.vload(x, (min(m, rows_m - 1) * K + c * CH) // 4 + j, 4)
                    for i in tt.static_range(4):
                        xa[m, 4 * j + i] = v[i]
            if Q4:
                sx[m] = 0.0
                for j in tt.static_range(CH):
                    sx[m] += xa[m, j]
        for r in tt.static_range(ROWS):
            if FMT == "f32":
                for k in tt.static_range(4):
                    wk = tt.bitcast(wq[u, r, k], tt.f32)
                    for m in tt.static_range(M):
                        acc[m, r] += xa[m, k] * wk
            elif FMT == "f16" or FMT == "bf16":
                for k in tt.static_range(4):  # word k: elements 2k, 2k+1
                    lo = half_lo(wq[u, r, k], FMT == "bf16")
                    hi = half_hi(wq[u, r, k], FMT == "bf16")
                    for m in tt.static_range(M):
                        acc[m, r] += xa[m, 2 * k] * lo
                        acc[m, r] += xa[m, 2 * k + 1] * hi
            else:
                for m in tt.static_range(M):
                    for p in tt.static_range(NP):
                        sp[m, p] = 0.0
                for j in tt.static_range(8 if FMT == "q8_0" else 4):
                    word = wq[u, r, j]
                    if FMT == "q8_0" and DEC == "magic":
                        word = word ^ 0x80808080  # bytes q + 128
                    if FMT != "q8_0" and DEC == "magic":  # (w | M) & (mask | M) = (w & mask) | M:
                        mw[0] = word | 0x4B000000  # one constant per decoding operation
                        mw[1] = (word >> 12) | 0x4B000000
                    for b in tt.static_range(4):
                        if FMT == "q8_0":  # word j: elements 4j … 4j+3
                            t = q8_scaled(word, b, DEC)
                            for m in tt.static_range(M):
                                sp[m, b % NP] += xa[m, 4 * j + b] * t
                        else:  # byte b of word j: elements 4j+b (low nibble), 16+4j+b (high)
                            t0 = q4_scaled(mw if DEC == "magic" else word, 2 * b, DEC)
                            t1 = q4_scaled(mw if DEC == "magic" else word, 2 * b + 1, DEC)
                            for m in tt.static_range(M):
                                sp[m, q4_pos(2 * b, DEC)] += xa[m, 4 * j + b] * t0
                                sp[m, q4_pos(2 * b + 1, DEC)] += xa[m, 16 + 4 * j + b] * t1
                for m in tt.static_range(M):
                    s = sp[m, 0]
                    for p in tt.static_range(1, NP):
                        s += sp[m, p] * (1.0 / (256.0 if FMT == "q8_0" else 16.0) ** p)
                    if Q4:
                        acc[m, r] += dq[u, r] * s + mq[u, r] * sx[m]
                    else:
                        acc[m, r] += dq[u, r] * s


@tt.kernel
def gemv_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer[tt.u32], scales: tt.Buffer, mins: tt.Buffer,
                bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, N: tt.i32, K: tt.i32,
                rows_m: tt.i32, M: tt.constexpr, FMT: tt.constexpr, BLOCK: tt.constexpr,
                LANES: tt.constexpr, UNROLL: tt.constexpr, ROWS: tt.constexpr,
                HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr, DEC: tt.constexpr,
                PIPE: tt.constexpr, XS: tt.constexpr):
    """LANES consecutive threads share ROWS consecutive output features: lane j takes chunks j,
    j+LANES, … of K, so neighbouring threads read neighbouring memory (coalesced on GPUs,
    vectorized across work-items by CPU OpenCL). W arrives as u32 words whatever its format.
    The chunk loop advances UNROLL chunks per lane at a time with all their loads issued first,
    then finishes the remainder one chunk at a time; rows past N read row N - 1 (in bounds, so
    no load needs a guard) and are not stored. Each chunk of x is loaded once into registers
    and used for all ROWS rows; for the block formats its sum (needed for the offsets) is shared
    too. Partial sums meet in subgroup shuffles when LANES divides the subgroup, in shared
    memory otherwise. M is rows_m rounded up to a power of two (fewer specializations); the
    extra rows re-read x's last row and are not stored. DEC picks the decoder of the block
    formats (q4_scaled); with PIPE each step's weights are loaded while the step before computes
    (register double buffering). With XS > 0 each unrolled step's x (all M rows) is first staged
    in shared memory by the whole workgroup, coalesced (gemv_stage, chunks padded by XS floats),
    and lanes read their chunks from there; the loop then runs over workgroup-uniform bounds
    (the barriers), and the remainder chunks read x directly."""
    SG = tt.subgroup_size()
    tid = tt.local_id(0)
    lane = tid % LANES
    n0 = (tt.group_id(0) * (BLOCK // LANES) + tid // LANES) * ROWS
    CH = 4 if FMT == "f32" else (8 if FMT == "f16" or FMT == "bf16" else 32)  # elements/chunk
    NC = K // CH
    acc = tt.array((M, ROWS), tt.f32)
    for m in tt.static_range(M):
        for r in tt.static_range(ROWS):
            acc[m, r] = 0.0
    wrow = tt.array((ROWS,), tt.i32)
    for r in tt.static_range(ROWS):
        wrow[r] = min(n0 + r, N - 1) * NC
    STEP = LANES * UNROLL
    full = NC - NC % STEP
    xs = tt.shared((M * STEP * (CH + XS) if XS else 1,), tt.f32)
    if PIPE:  # the next step's weights load while this step computes
        LOADS = 2 if FMT == "q8_0" else 1
        wq = tt.array((UNROLL, ROWS, 4 * LOADS), tt.u32)
        dq = tt.array((UNROLL, ROWS), tt.f32)
        mq = tt.array((UNROLL, ROWS), tt.f32)
        wn = tt.array((UNROLL, ROWS, 4 * LOADS), tt.u32)
        dn = tt.array((UNROLL, ROWS), tt.f32)
        mn = tt.array((UNROLL, ROWS), tt.f32)
        if lane < full:
            gemv_load(w, scales, mins, wq, dq, mq, wrow, lane, FMT, LANES, UNROLL, ROWS)
        for cb in range(0, full, STEP):
            c0 = cb + lane
            if cb + STEP < full:
                gemv_load(w, scales, mins, wn, dn, mn, wrow, c0 + STEP, FMT, LANES, UNROLL, ROWS)
            if XS:
                gemv_stage(x, xs, cb, K, rows_m, tid, M, CH, STEP, BLOCK, XS)
                gemv_compute(xs, wq, dq, mq, acc, c0, K, rows_m, M, FMT, LANES, UNROLL, ROWS, DEC,
                             XS, lane)
            else:
                gemv_compute(x, wq, dq, mq, acc, c0, K, rows_m, M, FMT, LANES, UNROLL, ROWS, DEC,
                             0, 0)
            for u in tt.static_range(UNROLL):
                for r in tt.static_range(ROWS):
                    for i in tt.static_range(4 * LOADS):
                        wq[u, r, i] = wn[u, r, i]
                    dq[u, r] = dn[u, r]
                    mq[u, r] = mn[u, r]
    elif XS:
        for cb in range(0, full, STEP):
            gemv_stage_step(x, xs, w, scales, mins, acc, wrow, cb, lane, tid, K, rows_m, M, FMT,
                            LANES, UNROLL, ROWS, DEC, BLOCK, XS)
    else:
        for c0 in range(lane, full, STEP):
            gemv_step(x, w, scales, mins, acc, wrow, c0, K, rows_m, M, FMT, LANES, UNROLL, ROWS, DEC)
    for c0 in range(full + lane, NC, LANES):
        gemv_step(x, w, scales, mins, acc, wrow, c0, K, rows_m, M, FMT, LANES, 1, ROWS, DEC)
    if LANES > SG:
        red = tt.shared((M * ROWS, BLOCK), tt.f32)
        for m in tt.static_range(M):
            for r in tt.static_range(ROWS):
                red[m * ROWS + r, tid] = acc[m, r]
        tt.barrier()
    for m in tt.static_range(M):
        for r in tt.static_range(ROWS):
            if LANES == SG:
                total = tt.subgroup_sum(acc[m, r])
            elif LANES < SG:  # lane groups inside a subgroup: butterfly over the group's lanes
                total = acc[m, r]
                for off in (64, 32, 16, 8, 4, 2, 1):
                    if off < LANES:
                        total += tt.shuffle_xor(total, off)
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
    """Output rows per lane group: more rows reuse each register copy of x (x traffic is 8× the
    weight traffic for Q4 formats, 2× for 16-bit weights) but leave fewer lane groups to keep
    memory busy. From benchmarks/tune_gemv.py on an H200 (2026-11-22): the block formats take 4
    rows down to 2^15 threads at any M (2 rows: 1.3-1.6× slower at M = 1, up to 1.6× at M = 4);
    16-bit weights 2 rows from 2^17 threads at M = 1 (1.06× at 14336×4096, 1.1× slower at
    4096×14336), and at M = 2-4, where x costs more, 2 rows from 2^15 and 4 from 2^17 threads
    (4096² bf16 at M = 4: 15.5 µs against 23.2 with one row)."""
    if m > 4:
        return 1
    if fmt in ("q8_0", "q4_0", "q4_1"):
        rows, min_threads = 4, 1 << 15
    elif m == 1:
        rows, min_threads = 2, 1 << 17
    else:
        rows = 4 if n // 4 * lanes >= 1 << 17 else 2
        min_threads = 1 << 15
    while rows > 1 and n // rows * lanes < min_threads:
        rows //= 2
    return rows


def gemv_lanes(k: int, fmt: str, sg: int, unroll: int) -> int:
    """Lanes per output feature: the subgroup, halved while a lane would get fewer than two full
    unrolled steps of K (short rows: more features per subgroup instead of idle lanes)."""
    ch = 4 if fmt == "f32" else (8 if fmt in ("f16", "bf16") else 32)
    lanes = sg
    while lanes > 4 and k // ch < 2 * lanes * unroll:
        lanes //= 2
    return lanes


def gemv_unroll(fmt: str) -> int:
    """Chunks per lane per loop step, all loaded before any is used."""
    return GEMV_UNROLL if fmt in ("f32", "f16", "bf16") else GEMV_UNROLL_QUANT


def gemv_decoder(caps, fmt: str) -> str:
    """The block formats' decoder (q4_scaled). On CUDA, where a half → float conversion is one
    instruction, f16 pairs for Q4 (H200, tune_gemv: 27.7 µs at 4096×14336 Q4_1 against 30.9 for
    "magic", 37.4 for "int") and the integer conversion for Q8_0 (within 5 % of the others);
    elsewhere the f32 magic number, which needs no conversion instruction at all."""
    if caps.target == "cuda":
        return GEMV_DEC_CUDA_Q8 if fmt == "q8_0" else GEMV_DEC_CUDA_Q4
    return "magic"


def gemv_pipe(fmt: str) -> bool:
    """Register double buffering of the weights (gemv_kernel's PIPE)."""
    return GEMV_PIPE_QUANT and fmt in ("q8_0", "q4_0", "q4_1")


def gemv_xs(caps, fmt: str, m: int, lanes: int, unroll: int, xs: int | None) -> int:
    """gemv_kernel's XS (x staged in shared memory, chunks padded by XS floats; 0: off): the
    setting asked for, else GEMV_XS on CUDA (16-bit weights only with whole-subgroup lane groups:
    f16 at 49152×576 was 3 % slower); 0 where M rows of a step's x would not fit in GEMV_XS_BYTES.
    H200, µs before → after: Q4_1 27.4 → 24.3, 27.2 → 26.3, 29.0 → 27.3 at M = 1 (14336×4096,
    4096×14336, 49152×576) and 88 → 50, 81 → 45, 34 → 29 at M = 4; Q8_0 31.9 → 26.6, 27.9 → 25.0,
    29.1 → 29.0 and 91 → 47, 79 → 42, 37 → 28; bf16/f16 at M = 1 33.1 → 30.6 / 34.6 → 30.7 and
    33.6 → 31.4 / 35.8 → 31.5 (85-92 % of copy); 16-bit at M = 4 1.05-1.7x slower (off)."""
    ch = 4 if fmt == "f32" else (8 if fmt in ("f16", "bf16") else 32)
    if xs is None:
        xs = GEMV_XS.get((fmt, m), 0) if caps.target == "cuda" else 0
        if ch == 8 and lanes < caps.subgroup_size:
            xs = 0
    if xs and m * lanes * unroll * (ch + xs) * 4 > GEMV_XS_BYTES:
        return 0
    return xs


def linear(x: Tensor, w: Weight, bias: Tensor | None = None, residual: Tensor | None = None,
           out: Tensor | None = None, rows: int | None = None, unroll: int | None = None,
           lanes: int | None = None, block: int | None = None, dec: str | None = None,
           pipe: bool | None = None, xs: int | None = None) -> Tensor:
    """x [M, K] f32 → [M, N] f32: x @ W.T (+ bias[N]) (+ residual[M, N]; may be `out` itself).

    CPU OpenCL takes the kernels of matmul_cpu where they apply (unless a GEMV setting — rows,
    unroll, lanes, block, dec, pipe, xs: see gemv_kernel — asks for gemv_kernel). Otherwise up to
    MAX_GEMV_ROWS rows run the memory-bound GEMV kernel; more run a GEMM: for f16/bf16 weights
    from MMA_MIN_ROWS rows on, on devices with matrix units, gemm.gemm (tensor cores; x of any
    float type, f32 accuracy); otherwise the SIMT kernel below (any format, decoded while
    staging; other CPU backends, where the portable mma lowering is no faster).
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
    tuned = (rows, unroll, lanes, block, dec, pipe, xs) != (None,) * 7
    if cpu_simd(x.device) and not tuned and cpu_linear(x, w, bias, residual, out):
        return out
    if m > MAX_GEMV_ROWS:
        grid = (-(-n // GEMM_TILE), -(-m // GEMM_TILE))
        gemm_kernel[grid, (16, 16)](x, w.data, scales, mins, bias_arg,
                                    residual if residual is not None else out, out, m, n, k, w.fmt,
                                    bias is not None, residual is not None)
        return out
    data = w.data.bitview(tt.u32)  # every format is read as u32 words, 16 bytes per load
    sg = caps.subgroup_size
    unroll = unroll or gemv_unroll(w.fmt)
    lanes = lanes or (gemv_lanes(k, w.fmt, sg, unroll) if sg > 1 else CPU_LANES)
    block = block or max(GEMV_BLOCK, lanes)
    dec = dec or gemv_decoder(caps, w.fmt)
    pipe = gemv_pipe(w.fmt) if pipe is None else pipe
    for m0 in range(0, m, MAX_GEMV_ROWS):
        mt = min(MAX_GEMV_ROWS, m - m0)
        m_spec = 1 << (mt - 1).bit_length()  # 1, 2, 4, 8 or 16
        r = rows or gemv_rows(n, m_spec, lanes, w.fmt)
        x_s = gemv_xs(caps, w.fmt, m_spec, lanes, unroll, xs)
        ys = out.view(m0 * n, (mt, n))
        rs = residual.view(m0 * n, (mt, n)) if residual is not None else ys
        gemv_kernel[-(-n // (block // lanes * r)), block](
            x.view(m0 * k, (mt, k)), data, scales, mins, bias_arg, rs, ys, n, k, mt, m_spec, w.fmt,
            block, lanes, unroll, r, bias is not None, residual is not None, dec, pipe, x_s)
    return out
