"""Backends behind one device interface: `tt.device(name, index)`, `tt.devices()`."""

from __future__ import annotations

from .base import Device, Tensor

BACKENDS = ("cuda", "opencl", "webgpu", "vulkan")
_devices: dict[tuple[str, int], Device] = {}
_default: Device | None = None


def _make(backend: str, index: int) -> Device:
    if backend == "cuda":
        from .cuda import CudaDevice

        return CudaDevice(index)
    if backend == "opencl":
        from .opencl import OpenCLDevice

        return OpenCLDevice(index)
    if backend == "webgpu":
        from .webgpu import WebGPUDevice

        return WebGPUDevice(index)
    if backend == "vulkan":
        from .vulkan import VulkanDevice

        return VulkanDevice(index)
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def devices() -> list[tuple[str, int, str]]:
    """Every usable device as (backend, index, name), fastest first."""
    out = []
    from . import cuda, opencl, vulkan, webgpu

    for i, name in enumerate(cuda.list_devices()):
        out.append(("cuda", i, name))
    vk_devs = [(i, p) for i, (_, p) in enumerate(vulkan.list_devices())]
    out += [("vulkan", i, p.deviceName) for i, p in vk_devs if vulkan.is_gpu(p)]
    cl_devs = opencl.list_devices()
    for i, d in enumerate(cl_devs):
        out.append(("opencl", i, d.name.strip()))
    for i, name in enumerate(webgpu.list_devices()):
        out.append(("webgpu", i, name))
    out += [("vulkan", i, p.deviceName) for i, p in vk_devs if not vulkan.is_gpu(p)]  # lavapipe
    return out


def _fastest() -> tuple[str, int]:
    """The default device: CUDA, then a GPU through OpenCL or Vulkan, then the CPU through OpenCL;
    probing stops at the first hit (creating a WebGPU adapter is slow, so it comes last)."""
    from . import cuda, opencl, vulkan

    if cuda.list_devices():
        return "cuda", 0
    cl_devs = opencl.list_devices()  # GPUs first
    if cl_devs and opencl.is_gpu(cl_devs[0]):
        return "opencl", 0
    vk_devs = vulkan.list_devices()
    for i, (_, props) in enumerate(vk_devs):
        if vulkan.is_gpu(props):
            return "vulkan", i
    if cl_devs:
        return "opencl", 0
    if vk_devs:
        return "vulkan", 0
    found = devices()
    if not found:
        raise RuntimeError("no compute device found: install a GPU driver, or pocl-opencl-icd / "
                           "mesa-vulkan-drivers for the CPU")
    return found[0][0], found[0][1]


def device(name: str | None = None, index: int = 0) -> Device:
    """The device `index` of backend `name` (one of BACKENDS); with no name, the fastest present."""
    global _default
    if name is None:
        if _default is None:
            _default = device(*_fastest())
        return _default
    key = (name, index)
    dev = _devices.get(key)
    if dev is None:
        try:
            dev = _make(name, index)
        except ImportError as exc:
            raise RuntimeError(f"backend {name!r} is not installed: {exc}") from None
        _devices[key] = dev
    return dev


def device_of_args(args) -> Device:
    dev = None
    for a in args:
        if isinstance(a, Tensor):
            if dev is None:
                dev = a.device
            elif a.device is not dev:
                raise ValueError(f"tensors on different devices: {dev} and {a.device}")
    return dev if dev is not None else device()


__all__ = ["BACKENDS", "Device", "Tensor", "device", "devices", "device_of_args"]
