"""Matrix products for CPU OpenCL (PoCL), shaped for how PoCL vectorizes a kernel.

PoCL compiles each work-item's code with LLVM's vectorizers and runs work-items as loops: the
loop vectorizer cannot vectorize a work-item loop that contains the kernel's K loop, and a uniform
K loop gets implicit barriers, after which values from before the loop are kept per work-item in
memory (gathers). What vectorizes well is a work-item's own unrolled code (SLP). So here one
work-item owns output features and keeps SIMD-wide partial sums in registers; W is read as u32
words and f16 scales as u16 bits, decoded with integer arithmetic (no builtin calls, which stop
the vectorizer).
"""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .quant import Weight

STRIP_ROWS = 32  # rows of x per work-item in gemm_strip_kernel (two AVX-512 registers)
STRIP_BLOCK = 16  # work-items (output features) per group of gemm_strip_kernel / gemv_strip_kernel
# In A/B runs at M = 8 and 16 the strip GEMM was not consistently faster than the GEMV kernel.
STRIP_GEMM_MIN_ROWS = 17
STRIP_GEMV_ROWS = 4  # up to this many rows, non-f32 weights take gemv_strip_kernel on CPU OpenCL


_ELEMENT_VIEW = {"q4_0": tt.u8, "q4_1": tt.u8, "q8_0": tt.i8, "f16": tt.u16, "bf16": tt.u16, "f32": tt.f32}


def strip_operands(w: Weight) -> tuple[Tensor, Tensor, Tensor]:
    """W's data viewed as one element per value (bytes for Q4 pairs and Q8, half words for 16-bit
    formats) and its f32 scales and mins (see Weight), for decode_step; absent arrays are replaced
    by any tensor (unread)."""
    data = w.data.bitview(_ELEMENT_VIEW[w.fmt])
    scales = w.scales if w.scales is not None else data
    mins = w.mins if w.mins is not None else scales
    return data, scales, mins


@tt.func
def f16_bits(h):
    """An f16 given as its bits (u32, high half zero) as f32, with integer and float arithmetic only
    (exact for normal and subnormal values, zero included; not inf/NaN): PoCL does not vectorize the
    vload_half call across work-items."""
    mag = tt.bitcast((h & 32767) << 13, tt.f32) * 5.192296858534828e33  # 2^112 rebiases the exponent
    return -mag if h & 32768 else mag


@tt.kernel
def transpose_rows_kernel(x: tt.Buffer[tt.f32], xt: tt.Buffer[tt.f32], M: tt.i32, K: tt.i32, MP: tt.i32):
    """xt[k, m] = x[m, k] for m < M, zero for M <= m < MP (rows padded to the GEMM's row tile)."""
    i = tt.global_id(0)
    if i < K * MP:
        k = i // MP
        m = i % MP
        xt[i] = x[m * K + k] if m < M else 0.0


@tt.func
def decode_step(w, scales, mins, i, wv, FMT):
    """Decode step i of a strip kernel's row walk (one 32-element block of a quantized format, or
    8 values of a float format) into the private array wv. Every element is decoded by the same
    expression from its own byte (Q4: low and high nibble of byte j are elements j and j + 16),
    half word or word, so LLVM's SLP vectorizer turns the step into a few vector loads, extensions
    and conversions; scales and minimums come as f32 (decoding f16 would cost more than the bytes).
    The element offsets are 64-bit sums of a base and a constant: PoCL's compiler does not treat
    32-bit index arithmetic as non-wrapping, so only then does it see consecutive addresses
    (vector loads, not gathers)."""
    base = tt.i64(i) * (32 if FMT == "q8_0" else (16 if FMT == "q4_0" or FMT == "q4_1" else 8))
    if FMT == "q4_0" or FMT == "q4_1":
        d = scales[i]
        offset = -8.0 * d if FMT == "q4_0" else mins[i]
        for j in tt.static_range(16):
            b = tt.u32(w[base + j])
            wv[j] = d * tt.f32(b & 15) + offset
            wv[16 + j] = d * tt.f32(b >> 4) + offset
    elif FMT == "q8_0":
        d = scales[i]
        for j in tt.static_range(32):
            wv[j] = d * tt.f32(w[base + j])
    else:
        for j in tt.static_range(8):
            if FMT == "f32":
                wv[j] = w[base + j]
            elif FMT == "bf16":
                wv[j] = tt.bitcast(tt.u32(w[base + j]) << 16, tt.f32)
            else:
                wv[j] = f16_bits(tt.u32(w[base + j]))


@tt.kernel
def gemm_strip_kernel(xt: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                      bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, M: tt.i32, N: tt.i32,
                      K: tt.i32, MP: tt.i32, FMT: tt.constexpr, MT: tt.constexpr, HAS_BIAS: tt.constexpr,
                      HAS_RESIDUAL: tt.constexpr):
    """GEMM for CPU OpenCL (PoCL): work-item n owns output feature n for the MT rows of its group.

    PoCL compiles each work-item's code with LLVM's vectorizers, which pack the MT independent
    accumulators into SIMD registers: per element of W (decoded once, as a scalar, for all MT rows)
    one vector FMA with MT consecutive values of x, read from xt = x transposed ([K, MP]: rows
    padded to a multiple of MT) so they are contiguous. The K loop's bound depends on the
    work-item on purpose: PoCL then keeps the whole loop inside each work-item instead of
    splitting it into per-step regions, whose values it would keep in memory per work-item
    (gathers). Weights are read as u32 words and f16 scales as u16 bits (no builtin calls).
    """
    QUANT = FMT == "q8_0" or FMT == "q4_0" or FMT == "q4_1"
    CH = 32 if QUANT else 8  # elements per step
    NC = K // CH
    gn = tt.global_id(0)
    n = min(gn, N - 1)  # the last group's extra work-items recompute row N - 1 and store nothing
    m0 = tt.group_id(1) * MT
    acc = tt.array((MT,), tt.f32)
    for m in tt.static_range(MT):
        acc[m] = 0.0
    wv = tt.array((CH,), tt.f32)
    for c in range(NC if n >= 0 else 0):  # n >= 0 always
        decode_step(w, scales, mins, n * NC + c, wv, FMT)
        for j in tt.static_range(CH):
            base = (c * CH + j) * MP + m0
            for m in tt.static_range(MT):
                acc[m] += xt[base + m] * wv[j]
    for m in tt.static_range(MT):
        if gn < N and m0 + m < M:
            t = acc[m]
            if HAS_BIAS:
                t += bias[gn]
            if HAS_RESIDUAL:
                t += residual[(m0 + m) * N + gn]
            y[(m0 + m) * N + gn] = t



@tt.kernel
def gemv_strip_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                      bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, N: tt.i32, K: tt.i32,
                      rows_m: tt.i32, M: tt.constexpr, FMT: tt.constexpr, HAS_BIAS: tt.constexpr,
                      HAS_RESIDUAL: tt.constexpr):
    """GEMV for CPU OpenCL (PoCL) at M <= 4: work-item n owns output feature n and walks its row of W
    (contiguous words, each decoded once for all M rows) with VL partial sums per row of x, which
    LLVM's vectorizers turn into SIMD registers; the work-item-dependent loop bound keeps PoCL from
    splitting the loop into per-step regions (see gemm_strip_kernel). 1.3-1.9x gemv_kernel on PoCL
    for Q4_1/Q8_0/f16 at SmolLM2 shapes; not for f32 (slower) or M > 4 (the per-row partial sums
    outgrow the registers)."""
    QUANT = FMT == "q8_0" or FMT == "q4_0" or FMT == "q4_1"
    CH = 32 if QUANT else 8  # elements per step
    VL = 16 if QUANT else 8  # partial sums per row of x
    NC = K // CH
    gn = tt.global_id(0)
    n = min(gn, N - 1)
    acc = tt.array((M, VL), tt.f32)
    for m in tt.static_range(M):
        for v in tt.static_range(VL):
            acc[m, v] = 0.0
    wv = tt.array((CH,), tt.f32)
    for c in range(NC if n >= 0 else 0):  # n >= 0 always
        decode_step(w, scales, mins, n * NC + c, wv, FMT)
        for m in tt.static_range(M):
            row = tt.i64(min(m, rows_m - 1) * K + c * CH)  # 64-bit: see decode_step
            for v in tt.static_range(VL):  # one statement per partial sum: what the SLP vectorizer packs
                if CH == VL:
                    acc[m, v] += x[row + v] * wv[v]
                else:
                    acc[m, v] += x[row + v] * wv[v] + x[row + VL + v] * wv[VL + v]
    for m in tt.static_range(M):
        # A tree of halving vector adds: a running sum would be vectorized as one long chain with
        # the accumulators' lanes regrouped inside the loop (gathers), at half the speed.
        for s in tt.static_range(1, VL.bit_length()):
            for v in tt.static_range(VL >> s):
                acc[m, v] += acc[m, v + (VL >> s)]
        t = acc[m, 0]
        if gn < N and m < rows_m:
            if HAS_BIAS:
                t += bias[gn]
            if HAS_RESIDUAL:
                t += residual[m * N + gn]
            y[m * N + gn] = t


def cpu_linear(x: Tensor, w: Weight, bias: Tensor | None, residual: Tensor | None, out: Tensor) -> bool:
    """matmul.linear on CPU OpenCL with the kernels above, where they are the faster choice: the
    strip GEMM above the GEMV's rows (2-2.5x the tiled kernel on PoCL), the strip GEMV up to
    STRIP_GEMV_ROWS rows of non-f32 weights. False when neither applies."""
    n, k = w.shape
    m = x.size // k
    bias_arg = bias if bias is not None else out
    residual_arg = residual if residual is not None else out
    if m >= STRIP_GEMM_MIN_ROWS:
        mp = -(-m // STRIP_ROWS) * STRIP_ROWS
        xt = x.device.empty((k, mp), tt.f32)
        transpose_rows_kernel[-(-k * mp // 256), 256](x, xt, m, k, mp)
        gemm_strip_kernel[(-(-n // STRIP_BLOCK), mp // STRIP_ROWS), STRIP_BLOCK](
            xt, *strip_operands(w), bias_arg, residual_arg, out,
            m, n, k, mp, w.fmt, STRIP_ROWS, bias is not None, residual is not None)
        return True
    if m <= STRIP_GEMV_ROWS and w.fmt != "f32":
        gemv_strip_kernel[-(-n // STRIP_BLOCK), STRIP_BLOCK](
            x, *strip_operands(w), bias_arg, residual_arg, out,
            n, k, m, 1 << (m - 1).bit_length(), w.fmt, bias is not None, residual is not None)
        return True
    return False
