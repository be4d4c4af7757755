"""Buffers of every element type, generic buffers, scalar arguments, tensor views."""

import numpy as np
import pytest
from harness import ALL_TYPES, assert_equal, cdiv, is_compile_only, poisoned, random_values, upload

import tattletale as tt

N = 1000  # not a multiple of BLOCK: the tail threads must do nothing
BLOCK = 128


@tt.kernel
def copy(src: tt.Buffer, dst: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        dst[i] = src[i]


@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_round_trip(dev, rng, t):
    """Load and store of every element type is bit-exact, and only the first n elements change."""
    x = random_values(rng, N, t)
    out = poisoned(dev, N + 24, t)
    copy[cdiv(N, BLOCK), BLOCK](upload(dev, x, t), out.view(0, N), N)
    got = out.numpy()
    expected = np.concatenate([np.asarray(x).astype(got.dtype) if t != tt.bf16 else
                               tt.to_bf16_bits(x), poisoned_values(t, 24)])
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


def poisoned_values(t, n):
    from harness import _FLOAT_POISON

    if t.is_float:
        word, bits = _FLOAT_POISON[t.name]
        return np.full(n, bits, dtype=word).view(t.np_dtype)
    return np.full(n * t.itemsize, 0x7F, dtype=np.uint8).view(t.np_dtype)


def test_generic_buffer_compiles_once_per_dtype(dev, rng):
    """`tt.Buffer` takes its element type from the argument: one specialization per dtype."""
    before = {k for k in copy.compiled if k[0] is dev}
    outs = []
    types = (tt.f32, tt.i16, tt.u8)
    for t in types:
        x = random_values(rng, 300, t)
        out = poisoned(dev, 300, t)
        copy[3, BLOCK](upload(dev, x, t), out, 300)
        copy[3, BLOCK](upload(dev, x, t), out, 300)  # same dtype again: no new compile
        outs.append((out, x))
    new = {k for k in copy.compiled if k[0] is dev} - before
    assert {k[1] for k in new} <= {(t, t) for t in types}
    assert len({k for k in copy.compiled if k[0] is dev}) <= len(before) + len(types)
    for out, x in outs:
        assert_equal(out, x)


@tt.kernel
def view_add(x: tt.Buffer[tt.f32], y: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i] = x[i] + y[i]


def test_tensor_views(dev, rng):
    """Views (element offsets into one allocation) are addressed from their own start."""
    data = rng.standard_normal(64).astype(np.float32)
    whole = dev.tensor(data)
    out = poisoned(dev, 64, tt.f32)
    view_add[1, 32](whole.view(3, 20), whole.view(40, 20), out.view(7, 20), 20)
    got = out.numpy()
    np.testing.assert_array_equal(got[7:27], data[3:23] + data[40:60])
    assert np.isnan(got[:7]).all() and np.isnan(got[27:]).all()


def _fill_kernel(t):
    @tt.kernel
    def fill(out: tt.Buffer, v: t, n: tt.i32):
        i = tt.global_id(0)
        if i < n:
            out[i] = v

    return fill


_FILL = {t: _fill_kernel(t) for t in ALL_TYPES}
_SCALARS = {
    "f32": [1.25, -3.5e-3], "f16": [0.1, -65504.0], "bf16": [0.1, -3.0e38], "i8": [-128, 127],
    "u8": [255, 7], "i16": [-32768, 1234], "u16": [65535, 3], "i32": [-(2**31), 2**31 - 1],
    "u32": [2**32 - 1, 17], "i64": [-(2**63), 2**40 + 3], "u64": [2**64 - 1, 2**63 + 5],
    "bool": [True, False],
}


@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_scalar_arguments(dev, t):
    """Scalars of every type pass by value; 16-bit float arguments round to nearest even."""
    outs = []
    for v in _SCALARS[t.name]:
        out = poisoned(dev, 40, t)
        _FILL[t][1, 64](out, v, 40)
        outs.append((out, v))
    for out, v in outs:
        if t == tt.bf16:
            assert_equal(out, np.full(40, tt.from_bf16_bits(tt.to_bf16_bits(np.float32(v)))))
        else:
            assert_equal(out, np.full(40, v, dtype=t.np_dtype if t != tt.f16 else np.float64)
                         .astype(t.np_dtype))


def test_compile_only_device_reads_stop(dev):
    """On a compile-only device, reading a result ends the test (see harness.CompileOnly)."""
    if not is_compile_only(dev):
        pytest.skip("runs on compile-only devices")
    out = poisoned(dev, 4, tt.f32)
    _FILL[tt.f32][1, 4](out, 1.0, 4)
    assert dev.compiled_count >= 1
    with pytest.raises(pytest.skip.Exception):
        out.numpy()
