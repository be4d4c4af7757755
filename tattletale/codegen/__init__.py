"""From IR to target source: a registry of printers, one module per target."""

from __future__ import annotations

from importlib import import_module

from . import ir
from .cfamily import Caps, Generated

TARGETS = ("cuda", "opencl", "webgpu", "vulkan")
# targets whose printer module is named after its language
_MODULE_NAMES = {"webgpu": "wgsl", "vulkan": "spirv"}


def _module(target: str):
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    return import_module(f"{__name__}.{_MODULE_NAMES.get(target, target)}")


def default_caps(target: str) -> Caps:
    """A typical device of the target, for printing source without a device."""
    return _module(target).DEFAULT_CAPS


def native_mma(target: str, caps: Caps) -> bool:
    """Whether the target prints `tt.mma` and `tt.async_copy` to matrix and copy instructions of
    the device; elsewhere they are lowered to ordinary code (codegen/mma.py)."""
    return getattr(_module(target), "native_mma", lambda caps: False)(caps)


def native_wgmma(target: str, caps: Caps) -> bool:
    """Whether the target prints `tt.wgmma` to the device's warpgroup matrix instructions (CUDA on
    sm_90a); elsewhere a kernel using it goes through the portable lowering as a whole."""
    return getattr(_module(target), "native_wgmma", lambda caps: False)(caps)


def render(target: str, kernel: ir.Kernel, caps: Caps) -> Generated:
    native = native_mma(target, caps) and ("wgmma" not in kernel.features or
                                           native_wgmma(target, caps))
    if kernel.features & {"mma", "async_copy", "wgmma"} and not native:
        from .mma import lower

        kernel = lower(kernel, caps.subgroup_size)
    return _module(target).render(kernel, caps)


__all__ = ["Caps", "Generated", "TARGETS", "default_caps", "native_mma", "native_wgmma", "render"]
