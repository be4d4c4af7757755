"""tt.mma, tt.wgmma, their fragments and tt.async_copy, and the GEMMs built on them, on every
conformance backend.

CUDA runs them on the tensor cores (ldmatrix, mma.sync, cp.async; wgmma on sm_90a); every other
backend, and tt.wgmma before sm_90a, through the portable lowering of codegen/mma.py. References
are float64 numpy on fresh random inputs; outputs start poisoned (NaN) so unwritten elements fail.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from harness import poisoned, read, round_to, upload

import tattletale as tt
from tattletale.codegen.mma import layout
from tattletale.kernels.gemm import GemmConfig, gemm

HALVES = (tt.f16, tt.bf16)


def close(got: np.ndarray, ref: np.ndarray, scale: np.ndarray, rtol: float = 1e-5) -> None:
    """|got - ref| ≤ rtol · scale elementwise (scale: the sums of |products|), no NaN."""
    assert not np.isnan(got).any(), "unwritten (NaN) elements"
    bad = np.abs(got - ref) > rtol * scale + 1e-30
    assert not bad.any(), f"{bad.sum()} elements off; worst {np.abs(got - ref)[bad].max()}"


@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_accumulator_layout_covers_the_tile_once(lanes):
    lay = layout(lanes)
    cells = [lay.coord(lane, e) for lane in range(lanes) for e in range(lay.count)]
    assert sorted(cells) == [(r, c) for r in range(16) for c in range(16)]


def test_ptx_accumulator_layout():
    """32 lanes: mma.m16n8k16's accumulator (lane 4g + t: rows g, g+8; columns 2t, 2t+1) twice."""
    lay = layout(32)
    assert [lay.coord(4 * 3 + 2, e) for e in range(8)] == [
        (3, 4), (3, 5), (3, 12), (3, 13), (11, 4), (11, 5), (11, 12), (11, 13)]


@tt.kernel
def mma_tiles(a: tt.Buffer, b: tt.Buffer, c: tt.Buffer[tt.f32], DT: tt.constexpr, B_LAYOUT: tt.constexpr,
              TILES: tt.constexpr):
    """c = Σ_t a[t] @ B_t for TILES 16×16 tiles, by one subgroup. The tiles sit in padded shared
    arrays at column 8, so row strides and column offsets matter; B_t is b[t] ("b": stored
    [k][n]) or its transpose ("bt": stored [n][k])."""
    lane = tt.subgroup_local_id()
    sa = tt.shared((TILES * 16, 32), DT)
    sb = tt.shared((TILES * 16, 32), DT)
    for i in range(lane, TILES * 256, tt.subgroup_size()):
        sa[i // 16, i % 16 + 8] = a[i]
        sb[i // 16, i % 16 + 8] = b[i]
    tt.barrier()
    acc = tt.mma_zeros()
    for t in tt.static_range(TILES):
        x = tt.mma_load_a(sa, t * 16, 8)
        if B_LAYOUT == "b":
            y = tt.mma_load_b(sb, t * 16, 8)
        else:
            y = tt.mma_load_bt(sb, t * 16, 8)
        acc = tt.mma(x, y, acc)
    for e in tt.static_range(len(acc)):
        r, col = tt.mma_coord(e)
        c[r * 16 + col] = acc[e]


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("b_layout", ["b", "bt"])
def test_mma_tiles(dev, rng, dt, b_layout):
    tiles = 3
    a = round_to(rng.standard_normal((tiles, 16, 16)), dt).astype(np.float64)
    b = round_to(rng.standard_normal((tiles, 16, 16)), dt).astype(np.float64)
    c = poisoned(dev, (16, 16), tt.f32)
    mma_tiles[1, dev.caps.subgroup_size](upload(dev, a, dt), upload(dev, b, dt), c, dt, b_layout,
                                         tiles)
    bm = b if b_layout == "b" else b.transpose(0, 2, 1)
    ref = np.einsum("tmk,tkn->mn", a, bm)
    close(read(c), ref, np.einsum("tmk,tkn->mn", np.abs(a), np.abs(bm)))


@tt.kernel
def mma_fragment_arrays(a: tt.Buffer[tt.f16], b: tt.Buffer[tt.f16], c: tt.Buffer[tt.f32], M: tt.i32,
                        N: tt.i32, K: tt.i32):
    """c = a @ b.T for a [M, K], b [N, K] (M, N ≤ 32, K ≤ 64) by the subgroups of a workgroup:
    subgroup s computes the 16-row band s % 2, both 16-column halves through arrays of fragments.
    Elements outside the matrices are zero in shared memory."""
    sa = tt.shared((32, 64 + 8), tt.f16)
    sb = tt.shared((32, 64 + 8), tt.f16)
    for i in range(tt.local_id(0), 32 * 64, tt.local_size(0)):
        r = i // 64
        k = i % 64
        sa[r, k] = a[r * K + k] if r < M and k < K else 0.0
        sb[r, k] = b[r * K + k] if r < N and k < K else 0.0
    tt.barrier()
    acc = tt.array((2,), tt.fragment("acc"))
    bf = tt.array((2,), tt.fragment("b", tt.f16))
    for j in tt.static_range(2):
        acc[j] = tt.mma_zeros()
    band = tt.subgroup_id() % 2 * 16
    for k0 in range(0, K, 16):  # a runtime loop
        af = tt.mma_load_a(sa, band, k0)
        for j in tt.static_range(2):
            bf[j] = tt.mma_load_bt(sb, j * 16, k0)
        for j in tt.static_range(2):
            acc[j] = tt.mma(af, bf[j], acc[j])
    if tt.subgroup_id() < 2:
        for j in tt.static_range(2):
            for e in tt.static_range(len(acc[j])):
                r, col = tt.mma_coord(e)
                if band + r < M and j * 16 + col < N:
                    c[(band + r) * N + j * 16 + col] = acc[j][e]


@pytest.mark.parametrize("m,n,k", [(32, 32, 64), (19, 27, 40), (5, 31, 16)])
def test_mma_fragment_arrays_odd_shapes(dev, rng, m, n, k):
    sg = dev.caps.subgroup_size
    a = round_to(rng.standard_normal((m, k)), tt.f16).astype(np.float64)
    b = round_to(rng.standard_normal((n, k)), tt.f16).astype(np.float64)
    c = poisoned(dev, (m, n), tt.f32)
    mma_fragment_arrays[1, 3 * sg](upload(dev, a, tt.f16), upload(dev, b, tt.f16), c, m, n, k)
    close(read(c), a @ b.T, np.abs(a) @ np.abs(b).T)


@tt.kernel
def async_copies(src: tt.Buffer, dst: tt.Buffer, n: tt.i32, N: tt.constexpr, DT: tt.constexpr):
    """dst = src through shared memory in N-element asynchronous copies; chunks reaching past n
    are zero-filled (n is a multiple of N)."""
    s = tt.shared((4, 64), DT)
    t = tt.local_id(0)
    for j in tt.static_range(4):
        c = t * N  # the first element of this thread's chunk of row j
        if c < 64:
            tt.async_copy(s, (j, c), src, j * 64 + c, N, j * 64 + c < n)
        tt.async_commit()
    tt.async_wait(2)  # rows 0 and 1 have landed; 2 and 3 may not have
    tt.async_wait(0)
    tt.barrier()
    for i in range(t, 256, tt.local_size(0)):
        dst[i] = s[i // 64, i % 64]


@pytest.mark.parametrize("dt,n", [(tt.f32, 4), (tt.f32, 1), (tt.f16, 4), (tt.bf16, 8), (tt.u8, 16)],
                         ids=str)
def test_async_copy_and_zero_fill(dev, rng, dt, n):
    values = rng.integers(1, 100, 256) if dt == tt.u8 else rng.standard_normal(256)
    src = round_to(values, dt) if dt.is_float else values.astype(np.uint8)
    valid = 160
    dst = poisoned(dev, 256, dt, nan=False)
    async_copies[1, 64](upload(dev, src, dt), dst, valid, n, dt)
    want = np.where(np.arange(256) < valid, src, 0)
    np.testing.assert_array_equal(read(dst), want.astype(read(dst).dtype))


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("m,n,k,stages", [(37, 45, 72, 2), (70, 33, 200, 3), (16, 130, 40, 4)])
def test_gemm_odd_shapes(dev, rng, dt, m, n, k, stages):
    """Tails in every dimension; K spans more steps than there are stages (the ring wraps)."""
    x = round_to(rng.standard_normal((m, k)), dt).astype(np.float64)
    w = round_to(rng.standard_normal((n, k)), dt).astype(np.float64)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    out = poisoned(dev, (m, n), tt.f32)
    sg = dev.caps.subgroup_size
    cfg = GemmConfig(32, 32, 32, 2, 2, stages) if sg < 32 else GemmConfig(64, 64, 32, 2, 2, stages)
    gemm(upload(dev, x, dt), upload(dev, w, dt), out, bias=dev.tensor(bias),
         residual=dev.tensor(res), config=cfg)
    close(read(out), x @ w.T + bias + res, np.abs(x) @ np.abs(w).T + np.abs(bias) + np.abs(res))


def test_gemm_copies_not_dividing_threads(dev, rng):
    """Three subgroups: a W tile's 16-byte copies do not divide among the threads, so the last
    round of copies is partial (and must not be dropped)."""
    sg = dev.caps.subgroup_size
    cfg = GemmConfig(48, 32, 32, 3, 1, 2) if sg < 32 else GemmConfig(96, 64, 32, 3, 1, 3)
    gemm_check(dev, rng, tt.f16, 100, 70, 96, cfg)


@pytest.mark.parametrize("xt", [tt.f32, tt.f16], ids=str)
@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_gemm_activations_split_into_parts(dev, rng, xt, dt):
    """Activations of another type than W are split into 16-bit parts whose products sum to the
    f32 result: f32 accuracy from 16-bit matrix units. Output f16 rounds once, at the end."""
    m, n, k = 40, 24, 64
    x = round_to(rng.standard_normal((m, k)), xt).astype(np.float64)
    w = round_to(rng.standard_normal((n, k)), dt).astype(np.float64)
    for out_t in (tt.f32, tt.f16):
        out = poisoned(dev, (m, n), out_t)
        gemm(upload(dev, x, xt), upload(dev, w, dt), out)
        ref, scale = x @ w.T, np.abs(x) @ np.abs(w).T
        close(read(out), ref, scale, 1e-5 if out_t == tt.f32 else 2e-3)


@pytest.mark.parametrize("in_place", [False, True], ids=["residual", "in-place"])
@pytest.mark.parametrize("splits", [1, 3, 0])
def test_gemm_split_k_fused_parts(dev, rng, splits, in_place):
    """Split-K with all f32 parts per K step: partial tiles add up into y; the bias is added once,
    the residual (a separate tensor, or y itself) once. Splits that get no K steps (7 steps over 3
    splits: 3, 3, 1; 0: the automatic count) still count."""
    m, n, k = 21, 70, 7 * 32 - 8
    x = rng.standard_normal((m, k)).astype(np.float32).astype(np.float64)
    w = round_to(rng.standard_normal((n, k)), tt.bf16).astype(np.float64)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    sg = dev.caps.subgroup_size
    cfg = GemmConfig(16 if sg >= 32 else 32, 32, 32, 1, 2, 3, fuse_parts=True, splits=splits)
    if in_place:
        out = dev.tensor(res)
        residual = out
    else:
        out = poisoned(dev, (m, n), tt.f32)
        residual = dev.tensor(res)
    gemm(upload(dev, x, tt.f32), upload(dev, w, tt.bf16), out, bias=dev.tensor(bias),
         residual=residual, config=cfg)
    close(read(out), x @ w.T + bias + res, np.abs(x) @ np.abs(w).T + np.abs(bias) + np.abs(res))


@tt.kernel
def wgmma_tiles(a: tt.Buffer, b: tt.Buffer, c: tt.Buffer[tt.f32], DT: tt.constexpr, W: tt.constexpr,
                N: tt.constexpr, KB: tt.constexpr):
    """c = A @ B.T for A = a [64, KB·W] and B = b [N, KB·W], by one warpgroup with tt.wgmma: K
    block t of A (B) sits in rows 8 + 64t (16 + Nt) of a swizzled shared array with rows of W
    elements, written by ordinary stores, so the tiles start at row offsets and the swizzle of
    every row matters."""
    K = KB * W
    sa = tt.shared((8 + KB * 64, W), DT, swizzle=True)
    sb = tt.shared((16 + KB * N, W), DT, swizzle=True)
    for i in range(tt.local_id(0), 64 * K, tt.local_size(0)):
        k = i % K
        sa[8 + k // W * 64 + i // K, k % W] = a[i]
    for i in range(tt.local_id(0), N * K, tt.local_size(0)):
        k = i % K
        sb[16 + k // W * N + i // K, k % W] = b[i]
    tt.barrier()
    acc = tt.wgmma_zeros(N)
    for t in tt.static_range(KB):
        for kk in tt.static_range(0, W, 16):
            tt.wgmma(acc, sa, (8 + t * 64, kk), sb, (16 + t * N, kk))
    tt.wgmma_commit()
    tt.wgmma_wait(0)
    for e in range(len(acc)):
        r, col = tt.wgmma_coord(e)
        c[r * N + col] = acc[e]


@pytest.mark.parametrize("dt,w,n,kb", [(tt.f16, 64, 32, 1), (tt.bf16, 32, 48, 2), (tt.bf16, 16, 16, 2),
                                       (tt.bf16, 64, 256, 2), (tt.f16, 32, 128, 2)], ids=str)
def test_wgmma_tiles(dev, rng, dt, w, n, kb):
    """Every swizzle width (rows of 128, 64, 32 bytes), accumulators of 16 … 256 columns."""
    if n > 48 and dev.backend != "cuda":
        pytest.skip("tiles past the shared memory of the portable targets")
    k = kb * w
    a = round_to(rng.standard_normal((64, k)), dt).astype(np.float64)
    b = round_to(rng.standard_normal((n, k)), dt).astype(np.float64)
    c = poisoned(dev, (64, n), tt.f32)
    wgmma_tiles[1, 4 * dev.caps.subgroup_size](upload(dev, a, dt), upload(dev, b, dt), c, dt, w, n, kb)
    close(read(c), a @ b.T, np.abs(a) @ np.abs(b).T)


def gemm_check(dev, rng, dt, m, n, k, cfg, xt=None, bias_res=True):
    """gemm with a bias and a residual (or neither) against float64, x of xt (default dt)."""
    xt = xt or dt
    x = round_to(rng.standard_normal((m, k)), xt).astype(np.float64)
    w = round_to(rng.standard_normal((n, k)), dt).astype(np.float64)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    out = poisoned(dev, (m, n), tt.f32)
    extra = dict(bias=dev.tensor(bias), residual=dev.tensor(res)) if bias_res else {}
    gemm(upload(dev, x, xt), upload(dev, w, dt), out, config=cfg, **extra)
    ref, scale = x @ w.T, np.abs(x) @ np.abs(w).T
    if bias_res:
        ref, scale = ref + bias + res, scale + np.abs(bias) + np.abs(res)
    close(read(out), ref, scale)


WGMMA_PORTABLE = [GemmConfig(64, 32, 16, 1, 1, 3, wgmma=True),  # one warpgroup, 32-byte rows
                  GemmConfig(64, 32, 16, 1, 2, 4, wgmma=True),  # two along N, 16 columns each
                  GemmConfig(128, 16, 16, 1, 1, 3, wgmma=True),  # two accumulators along M
                  GemmConfig(64, 32, 32, 1, 1, 3, wgmma=True, persistent=True),  # tiles in a loop
                  GemmConfig(192, 32, 16, 3, 1, 3, wgmma=True)]  # three warpgroups
WGMMA_CUDA = [GemmConfig(128, 128, 64, 2, 1, 3, wgmma=True), GemmConfig(128, 64, 64, 1, 2, 4, wgmma=True),
              GemmConfig(128, 256, 64, 2, 1, 4, wgmma=True),
              GemmConfig(128, 64, 32, 1, 1, 5, wgmma=True, persistent=True),
              GemmConfig(192, 128, 64, 3, 1, 3, wgmma=True)]


@pytest.mark.parametrize("cfg", range(5), ids=["1x1", "1x2", "fm2", "persistent", "3x1"])
@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("m,n,k", [(37, 45, 72), (150, 70, 200), (16, 130, 40)])
def test_gemm_wgmma_odd_shapes(dev, rng, dt, m, n, k, cfg):
    """The warpgroup GEMM: tails in every dimension, K over more steps than stages."""
    configs = WGMMA_CUDA if dev.backend == "cuda" else WGMMA_PORTABLE
    gemm_check(dev, rng, dt, m, n, k, configs[cfg])


def test_gemm_wgmma_persistent_many_tiles(dev, rng):
    """More tiles than workgroups (one per multiprocessor; one on devices that report none): the
    K steps of a workgroup's tiles run as one pipeline, the next tile's copies crossing a tile's
    stores."""
    cfg, (m, n, k) = WGMMA_PORTABLE[3], (150, 100, 72)
    if dev.backend == "cuda":
        cfg, (m, n, k) = WGMMA_CUDA[3], (1500, 900, 200)
    gemm_check(dev, rng, tt.f16, m, n, k, cfg, bias_res=False)


@pytest.mark.parametrize("splits", [1, 3])
def test_gemm_wgmma_parts_split_k(dev, rng, splits):
    """f32 activations in three bf16 parts (three passes over K), split along K into f32."""
    cfg = WGMMA_CUDA[0] if dev.backend == "cuda" else WGMMA_PORTABLE[0]
    gemm_check(dev, rng, tt.bf16, 21, 70, 7 * cfg.bk - 8, replace(cfg, splits=splits), xt=tt.f32)


def test_wgmma_cuda_source_compiles_for_sm90a():
    """The Hopper lowering assembles (NVRTC runs ptxas for a cubin; no GPU needed): warpgroup
    products, descriptors, fences and the swizzled copies of the default 128 × 256 tiles."""
    from harness import nvrtc_device

    from tattletale.codegen import Caps, render
    from tattletale.kernels.gemm import CUDA_WGMMA_CONFIG as c
    from tattletale.kernels.gemm import gemm_wgmma_kernel
    from tattletale.runtimes.cuda import nvrtc_compile

    try:
        nvrtc_device()
    except Exception as exc:
        pytest.skip(f"no NVRTC: {exc}")
    caps = Caps("cuda", 32, True, True, "sm_90a")
    spec = dict(x=tt.bf16, w=tt.bf16, bias=tt.f32, residual=tt.f32, y=tt.f32, DT=tt.bf16, PARTS=3,
                BM=c.bm, BN=c.bn, BK=c.bk, WM=c.wm, WN=c.wn, STAGES=c.stages, GROUP_M=8,
                HAS_BIAS=True, HAS_RESIDUAL=True, SPLIT=True)
    gen = render("cuda", gemm_wgmma_kernel.lower(gemm_wgmma_kernel.key_from_kwargs(spec), 32), caps)
    assert "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16" in gen.text
    assert gen.shared_bytes == c.shared_bytes()
    assert nvrtc_compile(gen, "sm_90a")
    for w in (16, 32, 64):
        spec = dict(a=tt.f16, b=tt.f16, DT=tt.f16, W=w, N=48, KB=2)
        gen = render("cuda", wgmma_tiles.lower(wgmma_tiles.key_from_kwargs(spec), 32), caps)
        assert nvrtc_compile(gen, "sm_90a")


@tt.kernel
def misuse(a: tt.Buffer[tt.f16], c: tt.Buffer[tt.f32], WHAT: tt.constexpr):
    s = tt.shared((16, 24), tt.f16)
    s32 = tt.shared((16, 16), tt.f32)
    acc = tt.mma_zeros()
    if WHAT == "global":
        tt.mma_load_a(a, 0, 0)
    elif WHAT == "f32":
        tt.mma_load_a(s32, 0, 0)
    elif WHAT == "fit":
        tt.mma_load_a(s, 8, 0)
    elif WHAT == "swap":
        acc = tt.mma(tt.mma_load_bt(s, 0, 8), tt.mma_load_a(s, 0, 8), acc)
    elif WHAT == "element":
        c[0] = acc[len(acc)]
    elif WHAT == "opaque":
        c[0] = tt.mma_load_a(s, 0, 0)[0]
    elif WHAT == "arith":
        acc = acc + 1.0
    elif WHAT == "bytes":
        tt.async_copy(s, (0, 0), a, 0, 3)
    elif WHAT.startswith("wg"):
        sw = tt.shared((64, 64), tt.f16, swizzle=True)
        wacc = tt.wgmma_zeros(32)
        if WHAT == "wg-plain":
            tt.wgmma(wacc, s, (0, 0), sw, (0, 0))
        elif WHAT == "wg-row":
            tt.wgmma(wacc, sw, (4, 0), sw, (0, 0))
        elif WHAT == "wg-col":
            tt.wgmma(wacc, sw, (0, 8), sw, (0, 0))
        elif WHAT == "wg-acc":
            tt.wgmma(acc, sw, (0, 0), sw, (0, 0))
        elif WHAT == "wg-ldsm":
            tt.mma_load_a(sw, 0, 0)
        elif WHAT == "wg-n":
            tt.wgmma_zeros(40)
        elif WHAT == "wg-shape":
            tt.shared((64, 48), tt.f16, swizzle=True)
        c[2] = wacc[0]
    c[1] = acc[0]


@pytest.mark.parametrize("what,message", [
    ("global", "reads a 2-D shared array"),
    ("f32", "reads f16 or bf16 elements, not f32"),
    ("fit", "the 16×16 tile at row 8 does not fit"),
    ("swap", "first argument of tt.mma must be an 'a' fragment"),
    ("element", "does not exist: a lane holds"),
    ("opaque", "operand fragments are opaque"),
    ("arith", "needs a scalar, got fragment[acc, f32]"),
    ("bytes", "moves 4, 8 or 16 bytes"),
    ("wg-plain", "reads A from a swizzled shared array"),
    ("wg-row", "must start at a multiple of 8"),
    ("wg-col", "must start at a multiple of 16"),
    ("wg-acc", "is a warpgroup accumulator (from tt.wgmma_zeros)"),
    ("wg-ldsm", "reads unswizzled arrays"),
    ("wg-n", "a multiple of 16 up to 256"),
    ("wg-shape", "rows 32, 64 or 128 bytes"),
])
def test_misuse_is_a_compile_error_at_the_line(what, message):
    with pytest.raises(tt.CompileError) as info:
        misuse.source("opencl", WHAT=what)
    text = str(info.value)
    assert message in text
    line = text.splitlines()[1]
    assert "tt." in line or "acc" in line, text
    assert text.splitlines()[2].strip() == "^"
