"""Elementwise kernels: SwiGLU (SiLU·mul), GELU, add, mul."""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

BLOCK = 256
_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT2 = 0.7071067811865476


@tt.func
def silu(v):
    return v / (1.0 + tt.exp(-v))


@tt.kernel
def silu_mul_kernel(gate: tt.Buffer, up: tt.Buffer, out: tt.Buffer, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        out[i] = silu(tt.f32(gate[i])) * up[i]


@tt.kernel
def swiglu_kernel(gate_up: tt.Buffer, out: tt.Buffer, inter: tt.i32, n: tt.i32):
    """out[t, i] = silu(gate_up[t, i]) · gate_up[t, inter + i]: the fused gate|up projection."""
    i = tt.global_id(0)
    if i < n:
        t = i // inter
        j = i % inter
        out[i] = silu(tt.f32(gate_up[t * 2 * inter + j])) * gate_up[t * 2 * inter + inter + j]


@tt.kernel
def gelu_kernel(x: tt.Buffer, out: tt.Buffer, n: tt.i32, TANH: tt.constexpr):
    i = tt.global_id(0)
    if i < n:
        v = tt.f32(x[i])
        if TANH:
            out[i] = 0.5 * v * (1.0 + tt.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
        else:
            out[i] = 0.5 * v * (1.0 + tt.erf(v * _INV_SQRT2))


@tt.kernel
def binary_kernel(a: tt.Buffer, b: tt.Buffer, out: tt.Buffer, n: tt.i32, OP: tt.constexpr):
    i = tt.global_id(0)
    if i < n:
        if OP == "add":
            out[i] = tt.f32(a[i]) + b[i]
        else:
            out[i] = tt.f32(a[i]) * b[i]


def _out(x: Tensor, out: Tensor | None) -> Tensor:
    return out if out is not None else x.device.empty(x.shape, x.dtype)


def _grid(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


def silu_mul(gate: Tensor, up: Tensor, out: Tensor | None = None) -> Tensor:
    """silu(gate) * up, the SwiGLU activation of Llama-style MLPs."""
    out = _out(gate, out)
    silu_mul_kernel[_grid(gate.size), BLOCK](gate, up, out, gate.size)
    return out


def swiglu(gate_up: Tensor, inter: int, out: Tensor | None = None) -> Tensor:
    """silu(gate) * up for rows [gate | up] of width 2·inter (a fused gate/up projection)."""
    rows = gate_up.size // (2 * inter)
    out = out if out is not None else gate_up.device.empty((rows, inter), gate_up.dtype)
    swiglu_kernel[_grid(rows * inter), BLOCK](gate_up, out, inter, rows * inter)
    return out


def gelu(x: Tensor, approximate: str = "tanh", out: Tensor | None = None) -> Tensor:
    """GELU, with the tanh approximation or exact (approximate="none", through erf)."""
    out = _out(x, out)
    gelu_kernel[_grid(x.size), BLOCK](x, out, x.size, approximate == "tanh")
    return out


def add(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    out = _out(a, out)
    binary_kernel[_grid(a.size), BLOCK](a, b, out, a.size, "add")
    return out


def mul(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    out = _out(a, out)
    binary_kernel[_grid(a.size), BLOCK](a, b, out, a.size, "mul")
    return out
