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


def render(target: str, kernel: ir.Kernel, caps: Caps) -> Generated:
    if kernel.features & {"mma", "async_copy"} and not native_mma(target, caps):
        from .mma import lower

        kernel = lower(kernel, caps.subgroup_size)
    return _module(target).render(kernel, caps)


__all__ = ["Caps", "Generated", "TARGETS", "default_caps", "native_mma", "render"]
