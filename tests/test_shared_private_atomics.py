"""Workgroup-shared arrays with barriers, private arrays, and atomics on buffers and shared arrays."""

import numpy as np
import pytest
from harness import assert_close, assert_equal, cdiv, poisoned, random_values, read, upload

import tattletale as tt

TILE = 16


@tt.kernel
def transpose(src: tt.Buffer, dst: tt.Buffer, rows: tt.i32, cols: tt.i32, DT: tt.constexpr):
    tile = tt.shared((TILE, TILE + 1), DT)  # 2-D, padded against bank conflicts
    tx = tt.local_id(0)
    ty = tt.local_id(1)
    x = tt.group_id(0) * TILE + tx
    y = tt.group_id(1) * TILE + ty
    if x < cols and y < rows:
        tile[ty, tx] = src[y * cols + x]
    tt.barrier()
    x = tt.group_id(1) * TILE + tx
    y = tt.group_id(0) * TILE + ty
    if x < rows and y < cols:
        dst[y * rows + x] = tile[tx, ty]


@pytest.mark.parametrize("t", (tt.f32, tt.f16, tt.bf16, tt.i32, tt.u8), ids=str)
def test_tiled_transpose(dev, rng, t):
    rows, cols = 37, 50  # not multiples of the tile
    a = random_values(rng, (rows, cols), t)
    out = poisoned(dev, rows * cols, t)
    transpose[(cdiv(cols, TILE), cdiv(rows, TILE)), (TILE, TILE)](upload(dev, a, t), out, rows, cols,
                                                                   t)
    assert_equal(out, a.T.reshape(-1))


@tt.kernel
def block_sum(x: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], n: tt.i32, BLOCK: tt.constexpr):
    buf = tt.shared((BLOCK,), tt.f32)
    lid = tt.local_id(0)
    i = tt.global_id(0)
    buf[lid] = x[i] if i < n else 0.0  # the conditional expression only reads when i < n
    tt.barrier()
    s = BLOCK // 2
    while s > 0:
        if lid < s:
            buf[lid] += buf[lid + s]
        tt.barrier()
        s //= 2
    if lid == 0:
        out[tt.group_id(0)] = buf[0]


@pytest.mark.parametrize("block", (64, 256))
def test_block_reduction(dev, rng, block):
    n = 1000
    x = rng.integers(-1000, 1000, n).astype(np.float32)  # integers: sums are exact in any order
    groups = cdiv(n, block)
    out = poisoned(dev, groups, tt.f32)
    block_sum[groups, block](dev.tensor(x), out, n, block)
    padded = np.concatenate([x, np.zeros(groups * block - n, np.float32)])
    assert_equal(out, padded.reshape(groups, block).sum(1))


@tt.kernel
def private_sort(x: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], flags: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        a = tt.array((8,), tt.f32)
        seen = tt.array((2, 4), tt.bool_)  # 2-D private array of bools
        for k in range(8):
            a[k] = x[i * 8 + k]
            seen[k // 4, k % 4] = x[i * 8 + k] > 0.0
        for k in range(1, 8):  # insertion sort
            v = a[k]
            j = k - 1
            while j >= 0 and a[j] > v:  # `and` keeps a[-1] from being read
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        cube = tt.array((2, 2, 2), tt.i32)  # 3-D, row-major like numpy
        for r in range(2):
            for c in range(4):
                cube[c // 2, c % 2, r] = 1 << (r * 4 + c) if seen[r, c] else 0
        count = 0
        for d0 in range(2):
            for d1 in range(2):
                for d2 in range(2):
                    count += cube[d0, d1, d2]
        for k in range(8):
            out[i * 8 + k] = a[k]
        flags[i] = count


def test_private_arrays(dev, rng):
    n = 100
    x = rng.standard_normal((n, 8)).astype(np.float32)
    out, flags = poisoned(dev, n * 8, tt.f32), poisoned(dev, n, tt.i32)
    private_sort[cdiv(n, 32), 32](dev.tensor(x), out, flags, n)
    assert_equal(out, np.sort(x, 1).reshape(-1))
    assert_equal(flags, ((x > 0) * (1 << np.arange(8))).sum(1))


@tt.kernel
def f16_arrays(x: tt.Buffer[tt.f16], out: tt.Buffer[tt.f16], n: tt.i32):
    s = tt.shared((64,), tt.f16)
    p = tt.array((4,), tt.bf16)
    q = tt.array((2,), tt.f16)
    i = tt.global_id(0)
    lid = tt.local_id(0)
    if i < n:
        s[lid] = x[i] * 3.0  # rounded to f16 when stored in the array
    tt.barrier()
    if i < n:
        for k in range(4):
            p[k] = s[(lid + k) % 64]
        q[1] = p[0] + p[3]  # rounded to f16 in the private array
        out[i] = q[1]


def test_16bit_shared_and_private_arrays(dev, rng):
    n = 128
    x = random_values(rng, n, tt.f16)
    out = poisoned(dev, n, tt.f16)
    f16_arrays[2, 64](dev.tensor(x), out, n)
    s = (x.astype(np.float32) * 3).astype(np.float16).reshape(2, 64)
    shifted = np.roll(s, -3, axis=1).reshape(-1)
    p0 = s.reshape(-1).astype(np.float32)
    p3 = shifted.astype(np.float32)
    from harness import round_to

    want = (round_to(p0, tt.bf16) + round_to(p3, tt.bf16)).astype(np.float32)
    assert_equal(out, want.astype(np.float16))


# --- atomics ------------------------------------------------------------------------------------


@tt.kernel
def histogram(x: tt.Buffer[tt.i32], hist: tt.Buffer[tt.u32], n: tt.i32, BINS: tt.constexpr):
    local = tt.shared((BINS,), tt.u32)
    lid = tt.local_id(0)
    for b in range(lid, BINS, tt.local_size(0)):  # runtime start and step
        local[b] = 0
    tt.barrier()
    i = tt.global_id(0)
    if i < n:
        tt.atomic_add(local, x[i] % BINS, 1)
    tt.barrier()
    for b in range(lid, BINS, tt.local_size(0)):
        if local[b] != 0:
            tt.atomic_add(hist, b, local[b])


def test_histogram(dev, rng):
    n, bins = 5000, 100
    x = rng.integers(0, 1 << 20, n).astype(np.int32)
    hist = dev.tensor(np.zeros(bins, np.uint32))
    histogram[cdiv(n, 64), 64](dev.tensor(x), hist, n, bins)
    assert_equal(hist, np.bincount(x % bins, minlength=bins))


@tt.kernel
def buffer_atomics(x: tt.Buffer[tt.i32], u: tt.Buffer[tt.u32], f: tt.Buffer[tt.f32],
                   ai: tt.Buffer[tt.i32], au: tt.Buffer[tt.u32], af: tt.Buffer[tt.f32],
                   old: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        tt.atomic_add(ai, 0, x[i])
        tt.atomic_min(ai, 1, x[i])
        tt.atomic_max(ai, 2, x[i])
        tt.atomic_add(au, 0, u[i])
        tt.atomic_min(au, 1, u[i])
        tt.atomic_max(au, 2, u[i])
        tt.atomic_add(af, 0, f[i])
        old[i] = tt.atomic_xchg(ai, 3, i)
        tt.atomic_xchg(af, 1, 2.5)
        tt.atomic_xchg(au, 4, u[i])
        expected = ai[4]  # increment through compare-and-swap
        while True:
            prev = tt.atomic_cas(ai, 4, expected, expected + 1)
            if prev == expected:
                break
            expected = prev
        seen = au[3]
        while True:
            prev2 = tt.atomic_cas(au, 3, seen, seen + u[i] % 7)
            if prev2 == seen:
                break
            seen = prev2


def test_buffer_atomics(dev, rng):
    n = 700
    x = rng.integers(-10000, 10000, n).astype(np.int32)
    u = rng.integers(0, 1 << 20, n).astype(np.uint32)
    f = rng.integers(-100, 100, n).astype(np.float32)  # integers: exact in any order
    ai = np.array([5, 100, -100, -1, 3], np.int32)
    au = np.array([7, 1 << 30, 1, 11, 5], np.uint32)
    af = np.array([0.5, 0.0], np.float32)
    tai, tau, taf = dev.tensor(ai), dev.tensor(au), dev.tensor(af)
    old = poisoned(dev, n, tt.i32)
    buffer_atomics[cdiv(n, 64), 64](dev.tensor(x), dev.tensor(u), dev.tensor(f), tai, tau, taf, old,
                                    n)
    got_ai = read(tai)
    np.testing.assert_array_equal(got_ai[[0, 1, 2, 4]],
                                  [5 + x.sum(), min(100, x.min()), max(-100, x.max()), 3 + n])
    # xchg: the old values and the final one are exactly the initial value and every thread id
    np.testing.assert_array_equal(np.sort(np.append(read(old), got_ai[3])), np.arange(-1, n))
    got_au = read(tau)
    np.testing.assert_array_equal(got_au[:4], [7 + int(u.sum()), min(1 << 30, u.min()),
                                               max(1, u.max()), 11 + int((u % 7).sum())])
    assert got_au[4] in u  # some thread's value was exchanged in last
    assert_equal(taf, [0.5 + f.sum(), 2.5])


@tt.kernel
def shared_atomics(x: tt.Buffer[tt.i32], out_i: tt.Buffer[tt.i32], out_f: tt.Buffer[tt.f32],
                   n: tt.i32):
    acc = tt.shared((4,), tt.i32)
    facc = tt.shared((1,), tt.f32)
    lid = tt.local_id(0)
    if lid == 0:
        acc[0] = 0
        acc[1] = 1 << 30
        acc[2] = -(1 << 30)
        acc[3] = 0
        facc[0] = 0.0
    tt.barrier()
    i = tt.global_id(0)
    if i < n:
        tt.atomic_add(acc, 0, x[i])
        tt.atomic_min(acc, 1, x[i])
        tt.atomic_max(acc, 2, x[i])
        tt.atomic_add(facc, 0, tt.f32(x[i]) * 0.5)
        prev = tt.atomic_cas(acc, 3, 0, i + 1)  # exactly one thread wins
        if prev != 0:
            tt.atomic_xchg(acc, 3, acc[3])
    tt.barrier()
    if lid == 0:
        g = tt.group_id(0)
        for k in range(4):
            out_i[g * 4 + k] = acc[k]
        out_f[g] = facc[0]


def test_shared_atomics(dev, rng):
    n, block = 500, 128
    x = rng.integers(-1000, 1000, n).astype(np.int32)
    groups = cdiv(n, block)
    out_i, out_f = poisoned(dev, groups * 4, tt.i32), poisoned(dev, groups, tt.f32)
    shared_atomics[groups, block](dev.tensor(x), out_i, out_f, n)
    got = read(out_i).reshape(groups, 4)
    for g in range(groups):
        part = x[g * block:(g + 1) * block]
        np.testing.assert_array_equal(got[g, :3], [part.sum(), part.min(), part.max()])
        assert 1 <= got[g, 3] - g * block <= len(part)  # the id + 1 of one thread of the group
    assert_close(out_f, [x[g * block:(g + 1) * block].sum() * 0.5 for g in range(groups)])
