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


def render(target: str, kernel: ir.Kernel, caps: Caps) -> Generated:
    return _module(target).render(kernel, caps)


__all__ = ["Caps", "Generated", "TARGETS", "default_caps", "render"]
