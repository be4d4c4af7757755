"""Negative tests: unsupported constructs and type errors raise tt.CompileError pointing at the
kernel's source (file, line, the line's text and a caret); backend compiler errors name the
Python line too.

Each bad kernel marks its offending line with `# error: <text the message must contain>`.
"""

import inspect
import re

import numpy as np
import pytest
from harness import is_compile_only, poisoned

import tattletale as tt

THIS_FILE = __file__
B = tt.Buffer[tt.f32]
IB = tt.Buffer[tt.i32]


def expect_error(obj, **spec) -> tt.CompileError:
    """Lower a kernel (or the kernel calling a function) and check the error against its marker."""
    with pytest.raises(tt.CompileError) as info:
        obj.ir(**spec)
    err = info.value
    lines, first = inspect.getsourcelines(obj.fn)
    marked = [(first + k, ln) for k, ln in enumerate(lines) if "# error:" in ln]
    if not marked:  # the marker is in a @tt.func the kernel calls: search the whole file
        src = open(THIS_FILE).read().splitlines()
        marked = [(err.line, src[err.line - 1])] if "# error:" in src[err.line - 1] else []
    assert marked, f"no '# error:' marker; got: {err}"
    line, text = marked[0]
    want = text.split("# error:")[1].split("# noqa")[0].strip()
    assert err.file == THIS_FILE
    assert err.line == line, f"error at line {err.line}, expected {line}: {err}"
    assert want in err.message, f"{want!r} not in {err.message!r}"
    rendered = str(err).splitlines()
    assert rendered[0].startswith(f"{THIS_FILE}:{line}:{err.col + 1}: error: ")
    assert rendered[1].strip() == text.strip()  # the source line ...
    assert rendered[2].strip() == "^"  # ... and a caret under the offending column
    assert rendered[2].index("^") == 4 + err.col
    assert 0 <= err.col < len(text.rstrip())
    if "undefined_name" in text:  # the caret is under the name, also after non-ASCII text
        assert text.index("undefined_name") == err.col
    return err


# --- unsupported Python ---------------------------------------------------------------------------


@tt.kernel
def uses_with(out: B):
    with open("x"):  # error: unsupported statement: With
        out[0] = 1.0


@tt.kernel
def uses_try(out: B):
    try:  # error: unsupported statement: Try
        out[0] = 1.0
    except Exception:
        pass


@tt.kernel
def uses_lambda(out: B):
    f = lambda v: v + 1  # error: unsupported expression: Lambda
    out[0] = f(1.0)


@tt.kernel
def uses_listcomp(out: B):
    vals = [k * 2 for k in range(4)]  # error: unsupported expression: ListComp
    out[0] = vals[0]


@tt.kernel
def uses_print(out: B):
    print(out[0])  # error: print


@tt.kernel
def uses_strings(out: B, n: tt.i32):
    s = "abc" * n  # error: not a value a kernel can compute with
    out[0] = s


@tt.kernel
def uses_fstring(out: B, n: tt.i32):
    out[0] = len(f"{n}")  # error: JoinedStr


@tt.kernel
def returns_value(out: B):
    return out[0]  # error: a kernel cannot return a value


@tt.kernel
def uses_while_else(out: B, n: tt.i32):
    while n > 0:  # error: while/else is not supported
        n -= 1
    else:
        out[0] = 1.0


@tt.kernel
def uses_global_stmt(out: B):
    global THIS_FILE  # error: unsupported statement: Global
    out[0] = 1.0


@tt.kernel
def uses_matmul(out: B):
    out[0] = out[0] @ out[1]  # error: unsupported operator MatMult


@tt.kernel
def uses_is(out: B):
    if out[0] is out[1]:  # error: unsupported comparison Is
        out[0] = 1.0


@tt.kernel
def uses_dict(out: B):
    d = {"a": 1}  # error: unsupported expression: Dict
    out[0] = d["a"]


@tt.kernel
def calls_python_at_runtime(out: B):
    out[0] = np.sqrt(out[1])  # error: can only run at compile time


# --- type errors --------------------------------------------------------------------------------


@tt.kernel
def assigns_f32_to_i32(x: B, out: IB):
    n = 0
    n = x[0]  # error: cannot assign f32 to 'n' of type i32
    n += 1
    out[0] = n


@tt.kernel
def stores_float_in_int_buffer(x: B, out: IB):
    out[0] = x[0] * 2.0  # error: cannot assign f32


@tt.kernel
def float_index(x: B, out: B):
    out[0] = x[1.5]  # error: an index must be an integer


@tt.kernel
def float_runtime_index(x: B, out: B):
    out[0] = x[x[0]]  # error: an index must be an integer, got f32


@tt.kernel
def indexes_a_scalar(x: B, n: tt.i32):
    x[0] = n[0]  # error: only buffers, arrays and vectors can be indexed


@tt.kernel
def unknown_name(x: B):
    x[0] = undefined_thing  # error: name 'undefined_thing' is not defined # noqa: F821


@tt.kernel
def builtin_arity(x: B):
    x[0] = tt.exp(x[0], x[1])  # error: tt.exp() takes 1 argument(s), got 2


@tt.kernel
def id_arity(x: B):
    x[tt.global_id()] = 1.0  # error: tt.global_id() takes 1 argument(s), got 0


@tt.kernel
def id_dimension(x: B):
    x[tt.global_id(3)] = 1.0  # error: the dimension must be 0, 1 or 2


@tt.kernel
def bitcast_width(x: B, out: tt.Buffer[tt.u16]):
    out[0] = tt.bitcast(x[0], tt.u16)  # error: tt.bitcast needs types of one width


@tt.kernel
def atomic_f16(x: tt.Buffer[tt.f16]):
    tt.atomic_add(x, 0, 1.0)  # error: tt.atomic_add is not available for f16


@tt.kernel
def atomic_private(x: IB):
    a = tt.array((4,), tt.i32)
    a[0] = 0
    tt.atomic_add(a, 0, 1)  # error: atomics work on buffers and shared arrays
    x[0] = a[0]


@tt.kernel
def shared_runtime_shape(x: B, n: tt.i32):
    s = tt.shared((n,), tt.f32)  # error: needs a compile-time shape
    s[0] = 1.0
    x[0] = s[0]


@tt.kernel
def reassigns_constexpr(x: B, K: tt.constexpr):
    K = x[1]  # error: 'K' is a compile-time constant and cannot be reassigned
    x[0] = K


@tt.kernel
def reassigns_constexpr_at_runtime(x: B, K: tt.constexpr):
    if x[1] > 0.0:
        K = 5  # error: 'K' is a compile-time constant and cannot be reassigned
    x[0] = K


@tt.kernel
def rebinds_constexpr(x: B, K: tt.constexpr):
    K = K * 2  # straight-line compile-time code: fine, as in Python
    x[0] = K


@tt.kernel
def shifts_floats(x: B):
    x[0] = x[1] << 2  # error: shift needs integers


@tt.kernel
def inverts_float(x: B):
    x[0] = ~x[1]  # error: '~' needs an integer


@tt.kernel
def float_range(x: B):
    for _k in range(x[0]):  # error: range() needs integers, got f32
        x[1] = 1.0


@tt.kernel
def break_in_static_range(x: B):
    for k in tt.static_range(4):
        if x[k] > 0.0:
            break  # error: break/continue are not supported in unrolled loops


@tt.kernel
def vload_three_lanes(x: B):
    v = tt.vload(x, 0, 3)  # error: loads 2 or 4 lanes
    x[0] = v.x


@tt.kernel
def missing_lane(x: B):
    v = tt.vload(x, 0, 2)
    x[0] = v.z  # error: has no lane 'z'


@tt.kernel
def vstore_float_index(x: B):
    v = tt.vload(x, 0, 4)
    tt.vstore(x, 1.0, v)  # error: an index must be an integer


@tt.kernel
def static_assert_fails(x: B, K: tt.constexpr):
    tt.static_assert(K % 2 == 0, "K must be even")  # error: static assertion failed: K must be even
    x[0] = 1.0


@tt.kernel
def literal_does_not_fit(x: tt.Buffer[tt.u32], out: B):
    if x[0] > -1:  # error: constant -1 does not fit in u32
        out[0] = 1.0


@tt.kernel
def scalar_attribute(x: B, n: tt.i32):
    x[0] = n.real  # error: attribute 'real' is not supported here


@tt.kernel
def tuple_runtime_index(x: B, n: tt.i32):
    t = (1.0, 2.0)
    x[0] = t[n]  # error: cannot index a compile-time value with a runtime index


@tt.kernel
def cast_arity(x: B):
    x[0] = tt.f32(x[0], x[1])  # error: tt.f32(x) takes one argument


@tt.kernel
def tuple_assign_mismatch(x: B):
    a, b = 1.0, 2.0, 3.0  # error: tuple assignment needs a tuple of the same length
    x[0] = a + b


@tt.kernel
def non_ascii_names(x: B):
    größe = x[1]
    x[0] = größe + undefined_name  # error: name 'undefined_name' is not defined # noqa: F821


@tt.kernel
def buffer_arithmetic(x: B):
    x[0] = x + 1.0  # error: operator needs scalar operands, got Buffer[f32]


@tt.kernel
def sqrt_of_negative_constant(x: B):
    x[0] = tt.sqrt(-1.0)  # not an error: NaN at run time, as in C


@tt.kernel
def huge_static_range(x: B):
    for k in tt.static_range(100000):  # error: would unroll 100000 copies
        x[k] = 1.0


@tt.kernel
def static_range_zero_step(x: B):
    for k in tt.static_range(0, 4, 0):  # error: step must not be zero
        x[k] = 1.0


@tt.kernel
def unrolled_target_mismatch(x: B):
    for a, b in ((1, 2), (3, 4, 5)):  # error: the loop target does not match
        x[a] = b


UNSUPPORTED = [uses_with, uses_try, uses_lambda, uses_listcomp, uses_print, uses_strings,
               uses_fstring, returns_value, uses_while_else, uses_global_stmt, uses_matmul, uses_is,
               uses_dict, calls_python_at_runtime]
TYPE_ERRORS = [assigns_f32_to_i32, stores_float_in_int_buffer, float_index, float_runtime_index,
               indexes_a_scalar, unknown_name, builtin_arity, id_arity, id_dimension, bitcast_width,
               atomic_f16, atomic_private, shared_runtime_shape, shifts_floats, inverts_float,
               float_range, break_in_static_range, vload_three_lanes, missing_lane,
               vstore_float_index, literal_does_not_fit, scalar_attribute, tuple_runtime_index,
               cast_arity, tuple_assign_mismatch, buffer_arithmetic,
               non_ascii_names, huge_static_range, static_range_zero_step,
               unrolled_target_mismatch]


@pytest.mark.parametrize("kernel", UNSUPPORTED, ids=lambda k: k.__name__)
def test_unsupported_constructs(kernel):
    expect_error(kernel)


@pytest.mark.parametrize("kernel", TYPE_ERRORS, ids=lambda k: k.__name__)
def test_type_errors(kernel):
    expect_error(kernel)


def test_constant_folding_leaves_domain_errors_to_the_device():
    assert "sqrtf(" in sqrt_of_negative_constant.source("cuda")


def test_constexpr_errors():
    expect_error(reassigns_constexpr, K=3)
    expect_error(reassigns_constexpr_at_runtime, K=3)
    assert "6.0f" in rebinds_constexpr.source("cuda", K=3)
    expect_error(static_assert_fails, K=3)
    static_assert_fails.ir(K=4)  # fine when the assertion holds


# --- errors inside device functions -------------------------------------------------------------


@tt.func
def bad_helper(v):
    return v.nope  # error: attribute 'nope' is not supported here


@tt.kernel
def calls_bad_helper(x: B):
    x[0] = bad_helper(x[1])


@tt.func
def recursive(v):
    if v > 0.0:
        return recursive(v - 1.0)  # error: recursive call of @tt.func recursive
    return v


@tt.kernel
def calls_recursive(x: B):
    x[0] = recursive(x[1])


@tt.func
def two_args(a, b):
    return a + b


@tt.kernel
def calls_with_missing_arg(x: B):
    x[0] = two_args(x[1])  # error: two_args() missing argument 'b'


@tt.kernel
def calls_with_unknown_kwarg(x: B):
    x[0] = two_args(x[1], 2.0, c=3.0)  # error: got unexpected arguments ['c']


def test_errors_in_device_functions_point_into_them():
    expect_error(calls_bad_helper)
    expect_error(calls_recursive)
    expect_error(calls_with_missing_arg)
    expect_error(calls_with_unknown_kwarg)


# --- signatures ---------------------------------------------------------------------------------


def test_signature_errors():
    def no_annotation(x):
        pass

    def bad_annotation(x: int):
        pass

    def with_default(x: tt.f32 = 1.0):
        pass

    for fn, msg in ((no_annotation, "needs a type annotation"), (bad_annotation,
                                                                 "unsupported annotation"),
                    (with_default, "plain positional parameters")):
        with pytest.raises(tt.CompileError, match=msg) as info:
            tt.kernel(fn).ir()
        assert info.value.file == THIS_FILE
        assert info.value.line == inspect.getsourcelines(fn)[1]


def test_barrier_in_divergent_code_is_not_checked_for_c_targets():
    """CUDA C and OpenCL C leave barriers in divergent control flow undefined, not an error:
    the DSL does not diagnose them either for these targets (structured targets may)."""

    @tt.kernel
    def divergent_barrier(x: B):
        if tt.local_id(0) < 16:
            tt.barrier()
        x[tt.global_id(0)] = 1.0

    for target in ("cuda", "opencl"):
        src = divergent_barrier.source(target)
        assert ("__syncthreads();" if target == "cuda" else "barrier(") in src


# --- backend compiler errors --------------------------------------------------------------------


def test_backend_compile_error_names_the_python_line(dev, monkeypatch):
    """A C compiler error is reported with the Python line that produced the failing code."""
    if dev.backend == "vulkan":
        pytest.skip("SPIR-V is a binary, not C text: test_vulkan.py breaks a module instead")
    from tattletale.runtimes import base

    @tt.kernel
    def doomed(x: B, out: B, n: tt.i32):
        i = tt.global_id(0)
        if i < n:
            out[i] = x[i] * 2.0  # the generated statement is broken below

    line = inspect.getsourcelines(doomed.fn)[1] + 4
    real_render = base.render

    def broken_render(target, kernel, caps):
        gen = real_render(target, kernel, caps)
        gen.text = re.sub(r"\* 2\.0f", "* tt_no_such_symbol", gen.text)
        assert "tt_no_such_symbol" in gen.text
        return gen

    monkeypatch.setattr(base, "render", broken_render)
    out = poisoned(dev, 4, tt.f32)
    with pytest.raises(tt.BackendCompileError) as info:
        doomed[1, 4](dev.tensor(np.ones(4, np.float32)), out, 4)
    msg = str(info.value)
    assert "tt_no_such_symbol" in msg
    assert f"test_errors.py:{line}: out[i] = x[i] * 2.0" in msg, msg
    if is_compile_only(dev):
        assert "NVRTC" in msg
