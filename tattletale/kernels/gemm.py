"""y = x @ W.T (+ bias) (+ residual) for 16-bit weights through `tt.mma` (tensor cores on CUDA).

A workgroup computes a BM × BN tile of y with WM × WN subgroups, each owning a (BM/WM) × (BN/WN)
block of 16×16 accumulator fragments. K advances in steps of BK through a ring of STAGES
shared-memory buffers filled by `tt.async_copy` (cp.async on CUDA): while the subgroups multiply
the tile in one buffer, the copies for the tiles STAGES-1 steps ahead are in flight, so one
barrier per step suffices. Rows of the shared tiles are padded by 8 elements (16 bytes), which
puts the eight 16-byte rows `ldmatrix` reads at once (and the copies' 16-byte writes) in distinct
banks. Copies past M, N or K write zeros, so any M and N (and K a multiple of 8) work.

Tiles are visited in groups of GROUP_M tile rows (column by column inside a group), so the W
tiles a group streams are reused from L2 by its rows.

Activations of another type than W (f32, say) are first split into PARTS matrices of W's type
whose sum is x (x = hi + lo, the rounding residue of each part exact in f32): two parts carry
f16's 22 bits, three bf16's 24. Each K step multiplies XP parts' x tiles by one W tile, all into
the same accumulators, so the tensor cores' exact products and f32 sums give f32 accuracy at PARTS
times the matrix work; PARTS // XP passes over K. XP = PARTS reads W once (small M: W's traffic is
the time); XP = 1 keeps the shared tiles small for the large, compute-bound tiles.

Split-K (small M): with few tile rows there are too few workgroups to keep every multiprocessor
streaming W, so SPLITS workgroups share each tile, each taking a contiguous range of K steps, and
add their partial tiles into an f32 y with atomics; y first gets the residual (or zeros), and
the bias comes with the first split's partials.

`gemm_wgmma_kernel` is the same product by warpgroups (`tt.wgmma`: wgmma.mma_async on Hopper,
the portable lowering elsewhere): WM × WN warpgroups of four subgroups, each owning
(BM / WM) × (BN / WN) of the tile as 64-row accumulators, both operands read straight from
swizzled shared tiles (rows of BK 16-bit elements, 128 bytes at BK = 64) with no padding. The
products of a K step run asynchronously: a warpgroup issues them, starts the copies of the step
STAGES-2 ahead, and waits only for the previous step's products, so the tensor cores work while
the next step's barrier and copies are issued; the buffer refilled at step s is the one step
s-2 read, whose products every warpgroup has waited for before the barrier of step s.
"""

from __future__ import annotations

from dataclasses import dataclass

import tattletale as tt
from tattletale.runtimes import Tensor

PAD = 8  # elements added to each shared row: 16 bytes, ldmatrix rows in distinct banks
CHUNK = 8  # elements per 16-byte copy
# 16-bit parts that carry an activation type's significand in a weight type (f32: 24 bits; f16: 11;
# bf16: 8). bf16 → f16 keeps every bf16 significand, but not magnitudes past f16's range.
PARTS = {("f32", "f16"): 2, ("f32", "bf16"): 3, ("f16", "bf16"): 2, ("bf16", "f16"): 1}


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape: BM × BN outputs per workgroup, WM × WN subgroups, K in steps of BK through
    STAGES shared buffers; all activation parts per K step or one (fuse_parts); `splits`
    workgroups per tile along K (0: enough for `waves` workgroups per multiprocessor, see
    `split_count`)."""

    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    stages: int
    group_m: int = 8
    fuse_parts: bool = False
    splits: int = 1
    waves: int = 1
    wgmma: bool = False  # gemm_wgmma_kernel: wm × wn warpgroups, BK the swizzled row (16/32/64)
    persistent: bool = False  # wgmma, unsplit: one workgroup per multiprocessor, looping over tiles

    def threads(self, subgroup_size: int) -> int:
        return self.wm * self.wn * subgroup_size * (4 if self.wgmma else 1)

    def shared_bytes(self, parts: int = 1) -> int:
        if self.wgmma:
            return self.stages * (self.bm + self.bn) * self.bk * 2
        xp = parts if self.fuse_parts else 1
        return self.stages * (self.bm * xp + self.bn) * (self.bk + PAD) * 2


# Tensor cores (32-lane subgroups): 64×64 per subgroup, split along K while there are fewer tiles
# than multiprocessors; up to SMALL_M rows, small tiles that read W once for all activation parts,
# split until each multiprocessor has four (benchmarks/tune_gemm.py on an H200: 2.2× faster than
# one pass per part unsplit at M = 16–32, and 1.1–1.3× the split 128×128 tiles at M = 64–256).
CUDA_CONFIG = GemmConfig(128, 128, 64, 2, 2, 3, splits=0)
CUDA_SMALL_M_CONFIG = GemmConfig(32, 128, 64, 1, 4, 3, fuse_parts=True, splits=0, waves=4)
SMALL_M = 256
# Hopper (sm_90a): warpgroup products, two warpgroups of 64 × 256 on 128 × 256 tiles, four stages
# of 48 KB (placeholder until benchmarks/tune_gemm.py has run).
CUDA_WGMMA_CONFIG = GemmConfig(128, 256, 64, 2, 1, 4, splits=0, wgmma=True)
# The portable lowering (CPU OpenCL, lavapipe, WebGPU): small tiles, under 32 KB of shared memory
# even where 16-bit shared elements take 32 bits (WGSL).
PORTABLE_CONFIG = GemmConfig(32, 32, 32, 2, 2, 2)
# Split-K: the fewest K steps a split may take (its pipeline prologue and the atomics of its
# partial tile must stay small next to its streaming).
MIN_SPLIT_STEPS = 8


@tt.func
def load_tile(src, dst, row0, rows, k0, K, stage, tid, BR: tt.constexpr, BK: tt.constexpr,
              THREADS: tt.constexpr):
    """Start copying rows row0 … row0+BR-1, columns k0 … k0+BK-1 of the K-wide matrix src into
    stage `stage` of dst (zeros outside rows × K)."""
    PER_ROW = BK // CHUNK
    # rounds up (compile-time // truncates like C, so -(-a // b) would not); constant bounds:
    # unrolled by compilers that gain
    for i in range((BR * PER_ROW + THREADS - 1) // THREADS):
        c = tid + i * THREADS
        if BR * PER_ROW % THREADS == 0 or c < BR * PER_ROW:
            r = c // PER_ROW
            kc = (c % PER_ROW) * CHUNK
            ok = row0 + r < rows and k0 + kc < K
            tt.async_copy(dst, (stage * BR + r, kc), src, (row0 + r) * K + k0 + kc, CHUNK, ok)


@tt.func
def load_step(x, w, xs, ws, s, stage, steps_k, m0, n0, M, N, K, tid, BM: tt.constexpr,
              BN: tt.constexpr, BK: tt.constexpr, THREADS: tt.constexpr, PASSES: tt.constexpr,
              XP: tt.constexpr):
    """Start the copies of step s's tiles into `stage`: parts (s // steps_k) · XP … + XP-1 of x
    (x shared rows: XP tiles per stage) and w."""
    k0 = s * BK
    part0 = 0
    if PASSES > 1:
        k0 = s % steps_k * BK
        part0 = s // steps_k * XP
    for p in tt.static_range(XP):
        load_tile(x, xs, (part0 + p) * M + m0, (part0 + p + 1) * M, k0, K, stage * XP + p, tid, BM,
                  BK, THREADS)
    load_tile(w, ws, n0, N, k0, K, stage, tid, BN, BK, THREADS)


@tt.func
def store_element(acc, e, row0, col0, bias, residual, y, M, N, first, HAS_BIAS: tt.constexpr,
                  HAS_RESIDUAL: tt.constexpr, SPLIT: tt.constexpr):
    """y = element e of the accumulator tile at (row0, col0) (+ bias) (+ residual), inside M × N;
    split along K: y += it (+ bias in the first split), the residual being in y already."""
    r, c = tt.mma_coord(e)
    store_at(acc[e], row0 + r, col0 + c, bias, residual, y, M, N, first, HAS_BIAS, HAS_RESIDUAL,
             SPLIT)


@tt.func
def store_at(v, m, n, bias, residual, y, M, N, first, HAS_BIAS: tt.constexpr,
             HAS_RESIDUAL: tt.constexpr, SPLIT: tt.constexpr):
    """y[m, n] = v (+ bias) (+ residual) inside M × N, or (split) y[m, n] += v (+ bias if first)."""
    if m < M and n < N:
        if SPLIT:
            if HAS_BIAS:
                if first:
                    v += bias[n]
            tt.atomic_add(y, m * N + n, v)
        else:
            if HAS_BIAS:
                v += bias[n]
            if HAS_RESIDUAL:
                v += residual[m * N + n]
            y[m * N + n] = v


@tt.kernel
def split_kernel(x: tt.Buffer, parts: tt.Buffer, n: tt.i32, DT: tt.constexpr, PARTS: tt.constexpr):
    """parts[p] = the p-th DT-rounded residue of x: Σ_p parts[p] = x to PARTS·(DT's bits)."""
    i = tt.global_id(0)
    if i < n:
        v = tt.f32(x[i])
        for p in tt.static_range(PARTS):
            h = tt.cast(v, DT)
            parts[p * n + i] = h
            v = v - h


@tt.kernel
def init_kernel(y: tt.Buffer[tt.f32], residual: tt.Buffer, n: tt.i32, HAS_RESIDUAL: tt.constexpr):
    """y = residual (or 0): the base split-K's partial tiles are added to."""
    i = tt.global_id(0)
    if i < n:
        y[i] = tt.f32(residual[i]) if HAS_RESIDUAL else 0.0


@tt.kernel
def gemm_mma_kernel(x: tt.Buffer, w: tt.Buffer, bias: tt.Buffer, residual: tt.Buffer, y: tt.Buffer,
                    M: tt.i32, N: tt.i32, K: tt.i32, splits: tt.i32, DT: tt.constexpr,
                    PARTS: tt.constexpr, XP: tt.constexpr, BM: tt.constexpr, BN: tt.constexpr,
                    BK: tt.constexpr, WM: tt.constexpr, WN: tt.constexpr, STAGES: tt.constexpr,
                    GROUP_M: tt.constexpr, HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr,
                    SPLIT: tt.constexpr):
    """y[M, N] = Σ_p x[p] @ w.T (+ bias[N]) (+ residual[M, N]) for x [PARTS, M, K] and w [N, K]
    of DT (f16/bf16), y any float type (f32 with SPLIT: `splits` workgroups per tile add into y).
    One-dimensional workgroups of WM · WN subgroups."""
    THREADS = WM * WN * tt.subgroup_size()
    FM = BM // WM // 16  # fragments per subgroup along M and N
    FN = BN // WN // 16
    PASSES = PARTS // XP
    tt.static_assert(BM % (WM * 16) == 0 and BN % (WN * 16) == 0 and BK % 16 == 0 and STAGES >= 2
                     and PARTS % XP == 0, "tile shape")
    xs = tt.shared((STAGES * XP * BM, BK + PAD), DT)
    ws = tt.shared((STAGES * BN, BK + PAD), DT)
    acc = tt.array((FM, FN), tt.fragment("acc"))
    af = tt.array((FM,), tt.fragment("a", DT))
    bf = tt.array((FN,), tt.fragment("b", DT))
    tid = tt.local_id(0)
    sg = tt.subgroup_id()
    wm0 = sg // WN * (BM // WM)
    wn0 = sg % WN * (BN // WN)

    tiles_m = (M + BM - 1) // BM
    tiles_n = (N + BN - 1) // BN
    pid = tt.group_id(0)
    ks = 0
    if SPLIT:
        ks = pid % splits
        pid = pid // splits
    per_group = GROUP_M * tiles_n
    first = pid // per_group * GROUP_M
    rows_in_group = min(tiles_m - first, GROUP_M)
    m0 = (first + pid % per_group % rows_in_group) * BM
    n0 = pid % per_group // rows_in_group * BN

    for i in tt.static_range(FM):
        for j in tt.static_range(FN):
            acc[i, j] = tt.mma_zeros()
    steps_k = (K + BK - 1) // BK
    # step s: parts (s // steps_k) · XP …, K from (s % steps_k) · BK; this split's are s0 … s0+steps-1
    steps = PASSES * steps_k
    s0 = 0
    if SPLIT:
        per_split = (steps + splits - 1) // splits
        s0 = ks * per_split
        steps = max(min(steps - s0, per_split), 0)
    for s in tt.static_range(STAGES - 1):
        if s < steps:
            load_step(x, w, xs, ws, s0 + s, s, steps_k, m0, n0, M, N, K, tid, BM, BN, BK, THREADS,
                      PASSES, XP)
        tt.async_commit()
    for step in range(steps):
        tt.async_wait(STAGES - 2)  # this thread's copies of `step` have landed
        tt.barrier()  # everyone's have; and everyone is done with the buffer refilled next
        ahead = step + STAGES - 1
        if ahead < steps:
            load_step(x, w, xs, ws, s0 + ahead, ahead % STAGES, steps_k, m0, n0, M, N, K, tid, BM,
                      BN, BK, THREADS, PASSES, XP)
        tt.async_commit()
        st = step % STAGES
        for kk in tt.static_range(0, BK, 16):
            for j in tt.static_range(FN):
                bf[j] = tt.mma_load_bt(ws, st * BN + wn0 + j * 16, kk)
            for p in tt.static_range(XP):
                for i in tt.static_range(FM):
                    af[i] = tt.mma_load_a(xs, (st * XP + p) * BM + wm0 + i * 16, kk)
                for i in tt.static_range(FM):
                    for j in tt.static_range(FN):
                        acc[i, j] = tt.mma(af[i], bf[j], acc[i, j])

    for i in tt.static_range(FM):
        for j in tt.static_range(FN):
            if len(acc[i, j]) <= 8:  # registers (tensor cores): unrolled, constant indices
                for e in tt.static_range(len(acc[i, j])):
                    store_element(acc[i, j], e, m0 + wm0 + i * 16, n0 + wn0 + j * 16, bias,
                                  residual, y, M, N, ks == 0, HAS_BIAS, HAS_RESIDUAL, SPLIT)
            else:  # the long per-lane shares of the portable lowering: a loop
                for e in range(len(acc[i, j])):
                    store_element(acc[i, j], e, m0 + wm0 + i * 16, n0 + wn0 + j * 16, bias,
                                  residual, y, M, N, ks == 0, HAS_BIAS, HAS_RESIDUAL, SPLIT)


@tt.func
def tile_row0(t, tiles_m, tiles_n, BM: tt.constexpr, GROUP_M: tt.constexpr):
    """The first row of tile t: tiles go column by column inside groups of GROUP_M tile rows."""
    per_group = GROUP_M * tiles_n
    first = t // per_group * GROUP_M
    return (first + t % per_group % min(tiles_m - first, GROUP_M)) * BM


@tt.func
def tile_col0(t, tiles_m, tiles_n, BN: tt.constexpr, GROUP_M: tt.constexpr):
    """The first column of tile t (see tile_row0)."""
    per_group = GROUP_M * tiles_n
    first = t // per_group * GROUP_M
    return t % per_group // min(tiles_m - first, GROUP_M) * BN


@tt.func
def load_rows(src, dst, row0, rows, k0, K, stage, tid, BR: tt.constexpr, BK: tt.constexpr,
              THREADS: tt.constexpr):
    """load_tile for THREADS a multiple of the row's chunks and BR of the rows they cover at once:
    this thread copies one chunk column of every (THREADS / chunks)-th row, so the column, its
    swizzle and the K test are the same for all its copies (few instructions per copy)."""
    STEP = THREADS // (BK // CHUNK)  # rows covered by one round of the workgroup's copies
    kc = tid % (BK // CHUNK) * CHUNK
    r0 = tid // (BK // CHUNK)
    k_ok = k0 + kc < K
    for i in tt.static_range(BR // STEP):
        r = r0 + i * STEP
        tt.async_copy(dst, (stage * BR + r, kc), src, (row0 + r) * K + k0 + kc, CHUNK,
                      k_ok and row0 + r < rows)


@tt.func
def load_wg_step(x, w, xs, ws, xrow0, xrows, k0, stage, n0, N, K, tid, BM: tt.constexpr,
                 BN: tt.constexpr, BK: tt.constexpr, THREADS: tt.constexpr):
    """Start the copies of one K step: rows xrow0 … of x (inside xrows), rows n0 … of w, columns
    k0 …; through load_rows where the shapes allow it."""
    ROUND = THREADS // (BK // CHUNK)  # rows one round of the workgroup's copies covers
    if THREADS % (BK // CHUNK) == 0 and BM % ROUND == 0:
        load_rows(x, xs, xrow0, xrows, k0, K, stage, tid, BM, BK, THREADS)
    else:
        load_tile(x, xs, xrow0, xrows, k0, K, stage, tid, BM, BK, THREADS)
    if THREADS % (BK // CHUNK) == 0 and BN % ROUND == 0:
        load_rows(w, ws, n0, N, k0, K, stage, tid, BN, BK, THREADS)
    else:
        load_tile(w, ws, n0, N, k0, K, stage, tid, BN, BK, THREADS)


@tt.func
def cursor_at_tile(cur, t, part, k0, tiles_m, tiles_n, BM: tt.constexpr, BN: tt.constexpr,
                   GROUP_M: tt.constexpr):
    """Point the copy cursor at the first step of tile t: cur = [tile, steps of it started,
    activation part, k0, first row, first column]."""
    cur[0] = t
    cur[1] = 0
    cur[2] = part
    cur[3] = k0
    cur[4] = tile_row0(t, tiles_m, tiles_n, BM, GROUP_M)
    cur[5] = tile_col0(t, tiles_m, tiles_n, BN, GROUP_M)


@tt.func
def load_next(x, w, xs, ws, cur, stage, steps, s0, steps_k, groups, tiles_m, tiles_n, M, N, K,
              tid, BM: tt.constexpr, BN: tt.constexpr, BK: tt.constexpr, THREADS: tt.constexpr,
              GROUP_M: tt.constexpr):
    """Start the copies of the step at the cursor into `stage` and advance the cursor (to the
    next K step, activation part, or this workgroup's next tile: no divisions but there)."""
    load_wg_step(x, w, xs, ws, cur[2] * M + cur[4], (cur[2] + 1) * M, cur[3], stage, cur[5], N, K,
                 tid, BM, BN, BK, THREADS)
    cur[1] += 1
    cur[3] += BK
    if cur[3] >= K:
        cur[3] = 0
        cur[2] += 1
    if cur[1] == steps:
        cursor_at_tile(cur, cur[0] + groups, s0 // steps_k, s0 % steps_k * BK, tiles_m, tiles_n,
                       BM, BN, GROUP_M)


@tt.kernel
def gemm_wgmma_kernel(x: tt.Buffer, w: tt.Buffer, bias: tt.Buffer, residual: tt.Buffer,
                      y: tt.Buffer, M: tt.i32, N: tt.i32, K: tt.i32, splits: tt.i32,
                      DT: tt.constexpr, PARTS: tt.constexpr, BM: tt.constexpr, BN: tt.constexpr,
                      BK: tt.constexpr, WM: tt.constexpr, WN: tt.constexpr, STAGES: tt.constexpr,
                      GROUP_M: tt.constexpr, HAS_BIAS: tt.constexpr, HAS_RESIDUAL: tt.constexpr,
                      SPLIT: tt.constexpr):
    """gemm_mma_kernel's product (same arguments, one activation part per K step) by WM × WN
    warpgroups with tt.wgmma; BK is the row of the swizzled shared tiles (16, 32 or 64).

    Workgroup g takes tiles g, g + G, g + 2G, … (G workgroups): one tile when the grid has one
    workgroup per tile, several on a persistent grid, where the K steps of its tiles form one
    pipeline, so the next tile's first copies are in flight during a tile's stores. Split-K
    launches one workgroup per (tile, split)."""
    THREADS = WM * WN * 4 * tt.subgroup_size()
    FM = BM // WM // 64  # 64-row accumulators per warpgroup
    WGN = BN // WN  # their columns
    tt.static_assert(BM % (WM * 64) == 0 and BN % WN == 0 and WGN % 16 == 0 and WGN <= 256 and
                     BK % 16 == 0 and BK <= 64 and BK != 48 and STAGES >= 3, "tile shape")
    xs = tt.shared((STAGES * BM, BK), DT, swizzle=True)
    ws = tt.shared((STAGES * BN, BK), DT, swizzle=True)
    acc = tt.array((FM,), tt.fragment("wgacc", n=WGN))
    tid = tt.local_id(0)
    wg = tt.subgroup_id() // 4
    wm0 = wg // WN * (BM // WM)
    wn0 = wg % WN * WGN

    tiles_m = (M + BM - 1) // BM
    tiles_n = (N + BN - 1) // BN
    pid = tt.group_id(0)
    groups = tt.num_groups(0)
    ks = 0
    steps_k = (K + BK - 1) // BK
    steps = PARTS * steps_k  # per tile; this split's are s0 … s0+steps-1
    s0 = 0
    if SPLIT:
        ks = pid % splits
        per_split = (steps + splits - 1) // splits
        s0 = ks * per_split
        steps = max(min(steps - s0, per_split), 0)
    tiles = tiles_m * tiles_n * splits
    total = (tiles - pid + groups - 1) // groups * steps  # K steps over all of this group's tiles

    # The copies run STAGES-2 steps ahead, across tile ends, at a cursor (load_next).
    cur = tt.array((6,), tt.i32)
    cursor_at_tile(cur, pid // splits, s0 // steps_k, s0 % steps_k * BK, tiles_m, tiles_n, BM, BN,
                   GROUP_M)
    for i in tt.static_range(FM):
        acc[i] = tt.wgmma_zeros(WGN)
    for s in tt.static_range(STAGES - 2):
        if s < total:
            load_next(x, w, xs, ws, cur, s, steps, s0, steps_k, groups, tiles_m, tiles_n, M, N, K,
                      tid, BM, BN, BK, THREADS, GROUP_M)
        tt.async_commit()
    for j in range(0, total, steps):  # this group's tiles, each `steps` K steps
        for step in range(j, j + steps):
            tt.async_wait(STAGES - 3)  # this thread's copies of `step` have landed
            tt.barrier()  # everyone's have; every warpgroup is done with step - 2's buffer
            st = step % STAGES
            for kk in tt.static_range(0, BK, 16):
                for i in tt.static_range(FM):  # a tile's first step replaces the accumulators
                    tt.wgmma(acc[i], xs, (st * BM + wm0 + i * 64, kk), ws, (st * BN + wn0, kk),
                             kk > 0 or step > j)
            tt.wgmma_commit()
            if step + STAGES - 2 < total:
                load_next(x, w, xs, ws, cur, (step + STAGES - 2) % STAGES, steps, s0, steps_k,
                          groups, tiles_m, tiles_n, M, N, K, tid, BM, BN, BK, THREADS, GROUP_M)
            tt.async_commit()
            tt.wgmma_wait(1)  # step - 1's products are done: its buffer may be refilled next step
        tt.wgmma_wait(0)
        t = (pid + j // steps * groups) // splits
        m0 = tile_row0(t, tiles_m, tiles_n, BM, GROUP_M)
        n0 = tile_col0(t, tiles_m, tiles_n, BN, GROUP_M)
        for i in tt.static_range(FM):
            store_wg_tile(acc[i], m0 + wm0 + i * 64, n0 + wn0, bias, residual, y, M, N, ks == 0,
                          HAS_BIAS, HAS_RESIDUAL, SPLIT)


@tt.func
def store_wg_tile(acc, row0, col0, bias, residual, y, M, N, first, HAS_BIAS: tt.constexpr,
                  HAS_RESIDUAL: tt.constexpr, SPLIT: tt.constexpr):
    """Store a warpgroup accumulator at (row0, col0) of y (see store_at)."""
    if len(acc) <= 128:  # registers (tensor cores): unrolled, constant indices
        for e in tt.static_range(len(acc)):
            r, c = tt.wgmma_coord(e)
            store_at(acc[e], row0 + r, col0 + c, bias, residual, y, M, N, first, HAS_BIAS,
                     HAS_RESIDUAL, SPLIT)
    else:  # the long per-lane shares of the portable lowering: a loop
        for e in range(len(acc)):
            r, c = tt.wgmma_coord(e)
            store_at(acc[e], row0 + r, col0 + c, bias, residual, y, M, N, first, HAS_BIAS,
                     HAS_RESIDUAL, SPLIT)


def split_count(cfg: GemmConfig, tiles: int, steps: int, units: int) -> int:
    """Workgroups per tile along K: the configured count, or (0) as many as keep all tiles within
    cfg.waves workgroups per multiprocessor (no partial last wave), each over at least
    MIN_SPLIT_STEPS of the `steps` K steps."""
    if cfg.splits:
        return max(1, min(cfg.splits, steps))
    return max(1, min(cfg.waves * units // tiles, steps // MIN_SPLIT_STEPS))


def gemm(x: Tensor, w: Tensor, out: Tensor, bias: Tensor | None = None,
         residual: Tensor | None = None, config: GemmConfig | None = None) -> Tensor:
    """out[M, N] = x[M, K] @ w[N, K].T (+ bias[N]) (+ residual[M, N]; may be `out`).

    w holds f16 or bf16; x any float type (split into parts of w's type unless it is w's type);
    out any float type (split-K only into f32). K must be a multiple of 8 (rows start 16-byte
    aligned)."""
    n, k = w.shape
    m = x.size // k
    if w.dtype not in (tt.f16, tt.bf16) or not x.dtype.is_float or x.dtype == tt.f64:
        raise ValueError(f"gemm multiplies f32/f16/bf16 activations by f16/bf16 weights, got "
                         f"{x.dtype} and {w.dtype}")
    if k % CHUNK:
        raise ValueError(f"K = {k} must be a multiple of {CHUNK}")
    if w.offset % CHUNK:
        raise ValueError("gemm needs W's first element 16-byte aligned")
    dev = x.device
    parts = 1
    if x.dtype != w.dtype or x.offset % CHUNK:  # split (or copy to an aligned tensor) first
        parts = PARTS.get((x.dtype.name, w.dtype.name), 1)
        split = dev.empty((parts, m, k), w.dtype)
        split_kernel[-(-m * k // 256), 256](x, split, m * k, w.dtype, parts)
        x = split
    cfg = config or default_config(dev, m)
    xp = parts if cfg.fuse_parts and not cfg.wgmma else 1
    tiles = -(-m // cfg.bm) * -(-n // cfg.bn)
    splits = 1
    if out.dtype == tt.f32:
        splits = split_count(cfg, tiles, parts // xp * -(-k // cfg.bk), getattr(dev, "sm_count", 1))
    if splits > 1:
        init_kernel[-(-m * n // 256), 256](out, residual if residual is not None else out, m * n,
                                           residual is not None)
    args = (x, w, bias if bias is not None else out, residual if residual is not None else out, out,
            m, n, k, splits, w.dtype, parts)
    tail = (cfg.bm, cfg.bn, cfg.bk, cfg.wm, cfg.wn, cfg.stages, cfg.group_m, bias is not None,
            residual is not None, splits > 1)
    groups = tiles * splits
    if cfg.wgmma and cfg.persistent and splits == 1:
        groups = min(tiles, getattr(dev, "sm_count", 1))
    launch = (groups, cfg.threads(dev.caps.subgroup_size))
    if cfg.wgmma:
        gemm_wgmma_kernel[launch](*args, *tail)
    else:
        gemm_mma_kernel[launch](*args, xp, *tail)
    return out


def default_config(dev, m: int | None = None) -> GemmConfig:
    """The tile shape for a device (tensor cores or the portable lowering) and M rows."""
    from tattletale.codegen import native_mma, native_wgmma

    if not native_mma(dev.caps.target, dev.caps):
        return PORTABLE_CONFIG
    if m is not None and m <= SMALL_M:
        return CUDA_SMALL_M_CONFIG
    return CUDA_WGMMA_CONFIG if native_wgmma(dev.caps.target, dev.caps) else CUDA_CONFIG
