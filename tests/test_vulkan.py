"""The Vulkan backend: SPIR-V emission, the runtime, the fallbacks for missing device features, and
the traps of the `vulkan` package.

Every module built on a Vulkan device is checked by spirv-val (the runtime validates each one when
spirv-val is installed; see test_spirv_val_is_active). Kernels run on several variants of the
device, each with optional features turned off, so that every fallback path executes on whatever
device is present (lavapipe in CI): descriptors instead of device addresses, u32 words instead of
8/16-bit storage, integer rounding instead of RoundingModeRTE, compare-exchange loops instead of
float atomics, subgroups of one, staging copies instead of mapped memory.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from harness import ALL_TYPES, assert_bits, assert_equal, cdiv, poisoned, random_values, upload

import tattletale as tt
from tattletale.codegen import render, spirv
from tattletale.runtimes import vulkan as rt

NARROW_OFF = ("storage8", "storage16", "int8", "int16", "float16", "rte16", "atomic_add_f32_buffer",
              "atomic_add_f32_shared")
VARIANTS = {
    "full": (),
    "descriptors-staging": ("bda", "mapped"),
    "no-narrow": NARROW_OFF,
    "minimal": NARROW_OFF + ("bda", "mapped", "native_subgroups"),
}

try:
    _DEVICE = tt.device("vulkan")
    _WHY = ""
except Exception as exc:  # no loader, no driver, no `vulkan` package
    _DEVICE, _WHY = None, str(exc).splitlines()[0]
pytestmark = pytest.mark.skipif(_DEVICE is None, reason=f"no Vulkan device: {_WHY}")


@pytest.fixture(autouse=True)
def validated(monkeypatch):
    """Every module built during these tests goes through spirv-val."""
    monkeypatch.setenv("TT_SPIRV_VALIDATE", "1")


_variants: dict[str, tt.Device] = {}


@pytest.fixture(params=list(VARIANTS), scope="module")
def vdev(request) -> tt.Device:
    """The Vulkan device with some optional features turned off."""
    if request.param not in _variants:
        _variants[request.param] = rt.VulkanDevice(0, disable=VARIANTS[request.param])
    return _variants[request.param]


def test_spirv_val_is_active():
    assert shutil.which("spirv-val"), "install spirv-tools: every module is validated in these tests"
    assert spirv.validate(b"\x03\x02\x23\x07" + b"\0" * 16) != ""  # a broken module is reported


# --- basics -------------------------------------------------------------------------------------


@tt.kernel
def saxpy(a: tt.f32, x: tt.Buffer[tt.f32], y: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        y[i] = a * x[i] + y[i]


def test_saxpy(vdev, rng):
    n = 1000
    xs, ys = rng.random(n, np.float32), rng.random(n, np.float32)
    y = vdev.tensor(ys)
    saxpy[cdiv(n, 128), 128](2.0, vdev.tensor(xs), y, n)
    assert_equal(y, np.float32(2.0) * xs + ys)


def test_listing_and_module():
    text = saxpy.source("vulkan")
    assert 'OpEntryPoint GLCompute %saxpy "saxpy"' in text
    assert "OpLine" in text and "PhysicalStorageBuffer" in text
    gen = render("vulkan", saxpy.lower((), 32), spirv.DEFAULT_CAPS)
    assert gen.binary[:4] == struct.pack("<I", 0x07230203) and spirv.validate(gen.binary) == ""


def test_listing_without_spirv_dis(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    text = saxpy.source("vulkan")
    assert text.startswith("; SPIR-V 1.5") and "OpEntryPoint" in text and "OpFMul" in text


# --- memory of every type, in buffers, shared and private arrays, as scalars and vectors --------


@tt.kernel
def shuttle(x: tt.Buffer, out: tt.Buffer, n: tt.i32, T: tt.constexpr):
    """x → shared → private → out (element-wise, reversed within each block of 64)."""
    sh = tt.shared(64, T)
    pr = tt.array(2, T)
    lid = tt.local_id(0)
    i = tt.global_id(0)
    if i < n:
        sh[lid] = x[i]
    tt.barrier()
    if i < n:
        pr[1] = sh[63 - lid]
        out[i] = pr[1]


@tt.kernel
def vectors(x: tt.Buffer, vout: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n // 4:
        v = tt.vload(x, i, 4)
        tt.vstore(vout, i, v)
        w = tt.vload(x, i * 2, 2)
        tt.vstore(vout, i * 2 + 1, w)  # overwrites lanes 2, 3 with lanes 0, 1


@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_every_type_through_every_memory(vdev, rng, t):
    n = 256
    x = random_values(rng, n + 4, t)
    xs, out = upload(vdev, x, t), poisoned(vdev, n + 3, t)
    # views at odd element offsets: sub-word elements then share words with their neighbours
    shuttle[cdiv(n, 64), 64](xs.view(1, n), out.view(3, n), n, t)
    assert_equal(out.view(3, n), x[1:n + 1].reshape(-1, 64)[:, ::-1].reshape(-1))
    if t == tt.bool_:
        return  # no vectors of bool
    vout = poisoned(vdev, n + 4, t)
    vectors[cdiv(n, 64), 64](xs.view(4, n), vout.view(4, n), n)  # views aligned to the vectors
    q = x[4:].reshape(-1, 4).copy()
    q[:, 2:] = q[:, :2]
    assert_equal(vout.view(4, n), q.reshape(-1))
    with pytest.raises(ValueError, match="aligned to"):
        vectors[1, 64](xs.view(2, n), vout.view(4, n), n)


@tt.kernel
def round16(x: tt.Buffer[tt.f32], h: tt.Buffer[tt.f16], b: tt.Buffer[tt.bf16], hr: tt.Buffer[tt.f32],
            n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        h[i] = x[i]  # stores round
        b[i] = x[i]
        hr[i] = tt.f32(tt.f16(x[i]))  # so do casts in registers


def test_16bit_rounding_edges(vdev, rng):
    """Ties, subnormals, the overflow threshold, NaN, infinities and signed zeros, bit-exact."""
    f16 = np.arange(0, 0x7C01, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (f16[:-1] + f16[1:]) / 2  # halfway between neighbours: ties go to even
    edges = np.array([65504, 65519.99, 65520, 1e9, np.inf, np.nan, 0.0, -0.0, 2.0 ** -25,
                      2.0 ** -25 * 1.0001, 2.0 ** -24, 1e-40, 3.0 * 2.0 ** -26])
    x = np.concatenate([mids, f16[:-1] * (1 + 2.0 ** -12), edges, rng.standard_normal(4000) * 1e3])
    x = np.concatenate([x, -x]).astype(np.float32)
    n = x.size
    h, b, hr = poisoned(vdev, n, tt.f16), poisoned(vdev, n, tt.bf16), poisoned(vdev, n, tt.f32)
    round16[cdiv(n, 256), 256](vdev.tensor(x), h, b, hr, n)
    assert_bits(h, x)
    assert_bits(b, x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(hr.numpy(), x.astype(np.float16).astype(np.float32))


# --- atomics ------------------------------------------------------------------------------------


@tt.kernel
def atomics(fsum: tt.Buffer[tt.f32], isum: tt.Buffer[tt.i32], umax: tt.Buffer[tt.u32],
            imin: tt.Buffer[tt.i32], old: tt.Buffer[tt.i32], fx: tt.Buffer[tt.f32], prev: tt.Buffer[tt.f32],
            cas: tt.Buffer[tt.u32], n: tt.i32):
    s = tt.shared(2, tt.f32)
    c = tt.shared(1, tt.i32)
    lid = tt.local_id(0)
    if lid == 0:
        s[0] = 0.0
        c[0] = 0
    tt.barrier()
    i = tt.global_id(0)
    if i < n:
        tt.atomic_add(fsum, 0, 0.5)
        tt.atomic_add(s, 0, 1.0)
        old[i] = tt.atomic_add(isum, 0, 1)
        tt.atomic_max(umax, 0, tt.u32(i * 7))
        tt.atomic_min(imin, 0, 100 - i)
        tt.atomic_xchg(s, 1, 2.5)
        tt.atomic_add(c, 0, 2)
        prev[i] = tt.atomic_xchg(fx, i, tt.f32(i))
        tt.atomic_cas(cas, i % 4, tt.u32(0), tt.u32(i + 1))
    tt.barrier()
    if lid == 0:
        tt.atomic_add(fsum, 1, s[0] + s[1])
        tt.atomic_add(isum, 1, c[0])


def test_atomics(vdev):
    n = 300
    fsum, isum = vdev.zeros(2, tt.f32), vdev.zeros(2, tt.i32)
    umax, imin = vdev.zeros(1, tt.u32), vdev.tensor(np.array([1000], np.int32))
    old, fx, cas = poisoned(vdev, n, tt.i32), vdev.tensor(np.full(n, -1.0, np.float32)), vdev.zeros(4, tt.u32)
    prev = poisoned(vdev, n, tt.f32)
    atomics[cdiv(n, 64), 64](fsum, isum, umax, imin, old, fx, prev, cas, n)
    groups = cdiv(n, 64)
    per_group = [min(64, n - 64 * g) for g in range(groups)]
    assert_equal(fsum, [0.5 * n, sum(p + 2.5 for p in per_group)])
    assert_equal(isum, [n, 2 * n])
    assert sorted(old.numpy().tolist()) == list(range(n))  # each old value seen once
    assert_equal(umax, [7 * (n - 1)])
    assert_equal(imin, [100 - (n - 1)])
    assert_equal(fx, np.arange(n, dtype=np.float32))
    assert_equal(prev, np.full(n, -1.0))
    assert all(v > 0 and (v - 1) % 4 == k for k, v in enumerate(cas.numpy()))


# --- subgroups ----------------------------------------------------------------------------------


@tt.kernel
def subgroups(x: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], ids: tt.Buffer[tt.i32]):
    i = tt.global_id(0)
    sg = tt.subgroup_size()
    v = x[i]
    lane = tt.subgroup_local_id()
    out[i * 6] = tt.subgroup_sum(v)
    out[i * 6 + 1] = tt.subgroup_max(v)
    out[i * 6 + 2] = tt.subgroup_min(v)
    out[i * 6 + 3] = tt.shuffle(v, (lane + 1) % sg)
    out[i * 6 + 4] = tt.shuffle_xor(v, 1 if sg > 1 else 0)
    out[i * 6 + 5] = tt.subgroup_broadcast(v, 0)
    ids[i * 2] = tt.subgroup_id()
    ids[i * 2 + 1] = tt.i32(tt.subgroup_sum(tt.i32(1)))


def test_subgroups(vdev, rng):
    block = 64
    sg = vdev.caps.subgroup_size
    x = rng.standard_normal(block).astype(np.float32)
    out, ids = poisoned(vdev, block * 6, tt.f32), poisoned(vdev, block * 2, tt.i32)
    subgroups[1, block](vdev.tensor(x), out, ids)
    g = x.reshape(-1, sg).astype(np.float64)
    lanes = np.arange(sg)
    want = np.stack([np.repeat(g.sum(1), sg), np.repeat(g.max(1), sg), np.repeat(g.min(1), sg),
                     g[:, (lanes + 1) % sg].reshape(-1), g[:, lanes ^ (1 if sg > 1 else 0)].reshape(-1),
                     np.repeat(g[:, 0], sg)], 1)
    np.testing.assert_allclose(out.numpy().reshape(-1, 6), want, rtol=1e-5)
    assert_equal(ids, np.stack([np.arange(block) // sg, np.full(block, sg)], 1).reshape(-1))


# --- control flow -------------------------------------------------------------------------------


@tt.kernel
def guarded(x: tt.Buffer[tt.i32], counter: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32,
            step: tt.i32):
    i = tt.global_id(0)
    if i >= n:
        return
    # the unchosen side must not run: x[n] would read past the end, the atomic would count
    a = x[i + 1] if i + 1 < n else -1
    b = i % 2 == 0 and tt.atomic_add(counter, 0, 1) >= 0
    c = i % 3 == 0 or tt.atomic_add(counter, 1, 1) < 0
    total = 0
    for k in range(i, -1, step):  # a runtime (negative) step
        if k % 5 == 4:
            continue
        total += k
        if total > 50:
            break
    while True:
        total += 1000
        if total > 3000:
            break
    out[i * 4] = a
    out[i * 4 + 1] = tt.i32(b)
    out[i * 4 + 2] = tt.i32(c)
    out[i * 4 + 3] = total


def test_lazy_evaluation_and_loops(vdev):
    n = 50
    x = np.arange(100, 100 + n, dtype=np.int32)
    counter, out = vdev.zeros(2, tt.i32), poisoned(vdev, n * 4, tt.i32)
    guarded[1, 64](vdev.tensor(x), counter, out, n, -1)
    want = []
    for i in range(n):
        total = 0
        for k in range(i, -1, -1):
            if k % 5 == 4:
                continue
            total += k
            if total > 50:
                break
        while total <= 3000:
            total += 1000
        want += [x[i + 1] if i + 1 < n else -1, i % 2 == 0, i % 3 == 0 or 0, total]
    assert_equal(out, want)
    assert_equal(counter, [len(range(0, n, 2)), n - len(range(0, n, 3))])


# --- ids and grids larger than one dispatch allows ----------------------------------------------


@tt.kernel
def grid_ids(out: tt.Buffer[tt.i32]):
    g = tt.group_id(0)
    if tt.local_id(0) == 0:
        out[g * 3] = g
        out[g * 3 + 1] = tt.num_groups(0)
        out[g * 3 + 2] = tt.global_size(0) - tt.local_size(0) * tt.num_groups(0)


def test_grid_beyond_the_dispatch_limit(vdev):
    groups = vdev.limits.maxComputeWorkGroupCount[0] + 10 if vdev.limits.maxComputeWorkGroupCount[0] \
        < 1 << 20 else 70000
    out = poisoned(vdev, groups * 3, tt.i32)
    grid_ids[groups, 1](out)
    assert_equal(out, np.stack([np.arange(groups), np.full(groups, groups), np.zeros(groups)], 1))


# --- runtime: recording, events, staging --------------------------------------------------------


def test_recording_events_and_batches(vdev):
    n = 4096
    x = vdev.zeros(n, tt.f32)
    ones = vdev.tensor(np.ones(n, np.float32))
    start = vdev.event()
    for _ in range(3 * rt._BATCH + 1):  # several submissions in flight
        saxpy[cdiv(n, 256), 256](1.0, ones, x, n)
    with vdev.record() as rec:
        saxpy[cdiv(n, 256), 256](2.0, ones, x, n)
        saxpy[cdiv(n, 64), 64](-1.0, ones, x, n)
    rec.replay()
    rec.replay()
    end = vdev.event()
    assert end.elapsed_ms(start) <= 0 <= start.elapsed_ms(end)
    assert_equal(x, np.full(n, 3 * rt._BATCH + 3, np.float32))
    big = np.arange(3 << 20, dtype=np.float32)  # more than one staging chunk when staged
    assert_equal(vdev.tensor(big), big)


# --- the traps of the `vulkan` package ----------------------------------------------------------


def test_trap_nested_stage_struct_is_kept_alive():
    """A pipeline's stage create-info built inline is freed (with its entry-point name) as soon as
    the outer create-info is built, and pipeline creation fails with VkErrorUnknown (nearly always,
    depending on what reuses the memory): the runtime keeps it in a variable. Many pipelines."""
    x = _DEVICE.zeros(64, tt.f32)
    saxpy[1, 64](1.0, x, x, 64)
    kernel = saxpy.compiled[(_DEVICE, ())]
    for block in range(1, 40):
        assert kernel.pipeline((block, 1, 1), split=block % 2 == 0) is not None


def test_trap_whole_size_is_unsigned():
    """`vk.VK_WHOLE_SIZE` is -1, which cffi refuses for a VkDeviceSize; the runtime's value works
    (it binds descriptors in the descriptor variant and clears memory in `zeros`)."""
    vk = rt._vk()
    with pytest.raises(OverflowError):
        vk.VkDescriptorBufferInfo(range=vk.VK_WHOLE_SIZE)
    assert vk.VkDescriptorBufferInfo(range=rt._WHOLE_SIZE).range == 2 ** 64 - 1
    assert vk.VkComputePipelineCreateInfo(basePipelineIndex=-1).basePipelineIndex == -1  # int32


# --- errors -------------------------------------------------------------------------------------


def test_invalid_module_names_the_python_line(monkeypatch):
    """spirv-val's complaint about an instruction comes with the Python line it was emitted for."""
    from tattletale.runtimes import base

    @tt.kernel
    def doomed(x: tt.Buffer[tt.f32], n: tt.i32):
        i = tt.global_id(0)
        if i < n:
            x[i] = x[i] * 3.0  # its OpFMul gets an undefined result type below

    real_render = base.render

    def broken_render(target, kernel, caps):
        gen = real_render(target, kernel, caps)
        words = list(struct.unpack(f"<{len(gen.binary) // 4}I", gen.binary))
        k = 5
        while words[k] & 0xFFFF != spirv.OP["FMul"]:
            k += words[k] >> 16
        words[k + 1] = words[3] + 7  # an id beyond the bound
        gen.binary = struct.pack(f"<{len(words)}I", *words)
        return gen

    monkeypatch.setattr(base, "render", broken_render)
    dev = rt.VulkanDevice(0)
    with pytest.raises(tt.BackendCompileError, match=r"invalid SPIR-V for kernel 'doomed'") as info:
        doomed[1, 4](dev.zeros(4, tt.f32), 4)
    assert "test_vulkan.py" in str(info.value) and "x[i] = x[i] * 3.0" in str(info.value)


@tt.kernel
def wide(x: tt.Buffer[tt.f64], y: tt.Buffer[tt.i64]):
    x[0] = tt.f64(y[0])


def test_missing_64bit_features_are_compile_errors():
    for feature, name in (("float64", "shaderFloat64"), ("int64", "shaderInt64")):
        dev = rt.VulkanDevice(0, disable=(feature,) + (("bda",) if feature == "int64" else ()))
        with pytest.raises(tt.CompileError, match=name):
            wide[1, 1](dev.zeros(1, tt.f64), dev.zeros(1, tt.i64))


def test_push_constant_overflow_is_a_compile_error():
    k = saxpy.lower((), 8)
    caps = spirv.VulkanCaps("vulkan", max_push_constants=16)
    with pytest.raises(tt.CompileError, match="push constants"):
        render("vulkan", k, caps)
