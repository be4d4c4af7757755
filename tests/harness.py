"""Helpers shared by the conformance tests: compile-only devices, poisoned buffers, comparisons.

A test writes its kernel, launch and check once against the `dev` fixture (see conftest.py). On a
real device everything runs; on a compile-only device (`cuda-compile` where no GPU is present)
every launch renders and compiles its specialization through the backend compiler, nothing runs,
and the first read of a result ends the test as skipped with `CompileOnly`. So: launch every
specialization a test needs before reading results back, or parametrize the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

import tattletale as tt
from tattletale.codegen import Caps, Generated
from tattletale.dsl import types as T
from tattletale.runtimes.base import Device, Event, Recording

FLOATS = (tt.f32, tt.f16, tt.bf16)
INTS = (tt.i8, tt.u8, tt.i16, tt.u16, tt.i32, tt.u32, tt.i64, tt.u64)
ALL_TYPES = FLOATS + INTS + (tt.bool_,)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- compile-only devices -----------------------------------------------------------------------


class CompileOnly(pytest.skip.Exception):
    """Raised when a test on a compile-only device reads a result: what it launched compiled."""


class CompileOnlyDevice(Device):
    """A device that compiles every launch with `compile_fn(gen)` and runs nothing.

    Memory is fake: writes vanish and reads raise `CompileOnly`, which marks the test skipped
    after all kernels it launched before the read have been compiled.
    """

    def __init__(self, backend: str, caps: Caps, compile_fn: Callable[[Generated], object]):
        super().__init__(0, f"{caps.target} compile-only ({caps.arch})", caps)
        self.backend = backend
        self.compile_fn = compile_fn
        self.compiled_count = 0

    def _stop(self):
        raise CompileOnly(f"{self.backend}: compiled {self.compiled_count} kernel(s); "
                          f"no device to run them on")

    def _alloc(self, nbytes):
        return None

    def _free(self, handle):
        pass

    def _write(self, handle, offset, array):
        pass

    def _read(self, handle, offset, out):
        self._stop()

    def _fill_zero(self, handle, nbytes):
        pass

    def _build(self, gen: Generated, constexpr_mask):
        self.compile_fn(gen)
        self.compiled_count += 1
        return _NoLaunch()

    def synchronize(self):
        pass

    def event(self) -> Event:
        return _CompileOnlyEvent(self)

    def record(self) -> Recording:
        return _CompileOnlyRecording(self)


class _NoLaunch:
    def launch(self, grid, block, args) -> None:
        pass


class _CompileOnlyEvent(Event):
    def __init__(self, device: CompileOnlyDevice):
        self.device = device

    def elapsed_ms(self, later) -> float:
        self.device._stop()


class _CompileOnlyRecording(Recording):
    """Launches inside the block compile as usual (nothing is routed: nothing runs anyway)."""

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def replay(self) -> None:
        pass


def nvrtc_device() -> CompileOnlyDevice:
    """CUDA without a GPU: NVRTC compiles each kernel to PTX for compute_80."""
    from tattletale.runtimes.cuda import nvrtc_compile, nvrtc_version

    nvrtc_version()  # raises when NVRTC is missing
    caps = Caps("cuda", subgroup_size=32, native_subgroups=True, fp16=True, arch="compute_80")
    return CompileOnlyDevice("cuda-compile", caps, lambda gen: nvrtc_compile(gen, "compute_80"))


def is_compile_only(dev: Device) -> bool:
    return isinstance(dev, CompileOnlyDevice)


# --- data ---------------------------------------------------------------------------------------


def np_type(t: T.ScalarType) -> np.dtype:
    """The numpy dtype holding a DSL type's host values (bf16 values as float32)."""
    return np.dtype(np.float32) if t == tt.bf16 else t.np_dtype


def random_values(rng: np.random.Generator, shape, t: T.ScalarType, lo=None, hi=None) -> np.ndarray:
    """Random host values of type `t` (bf16: float32 values already rounded to bf16).

    Integers cover the type's range (or [lo, hi]); floats are normal with scale 4 unless a range
    is given; bools are random.
    """
    if t.is_bool:
        return rng.random(shape) < 0.5
    if t.is_int:
        info = np.iinfo(t.np_dtype)
        lo = info.min if lo is None else lo
        hi = info.max if hi is None else hi
        return rng.integers(lo, hi, size=shape, dtype=t.np_dtype, endpoint=True)
    if lo is not None:
        v = rng.uniform(lo, hi, size=shape)
    else:
        v = rng.standard_normal(shape) * 4.0
    return round_to(v, t)


def round_to(values, t: T.ScalarType) -> np.ndarray:
    """Host values rounded to a float type, as numpy (bf16 → float32 holding bf16 values)."""
    if t == tt.bf16:
        return tt.from_bf16_bits(tt.to_bf16_bits(np.asarray(values, np.float32)))
    return np.asarray(values).astype(t.np_dtype)


def upload(dev: Device, values, t: T.ScalarType):
    """A device tensor of type `t` from host values (bf16 given as float values)."""
    if t == tt.bf16:
        return dev.tensor(tt.to_bf16_bits(np.asarray(values, np.float32)), dtype=tt.bf16)
    return dev.tensor(np.asarray(values).astype(t.np_dtype), dtype=t)


_FLOAT_POISON = {"f32": (np.uint32, 0x7FC00000), "f16": (np.uint16, 0x7E00),
                 "bf16": (np.uint16, 0x7FC0), "f64": (np.uint64, 0x7FF8000000000000)}


def poisoned(dev: Device, shape, t: T.ScalarType, nan: bool = True):
    """An output tensor filled with a sentinel so unwritten elements fail the checks.

    Floats hold NaN (with `nan=False`, or for integer types, every byte is 0x7F).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    if t.is_float and nan:
        word, bits = _FLOAT_POISON[t.name]
        raw = np.full(n, bits, dtype=word)
    else:
        raw = np.full(n * t.itemsize, 0x7F, dtype=np.uint8)
    return dev.tensor(raw.view(t.np_dtype).reshape(shape), dtype=t)


def read(tensor) -> np.ndarray:
    """A tensor's values on the host (bf16 widened to float32; bool as raw bytes)."""
    a = tensor.numpy()
    if tensor.dtype == tt.bf16:
        return tt.from_bf16_bits(a)
    if tensor.dtype == tt.bool_:
        return a.view(np.uint8)
    return a


def assert_equal(tensor, expected, err_msg: str = "") -> None:
    """Exact comparison (NaN matches NaN; bools compared as 0/1 bytes)."""
    actual = read(tensor)
    expected = np.asarray(expected)
    if tensor.dtype == tt.bool_:
        expected = expected.astype(np.uint8)
    else:
        expected = expected.astype(actual.dtype)
    np.testing.assert_array_equal(actual, expected.reshape(actual.shape), err_msg=err_msg)


def assert_close(tensor, expected, rtol: float = 1e-6, atol: float = 0.0, err_msg: str = "") -> None:
    """Float comparison against a (float64) reference; NaNs must be where the reference has them."""
    actual = read(tensor).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64).reshape(actual.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=err_msg)


def assert_bits(tensor, expected_values, err_msg: str = "") -> None:
    """Bitwise comparison for 16-bit floats: rounding must match exactly (round to nearest even).

    `expected_values` are the exact results (float64/float32); NaNs only need to be NaN.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        _assert_bits(tensor, np.asarray(expected_values), err_msg)


def _assert_bits(tensor, exp: np.ndarray, err_msg: str) -> None:
    t = tensor.dtype
    if t == tt.bf16:
        want = tt.to_bf16_bits(exp.astype(np.float32))
        got = tensor.numpy()
        nan_want = np.isnan(tt.from_bf16_bits(want))
        nan_got = np.isnan(tt.from_bf16_bits(got))
    else:
        want = exp.astype(t.np_dtype).view(np.uint16 if t.bits == 16 else np.uint32)
        got = tensor.numpy().view(want.dtype)
        nan_want = np.isnan(exp)
        nan_got = np.isnan(tensor.numpy())
    want, got = want.reshape(-1), got.reshape(-1)
    nan_want, nan_got = nan_want.reshape(-1), nan_got.reshape(-1)
    np.testing.assert_array_equal(nan_got, nan_want, err_msg=f"NaN positions differ {err_msg}")
    np.testing.assert_array_equal(got[~nan_want], want[~nan_want], err_msg=err_msg)
