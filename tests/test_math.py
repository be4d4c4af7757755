"""Math builtins against float64 numpy references; min/max with NaN and inf; integer min/max/abs."""

import math

import numpy as np
import pytest
from harness import INTS, assert_close, assert_equal, cdiv, poisoned, random_values, round_to, upload

import tattletale as tt
from tattletale.dsl.types import wrap_int

N = 256 + 37
BLOCK = 64
_erf = np.vectorize(math.erf)

# name -> (reference on float64, input: "any" | "pos" | "small", f32 relative tolerance)
UNARY = {
    "exp": (np.exp, "small", 4e-6), "exp2": (np.exp2, "small", 4e-6), "log": (np.log, "pos", 4e-6),
    "log2": (np.log2, "pos", 4e-6), "sqrt": (np.sqrt, "pos", 2e-6),
    "rsqrt": (lambda v: 1 / np.sqrt(v), "pos", 4e-6), "sin": (np.sin, "small", 4e-6),
    "cos": (np.cos, "small", 4e-6), "tanh": (np.tanh, "any", 4e-6), "erf": (_erf, "any", 1e-5),
    "floor": (np.floor, "any", 0), "ceil": (np.ceil, "any", 0), "abs": (np.abs, "any", 0),
}


@tt.kernel
def unary_math(x: tt.Buffer, p: tt.Buffer, s: tt.Buffer, out: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]  # any value
        q = p[i]  # positive
        w = s[i]  # small: |w| < 8
        o = i * 13
        out[o] = tt.exp(w)
        out[o + 1] = tt.exp2(w)
        out[o + 2] = tt.log(q)
        out[o + 3] = tt.log2(q)
        out[o + 4] = tt.sqrt(q)
        out[o + 5] = tt.rsqrt(q)
        out[o + 6] = tt.sin(w)
        out[o + 7] = tt.cos(w)
        out[o + 8] = tt.tanh(v)
        out[o + 9] = tt.erf(v)
        out[o + 10] = tt.floor(v)
        out[o + 11] = tt.ceil(v)
        out[o + 12] = abs(v)


@pytest.mark.parametrize("t", (tt.f32, tt.f16, tt.bf16, tt.f64), ids=str)
def test_unary_math(dev, rng, t):
    """Each function within a few ulp of float64 (16-bit types: computed in f32, rounded once)."""
    inputs = {"any": random_values(rng, N, t), "pos": round_to(rng.uniform(1e-3, 1e3, N), t),
              "small": round_to(rng.uniform(-8, 8, N), t)}
    out = poisoned(dev, N * 13, t)
    unary_math[cdiv(N, BLOCK), BLOCK](*(upload(dev, inputs[k], t) for k in ("any", "pos", "small")),
                                      out, N)
    got = out.numpy().reshape(N, 13)
    if t == tt.bf16:
        got = tt.from_bf16_bits(got)
    ulp16 = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7}
    for col, (name, (ref, kind, rtol)) in enumerate(UNARY.items()):
        want = ref(inputs[kind].astype(np.float64))
        if t.name in ulp16:  # the f32 result (close to `want`) rounded to the 16-bit type
            want, rtol = round_to(want, t).astype(np.float64), ulp16[t.name]
        elif t == tt.f64:
            rtol = rtol * 1e-3
        np.testing.assert_allclose(got[:, col].astype(np.float64), want, rtol=rtol, atol=1e-30,
                                   err_msg=f"tt.{name} on {t}")


@tt.kernel
def binary_math(x: tt.Buffer, y: tt.Buffer, p: tt.Buffer, out: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        a = x[i]
        b = y[i]
        o = i * 8
        out[o] = tt.pow(p[i], b * 0.25)
        out[o + 1] = tt.min(a, b)
        out[o + 2] = tt.max(a, b)
        out[o + 3] = tt.fma(a, b, 1.5)
        out[o + 4] = tt.clamp(a, -1.0, 2.0)
        out[o + 5] = tt.select(a > b, a * 2.0, b)
        out[o + 6] = min(a, b, 0.5)  # Python's min/max are tt.min/tt.max
        out[o + 7] = a ** 2 + b ** 3


@pytest.mark.parametrize("t", (tt.f32, tt.f16, tt.bf16), ids=str)
def test_binary_math(dev, rng, t):
    x, y = random_values(rng, N, t), random_values(rng, N, t)
    p = round_to(rng.uniform(0.1, 10, N), t)
    out = poisoned(dev, N * 8, t)
    binary_math[cdiv(N, BLOCK), BLOCK](*(upload(dev, v, t) for v in (x, y, p)), out, N)
    a, b = x.astype(np.float64), y.astype(np.float64)
    want = np.stack([p.astype(np.float64) ** (b * 0.25), np.minimum(a, b), np.maximum(a, b),
                     a * b + 1.5, np.clip(a, -1, 2), np.where(a > b, a * 2, b),
                     np.minimum(np.minimum(a, b), 0.5), a * a + b * b * b], 1)
    if t == tt.f32:
        assert_close(out, want, rtol=2e-5, atol=1e-5)
    else:
        assert_close(out, round_to(want, t), rtol=2.0 ** -7 if t == tt.bf16 else 2.0 ** -10,
                     atol=1e-3)


@tt.kernel
def nan_minmax(x: tt.Buffer[tt.f32], y: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i * 3] = tt.min(x[i], y[i])
        out[i * 3 + 1] = tt.max(x[i], y[i])
        out[i * 3 + 2] = tt.clamp(x[i], -1.0, y[i])


def test_min_max_nan_and_inf(dev):
    """min/max are C's fmin/fmax: a NaN operand yields the other one; infinities order."""
    nan, inf = np.nan, np.inf
    x = np.array([nan, 1.0, nan, -inf, inf, 0.0, -0.5, 3.0, nan, -inf], np.float32)
    y = np.array([2.0, nan, nan, 5.0, -3.0, inf, -inf, inf, -inf, nan], np.float32)
    out = poisoned(dev, x.size * 3, tt.f32, nan=False)
    nan_minmax[1, 16](dev.tensor(x), dev.tensor(y), out, x.size)
    clamp = np.fmin(np.fmax(x, -1.0), y)
    assert_equal(out, np.stack([np.fmin(x, y), np.fmax(x, y), clamp], 1))


@tt.kernel
def int_minmax(a: tt.Buffer, b: tt.Buffer, out: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        x = a[i]
        y = b[i]
        out[i * 5] = tt.min(x, y)
        out[i * 5 + 1] = max(x, y)
        out[i * 5 + 2] = tt.clamp(x, 3, 100)
        out[i * 5 + 3] = tt.select(x > y, x, y)
        out[i * 5 + 4] = tt.abs(x) if x != 7 else y


@pytest.mark.parametrize("t", INTS, ids=str)
def test_integer_min_max_abs(dev, rng, t):
    info = np.iinfo(t.np_dtype)
    x = random_values(rng, N, t, max(info.min, -(1 << 30)), min(info.max, 1 << 30))
    y = random_values(rng, N, t)
    out = poisoned(dev, N * 5, t)
    int_minmax[cdiv(N, BLOCK), BLOCK](upload(dev, x, t), upload(dev, y, t), out, N)
    xi, yi = x.astype(object), y.astype(object)
    want = np.stack([np.minimum(xi, yi), np.maximum(xi, yi), np.clip(xi, 3, 100),
                     np.where(xi > yi, xi, yi), np.where(xi != 7, np.abs(xi), yi)], 1)
    wrap = np.vectorize(lambda v: wrap_int(int(v), t), otypes=[object])  # abs(-128) as i8
    assert_equal(out, wrap(want).astype(t.np_dtype).reshape(-1))
