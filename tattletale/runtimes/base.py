"""The device interface every backend implements, and the device-agnostic tensor.

A backend supplies memory (allocate, write, read), compilation of generated source to a launchable
object, launches, synchronization, timing events, and recording: a sequence of launches captured
once and replayed with one call (CUDA graphs; a pre-built launch list on OpenCL; command buffers
on Vulkan; command encoders on WebGPU).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..codegen import Caps, Generated, render
from ..dsl import types as T


class Allocation:
    """Device memory owned by one or more tensors; returned to the device's pool when the last
    one goes."""

    __slots__ = ("device", "handle", "nbytes", "__weakref__")

    def __init__(self, device: Device, handle: Any, nbytes: int):
        self.device, self.handle, self.nbytes = device, handle, nbytes

    def __del__(self):
        try:
            self.device._release(self.handle, self.nbytes)
        except Exception:
            pass  # interpreter shutdown


def _bucket(nbytes: int) -> int:
    """Pool size class: powers of two up to 64 KiB, then 16 classes per octave (≤ 12.5 % waste)."""
    if nbytes <= 1 << 16:
        return max(256, 1 << (nbytes - 1).bit_length())
    step = 1 << ((nbytes - 1).bit_length() - 4)
    return (nbytes + step - 1) // step * step


class Tensor:
    """A typed, shaped view of device memory (contiguous, row-major, with an element offset)."""

    __slots__ = ("device", "alloc", "shape", "dtype", "offset")

    def __init__(self, device: Device, alloc: Allocation, shape: tuple[int, ...],
                 dtype: T.ScalarType, offset: int = 0):
        self.device, self.alloc, self.shape, self.dtype, self.offset = (
            device, alloc, shape, dtype, offset)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        """Copy to the host (bf16 comes back as its uint16 bits; see tt.from_bf16_bits)."""
        out = np.empty(self.shape, dtype=self.dtype.np_dtype)
        self.device._read(self.alloc.handle, self.offset * self.dtype.itemsize, out)
        return out

    def copy_from(self, array: np.ndarray) -> Tensor:
        a = np.ascontiguousarray(array, dtype=self.dtype.np_dtype)
        if a.size != self.size:
            raise ValueError(f"size mismatch: tensor has {self.size} elements, array {a.size}")
        self.device._write(self.alloc.handle, self.offset * self.dtype.itemsize, a)
        return self

    def view(self, offset: int, shape: tuple[int, ...] | int) -> Tensor:
        """A sub-range of this tensor's elements (offset in elements), sharing its memory."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if offset < 0 or offset + math.prod(shape) > self.size:
            raise ValueError("view out of range")
        return Tensor(self.device, self.alloc, shape, self.dtype, self.offset + offset)

    def bitview(self, dtype) -> Tensor:
        """The same bytes reinterpreted as another element type (last dimension rescaled)."""
        dtype = T.as_type(dtype)
        nbytes_last = self.shape[-1] * self.dtype.itemsize
        start = self.offset * self.dtype.itemsize
        if nbytes_last % dtype.itemsize or start % dtype.itemsize:
            raise ValueError(f"cannot view {self.dtype} data of shape {self.shape} as {dtype}")
        shape = (*self.shape[:-1], nbytes_last // dtype.itemsize)
        return Tensor(self.device, self.alloc, shape, dtype, start // dtype.itemsize)

    def reshape(self, *shape) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return Tensor(self.device, self.alloc, tuple(shape), self.dtype, self.offset)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class Event:
    """A point in a device's queue; `a.elapsed_ms(b)` is the device time between two events."""

    def elapsed_ms(self, later: Event) -> float:
        raise NotImplementedError


class Recording:
    """Launches recorded by `with device.record() as rec:`; `rec.replay()` runs them all again.

    Recorded launches do not run while recording. Arguments are fixed at record time (like CUDA
    graphs): change inputs by writing into the recorded tensors, not by passing new ones.
    """

    def __init__(self, device: Device):
        self.device = device

    def replay(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Recording:
        """Route the device's launches into this recording until the block ends."""
        if self.device._recording is not None:
            raise RuntimeError("already recording on this device")
        self.device._recording = self
        return self

    def __exit__(self, *exc) -> None:
        self.device._recording = None


class Device(ABC):
    """One compute device of one backend."""

    backend: str = ""

    def __init__(self, index: int, name: str, caps: Caps):
        self.index, self.name, self.caps = index, name, caps
        self._recording: Recording | None = None
        # Freed allocations by size class, reused by later allocations: once a decode loop has
        # warmed up, its temporaries cost no driver calls.
        self._pool: dict[int, list] = {}
        self.pool_bytes = 0

    def _acquire(self, nbytes: int) -> Allocation:
        size = _bucket(nbytes)
        free = self._pool.get(size)
        if free:
            self.pool_bytes -= size
            return Allocation(self, free.pop(), size)
        try:
            handle = self._alloc(size)
        except Exception:
            self.empty_pool()  # out of memory: give cached blocks back and try once more
            handle = self._alloc(size)
        return Allocation(self, handle, size)

    def _release(self, handle, nbytes: int) -> None:
        self._pool.setdefault(nbytes, []).append(handle)
        self.pool_bytes += nbytes

    def empty_pool(self) -> None:
        """Free every cached allocation."""
        for handles in self._pool.values():
            for h in handles:
                self._free(h)
        self._pool.clear()
        self.pool_bytes = 0

    def __repr__(self) -> str:
        return f"tt.device({self.backend!r}, {self.index}) [{self.name}]"

    # --- tensors --------------------------------------------------------------------------------

    def empty(self, shape, dtype) -> Tensor:
        dtype = T.as_type(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return Tensor(self, self._acquire(math.prod(shape) * dtype.itemsize), shape, dtype)

    def zeros(self, shape, dtype) -> Tensor:
        t = self.empty(shape, dtype)
        self._fill_zero(t.alloc.handle, t.alloc.nbytes)
        return t

    def full(self, shape, value, dtype) -> Tensor:
        dtype = T.as_type(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if dtype == T.bf16:
            host = np.full(shape, T.to_bf16_bits(np.float32(value)).item(), np.uint16)
        else:
            host = np.full(shape, value, dtype.np_dtype)
        return self.tensor(host, dtype)

    def tensor(self, array, dtype=None) -> Tensor:
        """Upload a numpy array (pass dtype=tt.bf16 with uint16 bits for bf16)."""
        a = np.asarray(array)
        t = T.as_type(dtype) if dtype is not None else T.from_numpy(a.dtype)
        out = self.empty(a.shape, t)
        return out.copy_from(a)

    # --- kernels --------------------------------------------------------------------------------

    def launch(self, kernel, grid, block, args) -> None:
        """Run `kernel` (a tt.kernel) with the given launch geometry and arguments."""
        key = (self, kernel.spec_key(args))
        compiled = kernel.compiled.get(key)
        if compiled is None:
            kernel.check_args(args)
            compiled = self.compile(kernel, key[1])
            kernel.compiled[key] = compiled
        try:
            compiled.launch(grid, block, args)
        except (TypeError, AttributeError, OverflowError):
            kernel.check_args(args)  # a clearer message naming the argument, if it is one
            raise

    def compile(self, kernel, spec_key: tuple):
        ir_kernel = kernel.lower(spec_key, self.caps.subgroup_size)
        self.check_features(ir_kernel)
        gen = render(self.caps.target, ir_kernel, self.caps)
        return self._build(gen, [p.kind == "constexpr" for p in kernel.params])

    def check_features(self, k) -> None:  # noqa: B027 - an optional hook, not abstract
        """Raise a clear error when the kernel needs something this device lacks."""

    def generated_source(self, kernel, **spec) -> str:
        """The source this device would compile for a kernel specialization."""
        k = kernel.lower(kernel.key_from_kwargs(spec), self.caps.subgroup_size)
        return render(self.caps.target, k, self.caps).text

    # --- backend hooks --------------------------------------------------------------------------

    @abstractmethod
    def _alloc(self, nbytes: int) -> Any: ...

    @abstractmethod
    def _free(self, handle: Any) -> None: ...

    @abstractmethod
    def _write(self, handle: Any, offset: int, array: np.ndarray) -> None: ...

    @abstractmethod
    def _read(self, handle: Any, offset: int, out: np.ndarray) -> None: ...

    @abstractmethod
    def _fill_zero(self, handle: Any, nbytes: int) -> None: ...

    @abstractmethod
    def _build(self, gen: Generated, constexpr_mask: list[bool]): ...

    @abstractmethod
    def synchronize(self) -> None: ...

    def free_memory(self) -> int | None:
        """Bytes of device memory free for new allocations, where the API can tell (None: it
        cannot, e.g. a CPU device sharing the host's memory)."""
        return None

    @abstractmethod
    def event(self) -> Event:
        """Record an event in the device queue now."""

    @abstractmethod
    def record(self) -> Recording:
        """Start recording launches (use as a context manager)."""


def scalar_packer(abi: T.ScalarType):
    """numpy scalar constructor a scalar argument is packed with."""
    return abi.np_dtype.type
