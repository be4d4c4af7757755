"""OpenCL backend through pyopencl (NVIDIA/AMD/Intel drivers, PoCL on CPUs)."""

from __future__ import annotations

import numpy as np

from ..codegen import Caps, Generated
from ..dsl.errors import BackendCompileError
from . import cache
from .base import Device, Event, Recording, scalar_packer


def _cl():
    import pyopencl as cl

    return cl


def list_devices() -> list:
    """All OpenCL devices, GPUs first."""
    try:
        cl = _cl()
        platforms = cl.get_platforms()
    except Exception:
        return []
    devs = []
    for p in platforms:
        try:
            devs.extend(p.get_devices())
        except Exception:
            continue
    return sorted(devs, key=lambda d: 0 if is_gpu(d) else 1)


def is_gpu(d) -> bool:
    return bool(d.type & _cl().device_type.GPU)


class OpenCLEvent(Event):
    def __init__(self, ev):
        self.ev = ev

    def elapsed_ms(self, later: OpenCLEvent) -> float:
        later.ev.wait()
        return (later.ev.profile.end - self.ev.profile.end) * 1e-6


class OpenCLKernel:
    """A built kernel: holds the cl.Program and packs arguments per launch."""

    def __init__(self, device: OpenCLDevice, program, gen: Generated, constexpr_mask: list[bool]):
        self.device, self.program, self.gen = device, program, gen
        self.kernel = getattr(program, gen.entry)
        self.runtime_index = [i for i, c in enumerate(constexpr_mask) if not c]
        self.packers = [None if p.kind == "buffer" else scalar_packer(p.abi) for p in gen.params]

    def pack(self, args) -> list:
        out = []
        for i, packer in zip(self.runtime_index, self.packers):
            a = args[i]
            if packer is None:
                out.append(a.alloc.handle)
                out.append(np.uint64(a.offset))
            else:
                out.append(packer(a))
        return out

    def launch(self, grid, block, args) -> None:
        gsize = (grid[0] * block[0], grid[1] * block[1], grid[2] * block[2])
        rec = self.device._recording
        if rec is not None:
            k = _cl().Kernel(self.program, self.gen.entry)  # its own arguments, set once
            k.set_args(*self.pack(args))
            rec.launches.append((k, gsize, block))
            return
        self.kernel.set_args(*self.pack(args))
        _cl().enqueue_nd_range_kernel(self.device.queue, self.kernel, gsize, block)


class OpenCLRecording(Recording):
    def __init__(self, device: OpenCLDevice):
        super().__init__(device)
        self.launches: list = []

    def replay(self) -> None:
        enqueue, q = _cl().enqueue_nd_range_kernel, self.device.queue
        for k, g, b in self.launches:
            enqueue(q, k, g, b)


class OpenCLDevice(Device):
    backend = "opencl"

    def __init__(self, index: int = 0):
        cl = _cl()
        devs = list_devices()
        if not devs:
            raise RuntimeError("no OpenCL device found (install an ICD such as pocl-opencl-icd)")
        if index >= len(devs):
            raise RuntimeError(f"OpenCL device {index} does not exist ({len(devs)} found)")
        d = self.cl_device = devs[index]
        self.ctx = cl.Context([d])
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        ext = d.extensions.split()
        native_sg = "cl_khr_subgroups" in ext and "cl_khr_subgroup_shuffle" in ext
        sg = 1
        if native_sg:
            try:
                sg = int(d.get_info(cl.device_info.MAX_NUM_SUB_GROUPS) and 32)
            except Exception:
                sg = 32
        caps = Caps("opencl", subgroup_size=sg, native_subgroups=native_sg,
                    fp16="cl_khr_fp16" in ext, arch=f"{d.platform.name}|{d.name}|{d.driver_version}")
        super().__init__(index, d.name.strip(), caps)
        self.is_gpu = bool(d.type & cl.device_type.GPU)

    # memory
    def _alloc(self, nbytes):
        cl = _cl()
        return cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, nbytes)

    def _free(self, handle):
        handle.release()

    def _write(self, handle, offset, array):
        _cl().enqueue_copy(self.queue, handle, array, dst_offset=offset)

    def _read(self, handle, offset, out):
        _cl().enqueue_copy(self.queue, out, handle, src_offset=offset)

    def _fill_zero(self, handle, nbytes):
        _cl().enqueue_fill_buffer(self.queue, handle, np.uint8(0), 0, nbytes)

    # kernels
    def _build(self, gen: Generated, constexpr_mask):
        cl = _cl()
        options = ["-cl-std=CL1.2"] if "cl_khr_subgroups" not in gen.text else ["-cl-std=CL2.0"]
        key = cache.make_key("opencl", gen.text, self.caps.arch, " ".join(options))
        binary = cache.load(key)
        program = None
        if binary is not None:
            try:
                program = cl.Program(self.ctx, [self.cl_device], [binary]).build(options=options)
            except Exception:
                program = None
        if program is None:
            try:
                program = cl.Program(self.ctx, gen.text).build(options=options)
            except cl.RuntimeError as exc:
                log = str(exc)
                raise BackendCompileError(
                    f"OpenCL build of kernel '{gen.entry}' failed:\n{gen.annotate_log(log)}") from None
            try:
                cache.store(key, program.get_info(cl.program_info.BINARIES)[0])
            except Exception:
                pass
        return OpenCLKernel(self, program, gen, constexpr_mask)

    def synchronize(self):
        self.queue.finish()

    def event(self):
        return OpenCLEvent(_cl().enqueue_marker(self.queue))

    def record(self):
        return OpenCLRecording(self)
