"""Control flow, device functions, compile-time values (constexpr, globals, closures, unrolling)."""

import importlib.util

import numpy as np
import pytest
from dsl_funcs import add_offset, sign
from harness import assert_close, assert_equal, cdiv, poisoned

import tattletale as tt

N = 300
BLOCK = 64


def launch_1d(kernel, n, *args, block=BLOCK):
    kernel[cdiv(n, block), block](*args)


# --- branches -----------------------------------------------------------------------------------


@tt.kernel
def branches(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i >= n:
        return
    v = x[i]
    if v < -50:
        r = 1
    elif v < 0:
        r = 2
    elif v == 0:
        r = 3
    else:
        if v % 2 == 0:
            r = 4
        else:
            r = 5
    out[i] = r * 10 + (7 if v > 25 else 8)


def test_if_elif_else(dev, rng):
    x = rng.integers(-100, 100, N).astype(np.int32)
    x[:3] = (0, -50, 26)
    out = poisoned(dev, N, tt.i32)
    launch_1d(branches, N, dev.tensor(x), out, N)
    r = np.select([x < -50, x < 0, x == 0, x % 2 == 0], [1, 2, 3, 4], 5)
    assert_equal(out, r * 10 + np.where(x > 25, 7, 8))


@tt.kernel
def logic(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]
        a = 1 if (v > 0 and v % 3 == 0) or not (v > -10) else 0
        b = 1 if 0 < v < 50 else 0  # chained comparison
        c = 1 if v else 0  # an integer as a condition
        # `and` short-circuits: the right side would read out of bounds for i == n - 1
        d = 1 if i + 1 < n and x[i + 1] > v else 0
        out[i * 4] = a
        out[i * 4 + 1] = b
        out[i * 4 + 2] = c
        out[i * 4 + 3] = d


def test_boolean_logic(dev, rng):
    x = rng.integers(-30, 80, N).astype(np.int32)
    x[:2] = 0
    out = poisoned(dev, N * 4, tt.i32)
    launch_1d(logic, N, dev.tensor(x), out, N)
    nxt = np.append(x[1:], np.iinfo(np.int32).min)
    expected = np.stack([((x > 0) & (x % 3 == 0)) | ~(x > -10), (0 < x) & (x < 50), x != 0,
                         nxt > x], 1)
    assert_equal(out, expected.astype(np.int32).reshape(-1))


# --- loops --------------------------------------------------------------------------------------


@tt.kernel
def ranges(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32, step: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]
        a = 0
        for k in range(v):
            a += k
        b = 0
        for k in range(3, v, 2):
            b += k * 2
        c = 0
        for k in range(v, -3, -3):  # negative constant step
            c += k
        d = 0
        for k in range(1, v, step):  # runtime step, positive
            d += k
        e = 0
        for k in range(v, -v, -step):  # runtime step, negative
            e += k
        f = 0
        for _k in range(v, v - 5):  # empty
            f += 1
        g = 0
        for k in range(4):  # the body reassigns the loop variable: range() is unaffected
            k = k * 10
            g += k
        h = 0
        for _k in range(v):
            n2 = v  # a runtime loop bound changed by the body is read once
            h += 1
            v = n2 - 1
        last = -1
        for last in range(x[i]):  # noqa: B007 - after the loop it holds the last value handed out
            a += 0
        o = i * 9
        out[o + 8] = last
        out[o] = a
        out[o + 1] = b
        out[o + 2] = c
        out[o + 3] = d
        out[o + 4] = e
        out[o + 5] = f
        out[o + 6] = g
        out[o + 7] = h


def test_range_loops(dev, rng):
    x = rng.integers(0, 20, N).astype(np.int32)
    step = 3
    x[:2] = (1, 0)
    out = poisoned(dev, N * 9, tt.i32)
    launch_1d(ranges, N, dev.tensor(x), out, N, step)
    expected = [[sum(range(v)), sum(2 * k for k in range(3, v, 2)), sum(range(v, -3, -3)),
                 sum(range(1, v, step)), sum(range(v, -v, -step)), 0, 60, v, max(v - 1, -1)]
                for v in x.tolist()]
    assert_equal(out, np.array(expected, np.int32).reshape(-1))


@tt.kernel
def while_break_continue(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]
        steps = 0
        while v != 1:  # Collatz
            if v % 2 == 0:
                v = v // 2
            else:
                v = 3 * v + 1
            steps += 1
        s = 0
        for k in range(100):
            if k % 3 == 0:
                continue
            if k > x[i]:
                break
            s += k
        t = 0
        while True:
            t += 1
            if t * t >= x[i]:
                break
        pairs = 0
        for a in range(6):
            for b in range(6):
                if b > a:
                    break  # leaves the inner loop only
                pairs += 1
        out[i * 4] = steps
        out[i * 4 + 1] = s
        out[i * 4 + 2] = t
        out[i * 4 + 3] = pairs


def collatz(v):
    steps = 0
    while v != 1:
        v = v // 2 if v % 2 == 0 else 3 * v + 1
        steps += 1
    return steps


def test_while_break_continue(dev, rng):
    x = rng.integers(1, 90, N).astype(np.int32)
    out = poisoned(dev, N * 4, tt.i32)
    launch_1d(while_break_continue, N, dev.tensor(x), out, N)
    expected = []
    for v in x.tolist():
        s = sum(k for k in range(100) if k % 3 and k <= v)
        t = next(t for t in range(1, 100) if t * t >= v)
        expected.append([collatz(v), s, t, 21])
    assert_equal(out, np.array(expected, np.int32).reshape(-1))


@tt.kernel
def find_first(x: tt.Buffer[tt.i32], targets: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32],
               n: tt.i32, m: tt.i32):
    i = tt.global_id(0)
    if i >= m:
        return
    for k in range(n):
        if x[k] == targets[i]:
            out[i] = k
            return  # early return from inside a loop
    out[i] = -1


def test_early_return(dev, rng):
    x = rng.integers(0, 50, 40).astype(np.int32)
    targets = rng.integers(0, 60, N).astype(np.int32)
    out = poisoned(dev, N, tt.i32)
    launch_1d(find_first, N, dev.tensor(x), dev.tensor(targets), out, 40, N)
    expected = [int(np.argmax(x == t)) if (x == t).any() else -1 for t in targets.tolist()]
    assert_equal(out, expected)


@tt.kernel
def countdown(out: tt.Buffer[tt.i32], n: tt.i32, start: tt.i32):
    i = tt.global_id(0)
    if i < n:
        total = 0
        while start > i:  # a scalar parameter is a variable like any other
            total += start
            start -= 1
        out[i] = total


def test_reassign_scalar_parameter(dev):
    out = poisoned(dev, 40, tt.i32)
    countdown[1, 64](out, 40, 30)
    assert_equal(out, [sum(range(i + 1, 31)) for i in range(40)])


@tt.kernel
def reverse_unsigned(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.u32):
    if tt.global_id(0) == 0:
        j = 0
        for k in range(n - 1, -1, -1):  # an unsigned bound with a negative step
            out[j] = x[k]
            j += 1


def test_countdown_with_unsigned_bound(dev, rng):
    x = rng.integers(-100, 100, 50).astype(np.int32)
    out = poisoned(dev, 50, tt.i32)
    reverse_unsigned[1, 1](dev.tensor(x), out, 50)
    assert_equal(out, x[::-1])


# --- compile-time values ------------------------------------------------------------------------


@tt.kernel
def unrolled(x: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = tt.vload(x, i, 4)
        acc = 0.0
        for k in tt.static_range(4):
            acc += v[k] * (k + 1)  # k is a compile-time int: it may select a lane
        for k in tt.static_range(3, -1, -1):
            if k % 2 == 0:  # folded at compile time
                acc = acc - v[k]
        for w in (2.0, 0.5):  # a compile-time tuple unrolls too
            acc = acc * w
        out[i] = acc


def test_static_range_unrolls(dev, rng):
    x = rng.standard_normal((N, 4)).astype(np.float32)
    out = poisoned(dev, N, tt.f32)
    launch_1d(unrolled, N, dev.tensor(x), out, N)
    src = unrolled.source("opencl")
    assert "for (" not in src and "while" not in src
    expected = x @ np.arange(1, 5) - x[:, 2] - x[:, 0]
    assert_close(out, expected, rtol=1e-5, atol=1e-5)


@tt.kernel
def tuple_of_buffers(a: tt.Buffer[tt.i32], b: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        for buf, k in ((a, 1), (b, 2)):  # buffers in a compile-time tuple alias the parameters
            buf[i] = buf[i] * k + i


def test_unrolled_tuple_of_buffers(dev, rng):
    a, b = (rng.integers(-1000, 1000, N).astype(np.int32) for _ in range(2))
    ta, tb = dev.tensor(a), dev.tensor(b)
    launch_1d(tuple_of_buffers, N, ta, tb, N)
    assert_equal(ta, a + np.arange(N))
    assert_equal(tb, b * 2 + np.arange(N))


SCALE = 3  # a module global read by kernels at compile time


def make_scaler(offset):
    @tt.kernel
    def scaler(x: tt.Buffer[tt.i32], BLOCK: tt.constexpr, out: tt.Buffer[tt.i32], n: tt.i32,
               MODE: tt.constexpr):
        i = tt.group_id(0) * BLOCK + tt.local_id(0)
        tt.static_assert(BLOCK % 32 == 0, "BLOCK must be a multiple of 32")
        if i < n:
            if MODE == "scale":  # compile-time string comparison: one branch is generated
                out[i] = x[i] * SCALE + offset  # offset comes from the closure
            else:
                out[i] = x[i] - offset

    return scaler


def test_constexpr_globals_and_closures(dev, rng):
    k = make_scaler(17)
    x = rng.integers(-1000, 1000, N).astype(np.int32)
    runs = []
    for block, mode in ((64, "scale"), (128, "scale"), (64, "shift")):
        out = poisoned(dev, N, tt.i32)
        # compile-time parameters may sit anywhere; keyword arguments bind by name
        k[cdiv(N, block), block](dev.tensor(x), block, out, MODE=mode, n=N)
        runs.append((out, mode))
    assert len([key for key in k.compiled if key[0] is dev]) == 3
    assert "17" in k.source("cuda", BLOCK=64, MODE="scale")
    assert "- 17" in k.source("opencl", BLOCK=64, MODE="shift").replace("(", "")
    for out, mode in runs:
        assert_equal(out, x * SCALE + 17 if mode == "scale" else x - 17)


@tt.kernel
def floordiv_by(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.f32], n: tt.i32, K: tt.constexpr):
    i = tt.global_id(0)
    if i < n:
        out[i] = tt.f32(x[i] // K)


def test_constexpr_type_is_part_of_the_key(dev, rng):
    """K=2 and K=2.0 are equal in Python but make different kernels (C vs floor division)."""
    x = rng.integers(-100, 100, N).astype(np.int32)
    a, b = poisoned(dev, N, tt.f32), poisoned(dev, N, tt.f32)
    launch_1d(floordiv_by, N, dev.tensor(x), a, N, 2)
    launch_1d(floordiv_by, N, dev.tensor(x), b, N, 2.0)
    assert_equal(a, np.trunc(x / 2))
    assert_equal(b, np.floor(x / 2.0))


# --- device functions ---------------------------------------------------------------------------

LIMIT = 40


@tt.func
def clamp_to(v, hi=LIMIT):
    if v > hi:
        return hi  # early return
    return v


@tt.func
def first_multiple(v, m):
    for k in range(1, 100):
        if (v * k) % m == 0:
            return k  # return from inside a loop
    return -1


@tt.func
def pair_product(v):
    for a in range(10):
        for b in range(10):
            if a * b == v:
                return a * 10 + b  # return from a nested loop
    return -1


@tt.func
def combine(a, b, scale=2):
    return clamp_to(a) * scale + first_multiple(b, 7)  # functions calling functions


@tt.kernel
def funcs(x: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]
        out[i * 6] = combine(v, v + 1)
        out[i * 6 + 1] = combine(v, v, scale=-1) + clamp_to(v, hi=10)
        out[i * 6 + 2] = pair_product(v)
        out[i * 6 + 3] = add_offset(v)  # its default is a global of its own module
        out[i * 6 + 4] = sign(v - 30) * 5
        # the statement after an inlined call keeps its own source line
        out[i * 6 + 5] = first_multiple(v, 3) + first_multiple(v + 1, 3)


def test_device_functions(dev, rng):
    x = rng.integers(0, 90, N).astype(np.int32)
    out = poisoned(dev, N * 6, tt.i32)
    launch_1d(funcs, N, dev.tensor(x), out, N)

    def first_mult(v, m):
        return next((k for k in range(1, 100) if (v * k) % m == 0), -1)

    def pair(v):
        return next((a * 10 + b for a in range(10) for b in range(10) if a * b == v), -1)

    expected = [[min(v, LIMIT) * 2 + first_mult(v + 1, 7),
                 -min(v, LIMIT) + first_mult(v, 7) + min(v, 10), pair(v), v + 1000,
                 int(np.sign(v - 30)) * 5, first_mult(v, 3) + first_mult(v + 1, 3)]
                for v in x.tolist()]
    assert_equal(out, np.array(expected, np.int32).reshape(-1))


@tt.func
def relu(v):
    if v < 0.0:
        return 0  # a Python number: the function returns the type of `v`
    return v


@tt.func
def doubled_after(v, k):
    while True:
        if k > 3:
            return v * 2.0
        k += 1  # a number argument the body reassigns is a variable


@tt.func
def halves(h):
    h = h * 0.5  # 16-bit arguments compute in f32, as kernel variables do
    return h * 3.0


@tt.kernel
def float_funcs(x: tt.Buffer[tt.f32], h: tt.Buffer[tt.f16], out: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i * 4] = relu(x[i])
        out[i * 4 + 1] = doubled_after(x[i], 0)
        out[i * 4 + 2] = relu(h[i])
        out[i * 4 + 3] = halves(h[i])


def test_device_function_result_types(dev, rng):
    x = rng.standard_normal(N).astype(np.float32)
    h = rng.standard_normal(N).astype(np.float16)
    out = poisoned(dev, N * 4, tt.f32)
    launch_1d(float_funcs, N, dev.tensor(x), dev.tensor(h), out, N)
    h32 = h.astype(np.float32)
    assert_equal(out, np.stack([np.maximum(x, 0), x * 2, np.maximum(h32, 0),
                                h32 * np.float32(0.5) * np.float32(3)], 1).reshape(-1))


def test_generated_code_keeps_lines_after_inlining():
    src = funcs.source("cuda")
    lines = src.splitlines()
    # the store after inlining first_multiple() is annotated with the kernel's line, not the
    # function's last line
    k = max(i for i, ln in enumerate(lines) if "out[" in ln and "* 6) + 5" in ln)
    comment = next(ln for ln in reversed(lines[:k]) if ln.strip().startswith("//"))
    assert "first_multiple(v, 3) + first_multiple(v + 1, 3)" in comment


@tt.func
def counted_read(counter, x, i):
    tt.atomic_add(counter, 0, 1)  # a side effect: shows whether the call ran
    return x[i]


@tt.func
def halve(v):
    return v // 2


@tt.kernel
def lazy_calls(x: tt.Buffer[tt.i32], counter: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        v = x[i]
        a = counted_read(counter, x, i) if v > 0 else -1  # only the chosen branch runs
        b = 1 if v > 10 and counted_read(counter, x, i) > 20 else 0  # `and` short-circuits ...
        c = 1 if v < 0 or counted_read(counter, x, i) > 50 else 0  # ... and `or` too
        # the right side is not evaluated past the end of the buffer
        d = 1 if i + 1 < n and counted_read(counter, x, i + 1) > v else 0
        steps = 0
        w = v
        while halve(w) > 0:  # the condition, with its inlined call, runs every iteration
            w = halve(w)
            steps += 1
        out[i * 5] = a
        out[i * 5 + 1] = b
        out[i * 5 + 2] = c
        out[i * 5 + 3] = d
        out[i * 5 + 4] = steps


def test_device_functions_in_lazy_expressions(dev, rng):
    """Inlined calls in `x if c else y`, `and`, `or` and `while` conditions run exactly when
    Python would run them."""
    x = rng.integers(-60, 60, N).astype(np.int32)
    counter = dev.tensor(np.zeros(1, np.int32))
    out = poisoned(dev, N * 5, tt.i32)
    launch_1d(lazy_calls, N, dev.tensor(x), counter, out, N)
    nxt = np.append(x[1:], 0)
    last = np.arange(N) == N - 1
    steps = [int(v).bit_length() - 1 if v > 0 else 0 for v in x]
    expected = np.stack([np.where(x > 0, x, -1), (x > 10) & (x > 20), (x < 0) | (x > 50),
                         ~last & (nxt > x), steps], 1)
    assert_equal(out, expected.astype(np.int32).reshape(-1))
    calls = (x > 0).sum() + (x > 10).sum() + (x >= 0).sum() + (N - 1)
    assert_equal(counter, [calls])


@tt.kernel
def multi_assign(counter: tt.Buffer[tt.i32], out: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        a = b = tt.atomic_add(counter, 0, 1)  # evaluated once
        out[i] = a - b


def test_chained_assignment_evaluates_once(dev):
    counter = dev.tensor(np.zeros(1, np.int32))
    out = poisoned(dev, 100, tt.i32)
    multi_assign[2, 64](counter, out, 100)
    assert_equal(counter, [100])
    assert_equal(out, np.zeros(100))


@pytest.mark.parametrize("name", ["tt_scale", "exp", "int4", "kernel", "NAN", "__x", "C"])
def test_names_like_target_identifiers(dev, rng, name, tmp_path):
    """Kernels, parameters and locals may use names the generated code needs (builtins, types,
    the printer's tt_ prefix); the printers rename them."""
    path = tmp_path / f"named_{name.strip('_')}.py"
    path.write_text(f"""import tattletale as tt


@tt.kernel
def {name}(x: tt.Buffer[tt.f32], out: tt.Buffer[tt.f32], n: tt.i32, {name}: tt.f32):
    i = tt.global_id(0)
    if i < n:
        {name}_ = tt.exp(x[i])
        out[i] = {name}_ * {name}
""")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kern = getattr(mod, name)
    x = rng.standard_normal(50).astype(np.float32)
    out = poisoned(dev, 50, tt.f32)
    kern[1, 64](dev.tensor(x), out, 50, 2.5)
    assert_close(out, np.exp(x.astype(np.float64)) * 2.5, rtol=1e-5)
