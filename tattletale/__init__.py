"""tattletale: an LLM inference engine whose GPU kernels are written in a Python-embedded DSL."""

from .dsl.errors import BackendCompileError, CompileError
from .dsl.kernel import func, kernel
from .dsl.language import *  # noqa: F401,F403 - the builtins: tt.global_id, tt.exp, …
from .dsl.types import (
    Buffer,
    bf16,
    bool_,
    constexpr,
    f16,
    f32,
    f64,
    fragment,
    from_bf16_bits,
    i8,
    i16,
    i32,
    i64,
    to_bf16_bits,
    u8,
    u16,
    u32,
    u64,
    vector,
)
from .runtimes import Device, Tensor, device, devices

__version__ = "0.1.0"


def __getattr__(name: str):
    """`tt.LLM` is imported on first use: kernels-only users never load the model stack."""
    if name == "LLM":
        from .engine.llm import LLM

        return LLM
    raise AttributeError(f"module 'tattletale' has no attribute {name!r}")

__all__ = [
    "BackendCompileError", "CompileError", "Buffer", "Device", "Tensor", "bf16", "bool_",
    "constexpr", "device", "devices", "f16", "f32", "f64", "fragment", "from_bf16_bits", "func", "i8", "i16",
    "i32", "i64", "kernel", "to_bf16_bits", "u8", "u16", "u32", "u64", "vector",
]
