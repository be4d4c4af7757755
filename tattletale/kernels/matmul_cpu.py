"""Matrix products for CPU OpenCL (PoCL), shaped for how PoCL vectorizes a kernel.

PoCL runs a work-group's work-items as a loop around the kernel body and compiles each
work-item's code with LLVM's vectorizers. The loop vectorizer cannot vectorize a work-item loop
that contains the kernel's K loop, and a K loop with a uniform bound is split into per-step
regions whose values are kept per work-item in memory (gathers). What vectorizes well is a
work-item's own unrolled code (SLP), when its lanes are isomorphic and provably consecutive. So
one work-item computes one output element, walking a row of W with 16-32 partial sums that
become SIMD registers.
"""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .quant import Weight

ROW_BLOCK = 16  # work-items (output features) per work-group
STEP = 32  # elements of a W row per step: one block of the quantized formats
# One view per format with an element per stored value: bytes for Q4 (two values each) and Q8,
# half words for 16-bit floats.
_ELEMENT_VIEW = {"q4_0": tt.u8, "q4_1": tt.u8, "q8_0": tt.i8, "f16": tt.u16, "bf16": tt.u16, "f32": tt.f32}


def row_operands(w: Weight) -> tuple[Tensor, Tensor, Tensor]:
    """W's data in its element view and its f32 scales and mins (see Weight), for decode_step;
    absent arrays are replaced by any tensor (unread)."""
    data = w.data.bitview(_ELEMENT_VIEW[w.fmt])
    scales = w.scales if w.scales is not None else data
    mins = w.mins if w.mins is not None else scales
    return data, scales, mins


@tt.func
def f16_bits(h):
    """An f16 given as its bits (u32, high half zero) as f32, with integer and float arithmetic only
    (exact for normal and subnormal values, zero included; not inf/NaN), with neither a branch or
    select (which stop the vectorizer) nor an f32 subnormal on the way (each instruction with one
    costs a microcode assist). The exponent field is rebiased by an integer addition; for f16
    subnormals and zero (z = 1) that yields 2^-15 (1 + m/1024), doubled and less 2^-14: m 2^-24."""
    biased = tt.bitcast(((h & 32767) << 13) + 0x38000000, tt.f32)  # exponent + (127 - 15)
    z = tt.f32((h & 0x7C00) == 0)
    mag = biased * (1.0 + z) - 6.103515625e-05 * z
    return tt.bitcast(tt.bitcast(mag, tt.u32) | ((h & 32768) << 16), tt.f32)


@tt.func
def decode_step(w, scales, mins, i, wv, FMT):
    """Decode step i of a row walk (STEP elements: one block of a quantized format) into the private
    array wv. Every element is decoded by the same expression from its own byte (Q4: the low and
    high nibble of byte j are elements j and j + 16), half word or word, so the SLP vectorizer
    turns the step into a few vector loads, extensions and conversions. The element offsets are
    64-bit sums of a base and a constant: PoCL's compiler does not treat 32-bit index arithmetic
    as non-wrapping, so only then does it see consecutive addresses (vector loads, not gathers)."""
    base = tt.i64(i) * (16 if FMT == "q4_0" or FMT == "q4_1" else 32)
    if FMT == "q4_0" or FMT == "q4_1":
        d = scales[i]
        offset = -8.0 * d if FMT == "q4_0" else mins[i]
        for j in tt.static_range(16):
            b = tt.u32(w[base + j])
            wv[j] = d * tt.f32(b & 15) + offset
            wv[16 + j] = d * tt.f32(b >> 4) + offset
    else:
        for j in tt.static_range(32):
            if FMT == "q8_0":
                wv[j] = scales[i] * tt.f32(w[base + j])
            elif FMT == "f32":
                wv[j] = w[base + j]
            elif FMT == "bf16":
                wv[j] = tt.bitcast(tt.u32(w[base + j]) << 16, tt.f32)
            else:
                wv[j] = f16_bits(tt.u32(w[base + j]))


@tt.kernel
def row_matmul_kernel(x: tt.Buffer[tt.f32], w: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer,
                      bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer, N: tt.i32, K: tt.i32,
                      FMT: tt.constexpr, HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr):
    """y[m, n] = x[m, :] · W[n, :] for CPU OpenCL: work-item (m, n) walks row n of W with VL partial
    sums. The row index m is the fastest-varying group index, so a block of W, once decoded into
    the cache, serves every row of x in turn. Rows are separate work-items on purpose: every way
    tried in the DSL of sharing a decoded step between 2-8 rows in one work-item ran 1.5-3x
    slower than as many one-row walks (the vectorizer regrouped the partial sums into gathers,
    fell back to scalar code past 64 of them, or, given a loop, chose 8-wide vectors); the best
    hand-written OpenCL C of it (4 rows, a 2-D accumulator array) ran only 0.95-1.3x this kernel
    at 4-64 rows, and a strip GEMM (a work-item per feature, 32 rows as two vector registers)
    reached a third to half of its rate at 64 rows. The loop bound depends on the work-item so
    PoCL keeps the loop inside it (see the module docstring)."""
    VL = 16 if FMT == "q4_0" or FMT == "q4_1" else 32  # partial sums (Q4: low and high nibbles meet)
    NC = K // STEP
    m = tt.group_id(0)
    gn = tt.global_id(1)
    n = min(gn, N - 1)
    acc = tt.array((VL,), tt.f32)
    for v in tt.static_range(VL):
        acc[v] = 0.0
    wv = tt.array((STEP,), tt.f32)
    for c in range(NC if n >= 0 else 0):  # n >= 0 always; the bound must depend on the work-item
        decode_step(w, scales, mins, n * NC + c, wv, FMT)
        row = tt.i64(m * K + c * STEP)  # 64-bit: see decode_step
        for v in tt.static_range(VL):  # one statement per partial sum: lanes the vectorizer packs
            if VL == STEP:
                acc[v] += x[row + v] * wv[v]
            else:
                acc[v] += x[row + v] * wv[v] + x[row + VL + v] * wv[VL + v]
    # A tree of halving vector adds: a running sum is vectorized as one long chain with the partial
    # sums' lanes regrouped inside the loop (gathers), at half the speed.
    for s in tt.static_range(1, VL.bit_length()):
        for v in tt.static_range(VL >> s):
            acc[v] += acc[v + (VL >> s)]
    t = acc[0]
    if gn < N:
        if HAS_BIAS:
            t += bias[gn]
        if HAS_RESIDUAL:
            t += residual[m * N + gn]
        y[m * N + gn] = t


def cpu_linear(x: Tensor, w: Weight, bias: Tensor | None, residual: Tensor | None, out: Tensor) -> bool:
    """matmul.linear on CPU OpenCL through row_matmul_kernel, for every number of rows (False when K
    is not a multiple of STEP: the caller's kernels take those)."""
    n, k = w.shape
    m = x.size // k
    if k % STEP:
        return False
    row_matmul_kernel[(m, -(-n // ROW_BLOCK)), (1, ROW_BLOCK)](
        x, *row_operands(w), bias if bias is not None else out, residual if residual is not None else out,
        out, n, k, w.fmt, bias is not None, residual is not None)
    return True
