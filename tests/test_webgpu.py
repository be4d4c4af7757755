"""The WebGPU backend: WGSL legalization and the wgpu runtime.

Rendering checks (the uniformity check for barriers, 64-bit errors, the shape of the generated
WGSL) need no device. The rest run on the first WebGPU adapter (lavapipe on machines without a
GPU) and are skipped without one. With `node` and the npm package `webgpu` (Dawn) reachable
through NODE_PATH, every kernel of this file is also validated by Tint, the WGSL compiler of
browsers; otherwise that test is skipped.
"""

import inspect
import json
import os
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest

import tattletale as tt
from tattletale.codegen import default_caps, ir, render
from tattletale.codegen.passes import lower_lazy
from tattletale.codegen.wgsl import WGSLPrinter

THIS_FILE = os.path.basename(__file__)
F = tt.Buffer[tt.f32]
IB = tt.Buffer[tt.i32]
U = tt.Buffer[tt.u32]


@pytest.fixture(scope="module")
def dev():
    try:
        return tt.device("webgpu")
    except Exception as exc:
        pytest.skip(f"no WebGPU device: {str(exc).splitlines()[0]}")


def wgsl(kernel, **spec) -> str:
    return kernel.source("webgpu", **spec)


def marked_line(kernel, marker: str) -> int:
    """The file line of the kernel's source line containing `marker`."""
    lines, first = inspect.getsourcelines(kernel.fn)
    return next(first + k for k, ln in enumerate(lines) if marker in ln)


# --- saxpy and tensor views ---------------------------------------------------------------------


@tt.kernel
def saxpy(a: tt.f32, x: F, y: F, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        y[i] = a * x[i] + y[i]


def test_saxpy_with_views(dev):
    """Views at element offsets below and beyond the 256-byte binding alignment."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(3000).astype(np.float32)
    ys = rng.standard_normal(3000).astype(np.float32)
    x, y = dev.tensor(xs), dev.tensor(ys)
    n = 1000
    saxpy[(n + 63) // 64, 64](2.5, x.view(3, n), y.view(1111, n), n)
    want = ys.copy()
    want[1111:1111 + n] = np.float32(2.5) * xs[3:3 + n] + ys[1111:1111 + n]
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-6)  # GPUs may fuse a*x+y
    assert "y[tt.y_off + i] = ((a * x[tt.x_off + i]) + y[tt.y_off + i]);" in wgsl(saxpy)
    assert f"// {THIS_FILE}:{marked_line(saxpy, 'y[i] = a')}: y[i] = a * x[i] + y[i]" in wgsl(saxpy)


# --- every IR node ------------------------------------------------------------------------------


@tt.kernel
def scalar_nodes(x: F, k: IB, u: U, fo: F, io: IB, uo: U, n: tt.i32):
    i = tt.global_id(0)
    if i >= n:
        return  # Return
    a = x[i]  # Load, Assign
    b = k[i]
    c = u[i]
    o = i * 16
    fo[o + 0] = a / 3.0 - a * a + 0.5  # Binary on f32
    fo[o + 1] = -a  # Unary
    fo[o + 2] = tt.f32(tt.f16(a * 1000.0))  # Cast to f16 (round to nearest even) and back
    fo[o + 3] = tt.f32(tt.bf16(a * 1000.0))
    fo[o + 4] = tt.select(a > 0.0, a, 2.0 * a)  # eager Select
    fo[o + 5] = x[i + 1] if i + 1 < n else -1.0  # lazy Select with a load: an if
    fo[o + 6] = tt.exp(a * 0.1) + tt.sqrt(tt.abs(a)) + tt.floor(a) + tt.max(a, 0.25)  # Call
    fo[o + 7] = tt.bitcast(tt.bitcast(a, tt.u32) ^ 0x80000000, tt.f32)  # Bitcast
    fo[o + 8] = tt.f32(b) * 0.5 + tt.f32(c)
    fo[o + 9] = float("inf") if b > 0 else float("-inf")  # Const: no WGSL literal for inf
    io[o + 0] = b // 7 + b % 7  # C division
    io[o + 1] = (b << 3) ^ (b >> 2) | ~b  # shifts, bitwise, Unary ~
    io[o + 2] = tt.i32(tt.i8(b))  # wrap to i8
    io[o + 3] = tt.i32(tt.u8(b)) + tt.i32(tt.i16(b * 3))
    io[o + 4] = tt.i32(a)  # truncation toward zero
    io[o + 5] = 1 if (b > 0 and k[(i + 1) % n] > 0) or b == -2147483648 else 0  # lazy and/or
    io[o + 6] = tt.i32(tt.bitcast(tt.f16(a), tt.i16))
    io[o + 7] = tt.min(b, 5) + tt.abs(b % 1000)
    uo[o + 0] = c // 3 + c % 5 + (c >> 1)
    uo[o + 1] = -c  # negation of an unsigned value wraps
    uo[o + 2] = tt.u32(tt.u16(c + 65530))
    uo[o + 3] = tt.u32(b < 0) + tt.u32(a < 0.0) * 2


def test_scalar_nodes(dev):
    n = 257
    rng = np.random.default_rng(1)
    xs = (rng.standard_normal(n) * 30).astype(np.float32)
    ks = rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
    ks[:4] = [-2**31, -7, 0, 7]
    us = rng.integers(0, 2**32, n, dtype=np.int64).astype(np.uint32)
    fo, io, uo = dev.zeros(n * 16, tt.f32), dev.zeros(n * 16, tt.i32), dev.zeros(n * 16, tt.u32)
    scalar_nodes[(n + 31) // 32, 32](dev.tensor(xs), dev.tensor(ks), dev.tensor(us), fo, io, uo, n)
    f, i, u = (t.numpy().reshape(n, 16) for t in (fo, io, uo))
    a, b, c = xs, ks.astype(np.int64), us.astype(np.int64)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(f[:, 0], a / np.float32(3) - a * a + np.float32(0.5), rtol=1e-5)
        np.testing.assert_array_equal(f[:, 1], -a)
        np.testing.assert_array_equal(f[:, 2], (a * np.float32(1000)).astype(np.float16))
        want_bf16 = tt.from_bf16_bits(tt.to_bf16_bits(a * np.float32(1000)))
        np.testing.assert_array_equal(f[:, 3], want_bf16)
        np.testing.assert_array_equal(f[:, 4], np.where(a > 0, a, 2 * a))
        np.testing.assert_array_equal(f[:, 5], np.append(a[1:], -1))
        want6 = np.exp(a * np.float32(0.1)) + np.sqrt(np.abs(a)) + np.floor(a) + np.maximum(a, 0.25)
        np.testing.assert_allclose(f[:, 6], want6, rtol=2e-5)
        np.testing.assert_array_equal(f[:, 7], -a)
        np.testing.assert_allclose(f[:, 8], (b * 0.5 + c).astype(np.float32), rtol=1e-6)
        np.testing.assert_array_equal(f[:, 9], np.where(b > 0, np.inf, -np.inf))
    q = np.trunc(b / 7).astype(np.int64)
    np.testing.assert_array_equal(i[:, 0], (q + (b - 7 * q)).astype(np.int32))
    shl = ((b << 3) & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64)
    np.testing.assert_array_equal(i[:, 1], (shl ^ (b >> 2)) | ~b)
    np.testing.assert_array_equal(i[:, 2], ks.astype(np.int8))
    np.testing.assert_array_equal(i[:, 3], ks.astype(np.uint8).astype(np.int32) +
                                  (ks * np.int32(3)).astype(np.int16))
    np.testing.assert_array_equal(i[:, 4], np.trunc(a).astype(np.int32))
    nxt = np.roll(ks, -1)
    np.testing.assert_array_equal(i[:, 5], ((ks > 0) & (nxt > 0)) | (ks == -2**31))
    np.testing.assert_array_equal(i[:, 6], a.astype(np.float16).view(np.int16))
    np.testing.assert_array_equal(i[:, 7], np.minimum(ks, 5) + np.abs(np.fmod(ks, 1000)))
    np.testing.assert_array_equal(u[:, 0], us // 3 + us % 5 + (us >> 1))
    np.testing.assert_array_equal(u[:, 1], (-c) & 0xFFFFFFFF)
    np.testing.assert_array_equal(u[:, 2], ((c + 65530) & 0xFFFF))
    np.testing.assert_array_equal(u[:, 3], (ks < 0) + (xs < 0) * 2)


@tt.kernel
def control_nodes(x: F, out: IB, n: tt.i32, step: tt.i32):
    i = tt.global_id(0)
    s = tt.shared(64, tt.i32)
    acc = 0
    for j in range(n, 0, -3):  # For with a negative constant step
        acc += j
    for _j in range(0, n, step):  # For with a runtime step
        acc += 1
    j = 0
    while True:  # While, Break, Continue
        j += 1
        if j % 2 == 0:
            continue
        if j > 9:
            break
        acc += 100
    s[tt.local_id(0)] = acc + i  # Store to shared memory
    tt.barrier()  # Barrier
    out[i] = s[63 - tt.local_id(0)]
    if i == 0:
        tt.atomic_add(out, 64, 1)  # ExprStmt of an Atomic
    v = tt.vload(x, i, 2)  # VecLoad, Lane, MakeVec, VecStore
    tt.vstore(x, i + 64, tt.vec(v.y, v.x + 1.0))


def test_control_nodes(dev):
    n, step = 10, 4
    x = dev.tensor(np.arange(512, dtype=np.float32))
    out = dev.zeros(65, tt.i32)
    control_nodes[1, 64](x, out, n, step)
    acc = sum(range(n, 0, -3)) + len(range(0, n, step)) + 100 * 5
    np.testing.assert_array_equal(out.numpy()[:64], acc + np.arange(63, -1, -1))
    assert out.numpy()[64] == 1
    xs = x.numpy()
    np.testing.assert_array_equal(xs[128:256:2], np.arange(1, 128, 2))
    np.testing.assert_array_equal(xs[129:256:2], np.arange(0, 128, 2) + 1)


# --- sub-word memory ----------------------------------------------------------------------------


def _neighbour_writer(t):
    @tt.kernel
    def write(out: tt.Buffer[t], src: tt.Buffer[t], n: tt.i32, rounds: tt.i32):
        i = tt.global_id(0)
        if i < n:
            for r in range(rounds):  # many stores per element widen any race window
                out[i] = src[(i + r) % n]
            out[i] = src[i]
    return write


SUBWORD = (tt.f16, tt.bf16, tt.i8, tt.u8, tt.i16, tt.u16, tt.bool_)


@pytest.mark.parametrize("t", SUBWORD, ids=str)
def test_neighbouring_subword_stores(dev, t):
    """Adjacent threads store adjacent 8/16-bit elements of one word: none is lost."""
    rng = np.random.default_rng(2)
    n = 4099
    if t.is_bool:
        host = rng.random(n) < 0.5
    elif t.is_int:
        info = np.iinfo(t.np_dtype)
        host = rng.integers(info.min, info.max, n, endpoint=True).astype(t.np_dtype)
    else:
        host = rng.standard_normal(n).astype(np.float32)
        host = host.astype(np.float16) if t == tt.f16 else tt.to_bf16_bits(host)
    src = dev.tensor(host, dtype=t)
    out = dev.zeros(n + 8, t)
    _neighbour_writer(t)[(n + 127) // 128, 128](out.view(3, n), src, n, 16)
    got = out.numpy()
    np.testing.assert_array_equal(got[3:3 + n].view(np.uint8), np.asarray(host).view(np.uint8))
    assert not got[:3].view(np.uint8).any() and not got[3 + n:].view(np.uint8).any()


def test_subword_store_is_an_atomic_xor():
    src = wgsl(_neighbour_writer(tt.f16))
    assert "var<storage, read_write> out: array<atomic<u32>>;" in src
    assert "var<storage, read> src: array<u32>;" in src  # only loaded: plain words
    assert "atomicXor(_p, (_old ^ tt_f16_bits(_v)) << _sh);" in src


@tt.kernel
def round16(x: F, h: tt.Buffer[tt.f16], b: tt.Buffer[tt.bf16], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        h[i] = x[i]
        b[i] = x[i]


def test_16bit_rounding_matches_numpy(dev):
    """f32 → f16/bf16 round to nearest even, overflow to inf, keep subnormals, NaN and signs."""
    below = np.arange(0x3C00, 0x3C40, dtype=np.uint16).view(np.float16).astype(np.float64)
    above = np.arange(0x3C01, 0x3C41, dtype=np.uint16).view(np.float16).astype(np.float64)
    special = [65504, 65519.99, 65520, 1e6, -1e6, 6e-8, 3e-8, 2.9e-8, 1e-5, -1e-5, 0.0, -0.0,
               np.inf, -np.inf, np.nan, 1e-40, 3.4e38]
    xs = np.concatenate([(below + above) / 2, -(below + above) / 2, below * (1 + 1e-7), special])
    xs = np.concatenate([xs, np.random.default_rng(3).standard_normal(1000) * 1e3]).astype(np.float32)
    n = len(xs)
    h, b = dev.empty(n, tt.f16), dev.empty(n, tt.bf16)
    round16[(n + 63) // 64, 64](dev.tensor(xs), h, b, n)
    with np.errstate(over="ignore"):
        want = xs.astype(np.float16)
    nan = np.isnan(xs)  # NaN payloads are the GPU's (NVIDIA canonicalizes NaNs)
    got = h.numpy()
    assert np.isnan(got[nan]).all() and np.isnan(tt.from_bf16_bits(b.numpy())[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
    np.testing.assert_array_equal(b.numpy()[~nan], tt.to_bf16_bits(xs)[~nan])


@tt.kernel
def vcopy(src: tt.Buffer, dst: tt.Buffer, n: tt.i32, LANES: tt.constexpr):
    i = tt.global_id(0)
    if i < n:
        tt.vstore(dst, i, tt.vload(src, i, LANES))
    if i == 0:
        dst[n * LANES] = src[n * LANES]  # a scalar access to a buffer of vectors


VECTOR_TYPES = (tt.f32, tt.i32, tt.f16, tt.bf16, tt.i16, tt.u16, tt.i8, tt.u8)


@pytest.mark.parametrize("lanes", (2, 4))
@pytest.mark.parametrize("t", VECTOR_TYPES, ids=str)
def test_vector_loads_and_stores(dev, t, lanes):
    """Whole words or vectors at aligned view offsets, element by element elsewhere."""
    n = 100
    rng = np.random.default_rng(4)
    host = rng.integers(0, 256, (n * lanes + 64) * t.itemsize, np.uint8)
    if t.is_float:  # values, not NaN payloads, travel through registers
        f = rng.standard_normal(n * lanes + 64).astype(np.float32)
        host = (f.astype(np.float16) if t == tt.f16 else f if t == tt.f32 else
                tt.to_bf16_bits(f)).view(np.uint8)
    for src_off, dst_off in ((0, lanes), (1, 3)):
        src = dev.tensor(host.view(t.np_dtype), dtype=t)
        dst = dev.zeros(n * lanes + 64, t)
        vcopy[(n + 63) // 64, 64](src.view(src_off, n * lanes + 1), dst.view(dst_off, n * lanes + 1),
                                  n, lanes)
        want = np.zeros_like(host.view(t.np_dtype))
        want[dst_off:dst_off + n * lanes + 1] = host.view(t.np_dtype)[src_off:src_off + n * lanes + 1]
        np.testing.assert_array_equal(dst.numpy().view(np.uint8), want.view(np.uint8))


def test_vectors_move_whole_words():
    f32 = wgsl(vcopy, src=tt.f32, dst=tt.f32, LANES=4)
    assert "var<storage, read> src: array<vec4<f32>>;" in f32
    assert "dst[(tt.dst_off >> 2u) + _i] = _v;" in f32
    f16 = wgsl(vcopy, src=tt.f16, dst=tt.f16, LANES=4)
    assert "var<storage, read> src: array<vec2<u32>>;" in f16
    assert "return vec4<f32>(unpack2x16float(_w0), unpack2x16float(_w1));" in f16
    assert ("atomicStore(&dst[_w + 1u], (tt_f16_bits(_v.z) << 0u) | (tt_f16_bits(_v.w) << 16u));"
            in f16)


# --- atomics ------------------------------------------------------------------------------------


@tt.kernel
def atomics(fsum: F, counts: IB, umax: U, n: tt.i32):
    i = tt.global_id(0)
    s = tt.shared(4, tt.f32)
    if tt.local_id(0) < 4:
        s[tt.local_id(0)] = 0.0
    tt.barrier()
    if i < n:
        tt.atomic_add(fsum, 0, 0.5)  # f32 add: a compare-exchange loop
        tt.atomic_add(s, i % 4, 1.0)
        tt.atomic_add(counts, 0, 1)
        tt.atomic_max(umax, 0, tt.u32(i) * 3)
        tt.atomic_min(counts, 1, -i)
        if tt.atomic_cas(counts, 2, 0, i + 1) == 0:  # strong: exactly one thread wins
            tt.atomic_add(counts, 5, 1)
        # a lazy select whose deferred side is an atomic runs it only where chosen
        tt.atomic_xchg(counts, 3, tt.atomic_add(counts, 4, 1) if i < 10 else 7)
    tt.barrier()
    if tt.local_id(0) < 4:
        tt.atomic_add(fsum, 1 + tt.local_id(0), s[tt.local_id(0)])


def test_atomics(dev):
    n = 300
    fsum, counts, umax = dev.zeros(5, tt.f32), dev.zeros(6, tt.i32), dev.zeros(1, tt.u32)
    atomics[1, 512](fsum, counts, umax, n)
    np.testing.assert_array_equal(fsum.numpy(), [n * 0.5, 75, 75, 75, 75])
    c = counts.numpy()
    assert (c[0], c[1], c[4], c[5]) == (n, -(n - 1), 10, 1) and 1 <= c[2] <= n
    assert umax.numpy()[0] == (n - 1) * 3


# --- the uniformity check for barriers ----------------------------------------------------------


@tt.func
def sync_here():
    tt.barrier()  # marker: in func


@tt.kernel
def barrier_in_thread_branch(out: F):
    if tt.local_id(0) < 16:
        tt.barrier()  # marker: bad


@tt.kernel
def barrier_after_thread_return(out: F, n: tt.i32):
    i = tt.global_id(0)
    if i >= n:
        return
    out[i] = 1.0
    tt.barrier()  # marker: bad


@tt.kernel
def barrier_in_thread_loop(out: F, n: tt.i32):
    for k in range(tt.local_id(0), n, 64):
        out[k] = 0.0
        tt.barrier()  # marker: bad


@tt.kernel
def barrier_after_data_break(out: F, n: tt.i32):
    for k in range(n):
        tt.barrier()  # marker: bad
        if out[k] > 0.0:  # written by the kernel: a load from it is per-thread
            break
        out[k] = 1.0


@tt.kernel
def barrier_in_data_while(out: F):
    j = 0
    while out[j] > 0.0:
        j += 1
        tt.barrier()  # marker: bad
    out[j] = 0.0


@tt.kernel
def barrier_via_varying_variable(out: F, n: tt.i32):
    m = n
    if tt.local_id(0) == 0:
        m = 2 * n
    if m > 3:
        tt.barrier()  # marker: bad


@tt.kernel
def barrier_in_func_on_thread_branch(out: F):
    if out[tt.local_id(0)] > 0.0:
        sync_here()


@pytest.mark.parametrize("kernel", [
    barrier_in_thread_branch, barrier_after_thread_return, barrier_in_thread_loop,
    barrier_after_data_break, barrier_in_data_while, barrier_via_varying_variable,
    barrier_in_func_on_thread_branch], ids=lambda k: k.__name__)
def test_barrier_in_non_uniform_control_flow_is_an_error(kernel):
    with pytest.raises(tt.CompileError) as info:
        wgsl(kernel)
    err = info.value
    in_func = kernel is barrier_in_func_on_thread_branch
    want = marked_line(sync_here if in_func else kernel, "# marker:")
    assert os.path.basename(err.file) == THIS_FILE and err.line == want, str(err)
    assert "non-uniform control flow" in err.message and "tt.barrier()" in str(err)


@tt.kernel
def uniform_barriers(out: F, params: F, n: tt.i32):
    i = tt.global_id(0)
    s = tt.shared(32, tt.f32)
    m = n
    if tt.local_id(0) == 0:
        m = 2 * n
    m = n + 1  # uniform again: the check is flow-sensitive, like WGSL's
    if tt.group_id(0) < m:  # group ids, parameters and sizes are uniform
        tt.barrier()
    for k in range(n):  # a uniform loop
        if out[k] > 0.0:
            break  # a non-uniform exit: control flow reconverges after the loop
    tt.barrier()
    for _k in range(0, n * tt.local_size(0), tt.num_groups(0)):
        tt.barrier()
    if i == 0:
        out[0] = 1.0  # reconverges after the if
    tt.barrier()
    if params[tt.group_id(0)] > 0.0:  # read-only buffer at a uniform index: uniform
        tt.barrier()
    s[tt.local_id(0)] = tt.f32(tt.local_id(0))
    tt.barrier()
    if s[3] > 2.0:  # a shared array at a uniform index: broadcast with workgroupUniformLoad
        tt.barrier()
        out[1 + tt.group_id(0)] = s[5]


def test_uniform_barriers_compile(dev):
    src = wgsl(uniform_barriers)
    assert src.count("workgroupBarrier();") == 7
    assert "var<storage, read> params: array<f32>;" in src
    assert "if (workgroupUniformLoad(&s[3i]) > 2.0f) {" in src
    assert "] = s[5i];" in src  # a value no condition depends on: a plain load
    out = dev.zeros(64, tt.f32)
    uniform_barriers[2, 32](out, dev.tensor(np.ones(2, np.float32)), 3)
    np.testing.assert_array_equal(out.numpy()[:3], [1, 5, 5])


@tt.kernel
def wide(out: IB, acc: IB):
    wide_sum = 0
    if tt.global_id(1) == 0:
        wide_sum = 1
    out[tt.group_id(1) * tt.num_groups(0) + tt.group_id(0)] = tt.group_id(0) * wide_sum
    tt.atomic_add(acc, tt.group_id(1), 1)


def test_64bit_types_are_a_clear_error():
    @tt.kernel
    def uses_i64(out: tt.Buffer[tt.i64]):
        out[0] = 1  # marker: i64

    with pytest.raises(tt.CompileError) as info:
        wgsl(uses_i64)
    assert info.value.line == marked_line(uses_i64, "# marker: i64")
    assert "no 64-bit integers (i64)" in info.value.message
    assert info.value.unsupported_feature == "i64"


def test_lazy_lowering_leaves_the_shared_ir_alone():
    k = scalar_nodes.lower((), 32)
    before = (len(k.locals), [type(s) for s in k.body])
    lowered = lower_lazy(k)
    assert (len(k.locals), [type(s) for s in k.body]) == before
    assert len(lowered.locals) > len(k.locals)
    assert not any(isinstance(e, ir.Select) and e.lazy and not ir.is_pure(e)
                   for e in ir.walk_body(lowered.body))


# --- runtime ------------------------------------------------------------------------------------


def test_wide_grid_is_folded(dev):
    """More than 65535 groups in x: dispatched folded into y and z, unfolded by the kernel."""
    gx, gy = 65540, 2
    out, acc = dev.zeros(gx * gy, tt.i32), dev.zeros(2, tt.i32)
    wide[(gx, gy), 1](out, acc)
    got = out.numpy().reshape(gy, gx)
    np.testing.assert_array_equal(got[0], np.arange(gx))
    np.testing.assert_array_equal(got[1], 0)
    np.testing.assert_array_equal(acc.numpy(), [gx, gx])


@tt.kernel
def in_place(x: F, out: F, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i] = x[n - 1 - i] * 2.0


def test_one_buffer_read_and_written_in_a_launch(dev):
    """A buffer passed to a read-only and a written parameter: the all-read_write variant."""
    data = np.arange(10, dtype=np.float32)
    t = dev.tensor(data)
    in_place[1, 64](t.view(0, 5), t.view(5, 5), 5)
    np.testing.assert_array_equal(t.numpy(), np.r_[data[:5], data[4::-1] * 2])
    other = dev.zeros(5, tt.f32)
    in_place[1, 64](t.view(5, 5), other, 5)
    np.testing.assert_array_equal(other.numpy(), data[:5] * 4)


@tt.kernel
def bump(x: IB, by: tt.i32):
    x[tt.global_id(0)] += by


def test_batching_recording_and_events(dev):
    x = dev.zeros(4, tt.i32)
    start = dev.event()
    for _ in range(600):  # more launches than one batch
        bump[1, 4](x, 1)
    end = dev.event()
    np.testing.assert_array_equal(x.numpy(), 600)
    assert 0.0 <= start.elapsed_ms(end) < 60_000
    with dev.record() as rec:
        bump[1, 4](x, 10)
        bump[1, 4](x, -1)
    np.testing.assert_array_equal(x.numpy(), 600)  # recorded launches do not run
    for _ in range(3):
        rec.replay()
    dev.synchronize()
    np.testing.assert_array_equal(x.numpy(), 627)
    x.copy_from(np.array([1, 2, 3, 4], np.int32))  # new inputs in the recorded tensor
    rec.replay()
    np.testing.assert_array_equal(x.numpy(), [10, 11, 12, 13])


@tt.kernel
def subgroup_ops(out: F, ids: IB):
    i = tt.global_id(0)
    v = tt.f32(i)
    out[i * 4 + 0] = tt.subgroup_sum(v)
    out[i * 4 + 1] = tt.shuffle_xor(v, 1)
    out[i * 4 + 2] = tt.subgroup_broadcast(v, 0)
    out[i * 4 + 3] = tt.subgroup_max(v) - tt.subgroup_min(v)
    ids[i * 2] = tt.subgroup_local_id()
    ids[i * 2 + 1] = tt.subgroup_id()


def _check_subgroups(dev):
    s = dev.caps.subgroup_size
    out, ids = dev.zeros(64 * 4, tt.f32), dev.zeros(64 * 2, tt.i32)
    subgroup_ops[1, 64](out, ids)
    got, lane = out.numpy().reshape(64, 4), ids.numpy().reshape(64, 2)
    i = np.arange(64)
    np.testing.assert_array_equal(lane[:, 0], i % s)
    np.testing.assert_array_equal(lane[:, 1], i // s)
    base = i - i % s
    np.testing.assert_array_equal(got[:, 0], base * s + s * (s - 1) / 2)
    np.testing.assert_array_equal(got[:, 1], i ^ 1 if s > 1 else i)
    np.testing.assert_array_equal(got[:, 2], base)
    np.testing.assert_array_equal(got[:, 3], s - 1)


def test_subgroups(dev):
    if not dev.caps.native_subgroups:
        pytest.skip("the adapter has no subgroup feature")
    _check_subgroups(dev)


def test_subgroups_of_one_without_the_feature(dev):
    from tattletale.runtimes.webgpu import WebGPUDevice

    plain = WebGPUDevice(dev.index)
    plain.caps = replace(plain.caps, subgroup_size=1, native_subgroups=False)
    assert "subgroupAdd" not in plain.generated_source(subgroup_ops)
    _check_subgroups(plain)


# --- Tint ---------------------------------------------------------------------------------------

_TINT = """
const { create, globals } = require('webgpu');
Object.assign(globalThis, globals);
(async () => {
  const adapter = await create(['backend=null']).requestAdapter();
  const device = await adapter.requestDevice({requiredFeatures: ['subgroups']});
  const out = [];
  for (const code of JSON.parse(require('fs').readFileSync(0, 'utf8'))) {
    const info = await device.createShaderModule({code}).getCompilationInfo();
    out.push(info.messages.filter(m => m.type !== 'info').map(m => `${m.lineNum}: ${m.message}`));
  }
  console.log(JSON.stringify(out));
  process.exit(0);
})();
"""


def test_generated_wgsl_is_tint_valid():
    """Browsers compile WGSL with Tint, which is stricter than naga (e.g. about uniformity)."""
    node = shutil.which("node")
    if node is None or subprocess.run([node, "-e", "require.resolve('webgpu')"],
                                      capture_output=True).returncode:
        pytest.skip("Tint check needs node and the npm package 'webgpu' (Dawn) on NODE_PATH")
    kernels = [saxpy, scalar_nodes, control_nodes, round16, atomics, uniform_barriers, wide, bump,
               subgroup_ops, in_place] + [_neighbour_writer(t) for t in SUBWORD]
    caps = default_caps("webgpu")
    sources = [render("webgpu", k.lower((), 32), caps).text for k in kernels]
    sources += [wgsl(vcopy, src=t, dst=t, LANES=n) for t in VECTOR_TYPES for n in (2, 4)]
    sources.append(WGSLPrinter(subgroup_ops.lower((), 1),
                               replace(caps, subgroup_size=1, native_subgroups=False)).render().text)
    r = subprocess.run([node, "-e", _TINT], input=json.dumps(sources), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    problems = {k: msgs for k, msgs in enumerate(json.loads(r.stdout)) if msgs}
    assert not problems, problems
