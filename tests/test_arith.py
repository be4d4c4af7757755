"""Integer and float arithmetic, promotion, casts, bit casts and 16-bit float rounding."""

import numpy as np
import pytest
from harness import (
    INTS,
    assert_bits,
    assert_close,
    assert_equal,
    cdiv,
    poisoned,
    random_values,
    round_to,
    upload,
)

import tattletale as tt
from tattletale.dsl.types import wrap_int

N = 300
BLOCK = 64
INT_OPS = ("+", "-", "*", "//", "%", "&", "|", "^", "~", "neg", "<<", ">>")


@tt.kernel
def int_ops(a: tt.Buffer, b: tt.Buffer, s: tt.Buffer[tt.i32], out: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        x = a[i]
        y = b[i]
        o = i * 12
        out[o] = x + y
        out[o + 1] = x - y
        out[o + 2] = x * y
        out[o + 3] = x // y
        out[o + 4] = x % y
        out[o + 5] = x & y
        out[o + 6] = x | y
        out[o + 7] = x ^ y
        out[o + 8] = ~x
        out[o + 9] = -x
        out[o + 10] = x << s[i]
        out[o + 11] = x >> s[i]


def c_div(a: int, b: int) -> int:
    """C division: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_reference(x: int, y: int, s: int, t) -> list[int]:
    """The DSL's results with C semantics: sub-32-bit operands compute as i32, results wrap."""
    ct = tt.i32 if t.bits < 32 else t
    vals = [x + y, x - y, x * y, c_div(x, y), x - c_div(x, y) * y, x & y, x | y, x ^ y, ~x, -x,
            x << s, x >> s]
    return [wrap_int(wrap_int(v, ct), t) for v in vals]


@pytest.mark.parametrize("t", INTS, ids=str)
def test_integer_ops(dev, rng, t):
    """+ - * // % & | ^ ~ - << >> on every integer type; // and % truncate toward zero as in C,
    >> is arithmetic for signed and logical for unsigned types."""
    info = np.iinfo(t.np_dtype)
    if t.is_signed:  # stay clear of signed overflow, undefined in C
        half = 1 << (min(t.bits, 32) // 2 - 1)
        x = random_values(rng, N, t, -half, half)
        s = rng.integers(0, min(t.bits, 32) // 2, N).astype(np.int32)
    else:
        x = random_values(rng, N, t)
        s = rng.integers(0, t.bits, N).astype(np.int32)
    y = random_values(rng, N, t, max(info.min, -1000), min(info.max, 1000))
    y[y == 0] = 7
    x[:4] = (info.min if not t.is_signed else -half, info.max if not t.is_signed else half, 7, 1)
    y[:4] = (3, -3 if t.is_signed else 3, -2 if t.is_signed else 2, 5)
    out = poisoned(dev, N * 12, t)
    int_ops[cdiv(N, BLOCK), BLOCK](upload(dev, x, t), upload(dev, y, t), dev.tensor(s), out, N)
    expected = [int_reference(int(a), int(b), int(c), t) for a, b, c in zip(x, y, s)]
    assert_equal(out, np.array(expected, dtype=object).astype(t.np_dtype).reshape(-1))


def test_negative_division_and_modulo_follow_c(dev):
    """-7 // 2 == -3 and -7 % 2 == -1 in kernels (C), unlike Python's -4 and 1."""
    x = np.array([-7, 7, -7, 7, -1, -9, 9, -100], np.int32)
    y = np.array([2, -2, -2, 2, 5, 4, -4, 7], np.int32)
    out = poisoned(dev, 8 * 12, tt.i32)
    int_ops[1, 8](dev.tensor(x), dev.tensor(y), dev.tensor(np.zeros(8, np.int32)), out, 8)
    got = out.numpy().reshape(8, 12)
    np.testing.assert_array_equal(got[:, 3], [-3, -3, 3, 3, 0, -2, -2, -14])
    np.testing.assert_array_equal(got[:, 4], [-1, 1, -1, 1, -1, -1, 1, -2])


@tt.kernel
def promotion(a: tt.Buffer[tt.u8], b: tt.Buffer[tt.i32], c: tt.Buffer[tt.u32],
              d: tt.Buffer[tt.i16], out: tt.Buffer[tt.i32], flags: tt.Buffer[tt.bool_], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i * 4] = a[i] - 200  # u8 promotes to i32, as in C: may be negative
        out[i * 4 + 1] = (a[i] - 200) // 3
        out[i * 4 + 2] = d[i] * d[i]  # i16 * i16 computes in i32: no 16-bit overflow
        out[i * 4 + 3] = a[i] + d[i]
        flags[i * 3] = a[i] - 200 < 0
        flags[i * 3 + 1] = c[i] > b[i]  # u32 vs i32 compares as u32 (C's conversions)
        flags[i * 3 + 2] = c[i] > 5 and a[i] != 0


def test_integer_promotion(dev, rng):
    a = random_values(rng, N, tt.u8)
    b = random_values(rng, N, tt.i32, -1000, 1000)
    c = random_values(rng, N, tt.u32, 0, 2000)
    d = random_values(rng, N, tt.i16)
    out = poisoned(dev, N * 4, tt.i32)
    flags = poisoned(dev, N * 3, tt.bool_)
    promotion[cdiv(N, BLOCK), BLOCK](dev.tensor(a), dev.tensor(b), dev.tensor(c), dev.tensor(d),
                                     out, flags, N)
    ai, di = a.astype(np.int64), d.astype(np.int64)
    q = [c_div(v, 3) for v in (ai - 200).tolist()]
    assert_equal(out, np.stack([ai - 200, q, di * di, ai + di], 1).reshape(-1))
    assert_equal(flags, np.stack([ai < 200, c > b.astype(np.uint32), (c > 5) & (a != 0)], 1)
                 .reshape(-1))


@tt.kernel
def float_arith(x: tt.Buffer, y: tt.Buffer, z: tt.Buffer, exact: tt.Buffer, loose: tt.Buffer,
                n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        acc = x[i] + y[i]  # 16-bit floats compute in f32 ...
        acc = acc + z[i]
        exact[i * 2] = acc  # ... and round once, on store
        exact[i * 2 + 1] = x[i] * y[i]
        loose[i * 4] = x[i] / y[i]  # OpenCL allows 2.5 ulp for f32 division
        loose[i * 4 + 1] = x[i] - y[i] * 0.5  # may contract to an fma
        loose[i * 4 + 2] = x[i] // y[i]  # floor division for floats
        loose[i * 4 + 3] = x[i] % y[i]  # C fmod for floats


@pytest.mark.parametrize("t", (tt.f32, tt.f16, tt.bf16), ids=str)
def test_float_arithmetic(dev, rng, t):
    """f16/bf16 operands compute in f32 and round once when stored; f32 + and * are IEEE."""
    x, y, z = (random_values(rng, N, t) for _ in range(3))
    y[np.abs(y) < 0.25] = 1.5
    exact, loose = poisoned(dev, N * 2, t), poisoned(dev, N * 4, t)
    float_arith[cdiv(N, BLOCK), BLOCK](*(upload(dev, v, t) for v in (x, y, z)), exact, loose, N)
    x32, y32, z32 = (v.astype(np.float32) for v in (x, y, z))
    assert_bits(exact, np.stack([(x32 + y32) + z32, x32 * y32], 1))
    q = x32.astype(np.float64) / y32
    tol = 1e-6 if t == tt.f32 else 1e-2
    assert_close(loose, np.stack([q, x32 - y32 * np.float32(0.5), np.floor(q), np.fmod(x32, y32)],
                                 1), rtol=tol, atol=tol)


@tt.kernel
def annotated_locals(x: tt.Buffer[tt.f32], of: tt.Buffer[tt.f32], oi: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        h: tt.f16 = x[i] * 3.0  # an annotated local has its type: assignments round ...
        b: tt.bf16 = x[i]
        k: tt.u8 = tt.i32(x[i] * 10.0)  # ... or wrap
        s: tt.i16 = 0
        for _ in range(3):
            s = s * 181 + tt.i32(x[i])
        of[i * 2] = h * 1.0
        of[i * 2 + 1] = b
        oi[i * 2] = k
        oi[i * 2 + 1] = s


def test_annotated_locals_round_and_wrap(dev, rng):
    x = (rng.standard_normal(N) * 30).astype(np.float32)
    of, oi = poisoned(dev, N * 2, tt.f32), poisoned(dev, N * 2, tt.i32)
    annotated_locals[cdiv(N, BLOCK), BLOCK](dev.tensor(x), of, oi, N)
    s = np.zeros(N, np.int64)
    for _ in range(3):
        s = (s * 181 + np.trunc(x).astype(np.int64)).astype(np.int16).astype(np.int64)
    assert_equal(of, np.stack([(x * np.float32(3)).astype(np.float16), round_to(x, tt.bf16)], 1))
    assert_equal(oi, np.stack([np.trunc(x * np.float32(10)).astype(np.int64).astype(np.uint8), s],
                              1))


# --- conversions --------------------------------------------------------------------------------


@tt.kernel
def conversions(x: tt.Buffer[tt.f32], k: tt.Buffer[tt.i32], o_i32: tt.Buffer[tt.i32],
                o_u8: tt.Buffer[tt.u8], o_i8: tt.Buffer[tt.i8], o_f16: tt.Buffer[tt.f16],
                o_bf16: tt.Buffer[tt.bf16], o_f32: tt.Buffer[tt.f32], o_b: tt.Buffer[tt.bool_],
                n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        o_i32[i * 2] = tt.i32(x[i])  # truncation toward zero
        o_i32[i * 2 + 1] = tt.cast(tt.u8(k[i]), tt.i32) + tt.i32(True)
        o_u8[i] = tt.u8(k[i])  # integers wrap
        o_i8[i] = tt.cast(k[i], tt.i8)
        o_f16[i * 2] = tt.f16(x[i] * 1000.0)  # round to nearest even
        o_f16[i * 2 + 1] = tt.f16(k[i])  # from an integer
        o_bf16[i * 2] = tt.bf16(x[i])
        o_bf16[i * 2 + 1] = tt.cast(k[i], tt.bf16)
        o_f32[i * 4] = tt.f32(tt.f16(x[i]))  # the f16 value, exactly
        o_f32[i * 4 + 1] = tt.f32(tt.bf16(x[i]))
        o_f32[i * 4 + 2] = tt.f32(k[i]) + tt.f32(True)
        o_f32[i * 4 + 3] = tt.f32(tt.f64(x[i]) * 3.0)
        o_b[i * 2] = tt.bool_(k[i])
        o_b[i * 2 + 1] = tt.bool_(x[i] > 0.0)


def test_conversions(dev, rng):
    x = (rng.standard_normal(N) * 50).astype(np.float32)
    k = rng.integers(-40000, 40000, N).astype(np.int32)
    k[:3] = (0, 255, -129)
    outs = [poisoned(dev, N * w, t) for t, w in ((tt.i32, 2), (tt.u8, 1), (tt.i8, 1), (tt.f16, 2),
                                                 (tt.bf16, 2), (tt.f32, 4), (tt.bool_, 2))]
    conversions[cdiv(N, BLOCK), BLOCK](dev.tensor(x), dev.tensor(k), *outs, N)
    o_i32, o_u8, o_i8, o_f16, o_bf16, o_f32, o_b = outs
    assert_equal(o_i32, np.stack([np.trunc(x), k.astype(np.uint8).astype(np.int32) + 1], 1))
    assert_equal(o_u8, k.astype(np.uint8))
    assert_equal(o_i8, k.astype(np.int8))
    assert_bits(o_f16, np.stack([x * np.float32(1000), k.astype(np.float32)], 1))
    assert_bits(o_bf16, np.stack([x, k.astype(np.float32)], 1))
    assert_equal(o_f32, np.stack([x.astype(np.float16), round_to(x, tt.bf16), k + 1.0,
                                  (x.astype(np.float64) * 3).astype(np.float32)], 1))
    assert_equal(o_b, np.stack([k != 0, x > 0], 1))


@tt.kernel
def rounding(x: tt.Buffer[tt.f32], o16: tt.Buffer[tt.f16], ob16: tt.Buffer[tt.bf16], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        o16[i] = x[i]  # storing rounds to nearest even
        ob16[i] = x[i]


def test_16bit_rounding_is_nearest_even(dev, rng):
    """Ties, overflow, subnormals, signed zeros, inf and NaN, plus random values, against numpy's
    float16 and tt.to_bf16_bits."""
    one16, one_b = 2.0 ** -10, 2.0 ** -7  # f16 / bf16 spacing at 1.0
    special = np.array([
        1 + one16 / 2, 1 + 3 * one16 / 2, -(1 + one16 / 2), 2049, 2051,  # f16 ties → even
        1 + one_b / 2, 1 + 3 * one_b / 2, -(1 + 3 * one_b / 2), 257, 259,  # bf16 ties → even
        65504, 65519.99, 65520, -65520, 3.4e38, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25,
        0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1.5e-39,
    ], dtype=np.float32)
    x = np.concatenate([special, rng.standard_normal(300).astype(np.float32) *
                        np.exp2(rng.integers(-30, 30, 300)).astype(np.float32)])
    n = x.size
    o16, ob16 = poisoned(dev, n, tt.f16, nan=False), poisoned(dev, n, tt.bf16, nan=False)
    rounding[cdiv(n, BLOCK), BLOCK](dev.tensor(x), o16, ob16, n)
    assert_bits(o16, x)
    assert_bits(ob16, x)


@tt.kernel
def bitcasts(x: tt.Buffer[tt.f32], h: tt.Buffer[tt.f16], b: tt.Buffer[tt.bf16],
             u: tt.Buffer[tt.u32], o32: tt.Buffer[tt.u32], o16: tt.Buffer[tt.u16],
             of: tt.Buffer[tt.f32], oh: tt.Buffer[tt.f16], ob: tt.Buffer[tt.bf16],
             oi: tt.Buffer[tt.i16], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        o32[i * 2] = tt.bitcast(x[i], tt.u32)
        o32[i * 2 + 1] = tt.u32(tt.bitcast(x[i], tt.i32))
        o16[i * 2] = tt.bitcast(h[i], tt.u16)
        o16[i * 2 + 1] = tt.bitcast(b[i], tt.u16)
        of[i] = tt.bitcast(u[i], tt.f32)
        oh[i * 2] = tt.bitcast(tt.u16(u[i]), tt.f16)
        oh[i * 2 + 1] = tt.bitcast(b[i], tt.f16)  # bf16 → f16: same bits
        ob[i * 2] = tt.bitcast(tt.u16(u[i] >> 16), tt.bf16)
        ob[i * 2 + 1] = tt.bitcast(h[i], tt.bf16)  # f16 → bf16: same bits
        oi[i] = tt.bitcast(tt.bitcast(h[i], tt.u16), tt.i16)


def finite_bits16(rng, n):
    """Random 16-bit patterns that are finite both as f16 and as bf16 (NaNs need not keep their
    payload through a float register)."""
    bits = rng.integers(0, 1 << 16, n).astype(np.uint16)
    bad = ((bits & 0x7C00) == 0x7C00) | ((bits & 0x7F80) == 0x7F80)
    bits[bad] &= np.uint16(0xBFFF)
    return bits


def test_bitcasts(dev, rng):
    """bitcast between f32/i32/u32 and f16/bf16/u16/i16 keeps every bit (incl. f16 <-> bf16)."""
    n = N
    x = rng.standard_normal(n).astype(np.float32)
    hb, bb = finite_bits16(rng, n), finite_bits16(rng, n)
    lo = finite_bits16(rng, n)
    u = (finite_bits16(rng, n).astype(np.uint32) << 16) | lo
    outs = [poisoned(dev, n * w, t) for t, w in ((tt.u32, 2), (tt.u16, 2), (tt.f32, 1),
                                                 (tt.f16, 2), (tt.bf16, 2), (tt.i16, 1))]
    bitcasts[cdiv(n, BLOCK), BLOCK](dev.tensor(x), dev.tensor(hb.view(np.float16)),
                                    dev.tensor(bb, dtype=tt.bf16), dev.tensor(u), *outs, n)
    o32, o16, of, oh, ob, oi = outs
    assert_equal(o32, np.stack([x.view(np.uint32)] * 2, 1))
    assert_equal(o16, np.stack([hb, bb], 1))
    assert_equal(of, u.view(np.float32))
    np.testing.assert_array_equal(oh.numpy().view(np.uint16).reshape(n, 2), np.stack([lo, bb], 1))
    np.testing.assert_array_equal(ob.numpy().reshape(n, 2), np.stack([(u >> 16).astype(np.uint16),
                                                                      hb], 1))
    assert_equal(oi, hb.view(np.int16))
