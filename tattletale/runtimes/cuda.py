"""CUDA backend: the driver API and NVRTC through cuda-python (`cuda.bindings`).

Kernels are compiled by NVRTC for the device's real architecture (sm_90a on Hopper) to a cubin,
cached on disk, and launched with `cuLaunchKernel` on the device's own stream with a pre-built
argument array. Recording uses stream capture into a CUDA graph.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..codegen import Caps, Generated
from ..dsl.errors import BackendCompileError
from . import cache
from .base import Device, Event, Recording

_CTYPES = {"f32": ctypes.c_float, "f64": ctypes.c_double, "i8": ctypes.c_int8,
           "u8": ctypes.c_uint8, "i16": ctypes.c_int16, "u16": ctypes.c_uint16,
           "i32": ctypes.c_int32, "u32": ctypes.c_uint32, "i64": ctypes.c_int64,
           "u64": ctypes.c_uint64}


def _driver():
    from cuda.bindings import driver

    return driver


def _check(result):
    """Unpack a cuda-python (err, *values) tuple, raising on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        drv = _driver()
        name = drv.cuGetErrorName(err)[1] if isinstance(err, drv.CUresult) else str(err)
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def _init() -> bool:
    try:
        drv = _driver()
        return int(drv.cuInit(0)[0]) == 0
    except Exception:
        return False


def list_devices() -> list[str]:
    if not _init():
        return []
    drv = _driver()
    n = _check(drv.cuDeviceGetCount())
    return [_check(drv.cuDeviceGetName(64, _check(drv.cuDeviceGet(i)))).split(b"\0")[0].decode()
            for i in range(n)]


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}"


def nvrtc_compile(gen: Generated, arch: str) -> bytes:
    """Compile generated CUDA C with NVRTC: to a cubin for `sm_XX[a]`, to PTX for `compute_XX`."""
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(gen.text.encode(), f"{gen.entry}.cu".encode(), 0, [], [])
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-lineinfo"]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if int(err) != 0:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        nvrtc.nvrtcDestroyProgram(prog)
        text = log.decode(errors="replace").rstrip("\0 \n")
        raise BackendCompileError(f"NVRTC compilation of kernel '{gen.entry}' failed:\n"
                                  f"{gen.annotate_log(text)}")
    if arch.startswith("sm_"):
        _, size = nvrtc.nvrtcGetCUBINSize(prog)
        out = b" " * size
        nvrtc.nvrtcGetCUBIN(prog, out)
    else:
        _, size = nvrtc.nvrtcGetPTXSize(prog)
        out = b" " * size
        nvrtc.nvrtcGetPTX(prog, out)
    nvrtc.nvrtcDestroyProgram(prog)
    return bytes(out)


class CudaEvent(Event):
    def __init__(self, device: CudaDevice):
        drv = _driver()
        self.ev = _check(drv.cuEventCreate(drv.CUevent_flags.CU_EVENT_DEFAULT))
        _check(drv.cuEventRecord(self.ev, device.stream))

    def elapsed_ms(self, later: CudaEvent) -> float:
        drv = _driver()
        _check(drv.cuEventSynchronize(later.ev))
        return float(_check(drv.cuEventElapsedTime(self.ev, later.ev)))

    def __del__(self):
        try:
            _driver().cuEventDestroy(self.ev)
        except Exception:
            pass


class CudaKernel:
    """A loaded kernel and the recipe to pack its arguments."""

    def __init__(self, device: CudaDevice, module, function, gen: Generated, constexpr_mask):
        self.device, self.module, self.function, self.gen = device, module, function, gen
        self.runtime_index = [i for i, c in enumerate(constexpr_mask) if not c]
        # One argument block per kernel, refilled at each launch: cuLaunchKernel copies the
        # values before returning, so reusing the storage is safe and saves allocations.
        self.values = [(ctypes.c_uint64 if p.kind == "buffer" else _CTYPES[p.abi.name])()
                       for p in gen.params]
        self.itemsizes = [p.elem.itemsize if p.kind == "buffer" else 0 for p in gen.params]
        self.slots = list(zip(self.runtime_index, self.values, self.itemsizes))
        ptrs = (ctypes.c_void_p * max(len(self.values), 1))(
            *[ctypes.addressof(v) for v in self.values])
        self.ptrs = ptrs
        self.ptrs_address = ctypes.addressof(ptrs)
        self.cu_launch = _driver().cuLaunchKernel
        self.shared_bytes = gen.shared_bytes

    def launch(self, grid, block, args) -> None:
        for i, value, size in self.slots:
            a = args[i]
            value.value = a.alloc.handle + a.offset * size if size else a
        err = self.cu_launch(self.function, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                             self.shared_bytes, self.device.stream, self.ptrs_address, 0)
        if err[0] != 0:
            _check(err)


class CudaRecording(Recording):
    """Stream capture into a CUDA graph, instantiated once and replayed with cuGraphLaunch."""

    def __init__(self, device: CudaDevice):
        self.device = device
        self.exec = None
        self.graph = None

    def __enter__(self):
        drv = _driver()
        mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        _check(drv.cuStreamBeginCapture(self.device.stream, mode))
        self.device._recording = self
        return self

    def __exit__(self, *exc):
        drv = _driver()
        self.device._recording = None
        self.graph = _check(drv.cuStreamEndCapture(self.device.stream))
        if exc[0] is None:
            self.exec = _check(drv.cuGraphInstantiate(self.graph, 0))

    def replay(self) -> None:
        _check(_driver().cuGraphLaunch(self.exec, self.device.stream))

    def __del__(self):
        try:
            drv = _driver()
            if self.exec is not None:
                drv.cuGraphExecDestroy(self.exec)
            if self.graph is not None:
                drv.cuGraphDestroy(self.graph)
        except Exception:
            pass


class CudaDevice(Device):
    backend = "cuda"

    def __init__(self, index: int = 0):
        if not _init():
            raise RuntimeError("CUDA is not available (no driver or no GPU)")
        drv = _driver()
        self.cu_device = _check(drv.cuDeviceGet(index))
        self.context = _check(drv.cuDevicePrimaryCtxRetain(self.cu_device))
        _check(drv.cuCtxSetCurrent(self.context))
        self.stream = _check(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING))
        attr = drv.CUdevice_attribute
        major = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                                self.cu_device))
        minor = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                                self.cu_device))
        self.sm_count = _check(drv.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self.cu_device))
        arch = f"sm_{major}{minor}" + ("a" if major >= 9 else "")
        name = _check(drv.cuDeviceGetName(64, self.cu_device)).split(b"\0")[0].decode()
        super().__init__(index, name, Caps("cuda", 32, True, True, arch))

    def _alloc(self, nbytes):
        return int(_check(_driver().cuMemAlloc(nbytes)))

    def _free(self, handle):
        _driver().cuMemFree(handle)

    def _write(self, handle, offset, array):
        drv = _driver()
        _check(drv.cuMemcpyHtoDAsync(handle + offset, array.ctypes.data, array.nbytes, self.stream))
        _check(drv.cuStreamSynchronize(self.stream))

    def _read(self, handle, offset, out):
        drv = _driver()
        _check(drv.cuMemcpyDtoHAsync(out.ctypes.data, handle + offset, out.nbytes, self.stream))
        _check(drv.cuStreamSynchronize(self.stream))

    def _fill_zero(self, handle, nbytes):
        _check(_driver().cuMemsetD8Async(handle, 0, nbytes, self.stream))

    def _build(self, gen: Generated, constexpr_mask):
        drv = _driver()
        key = cache.make_key("cuda", gen.text, self.caps.arch, nvrtc_version(), "-lineinfo")
        cubin = cache.load(key)
        if cubin is None:
            cubin = nvrtc_compile(gen, self.caps.arch)
            cache.store(key, cubin)
        module = _check(drv.cuModuleLoadData(np.frombuffer(cubin, np.uint8).ctypes.data))
        function = _check(drv.cuModuleGetFunction(module, gen.entry.encode()))
        if gen.shared_bytes:  # shared arrays past 48 KB come from dynamic shared memory
            attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(drv.cuFuncSetAttribute(function, attr, gen.shared_bytes))
        return CudaKernel(self, module, function, gen, constexpr_mask)

    def free_memory(self) -> int:
        free, _total = _check(_driver().cuMemGetInfo())
        return int(free)

    def synchronize(self):
        _check(_driver().cuStreamSynchronize(self.stream))

    def event(self):
        return CudaEvent(self)

    def record(self):
        return CudaRecording(self)
