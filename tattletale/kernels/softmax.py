"""Numerically stable softmax over rows of any length (one workgroup per row, online max/sum)."""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .reduce import block_max, block_sum, pick_block


@tt.kernel
def softmax_kernel(x: tt.Buffer, out: tt.Buffer, n: tt.i32, scale: tt.f32, BLOCK: tt.constexpr):
    """Each thread keeps a running (max, sum of exp) over its strided elements; the pairs are then
    merged across the workgroup, so x is read twice in all (once here, once to write)."""
    row = tt.group_id(0)
    t = tt.local_id(0)
    base = row * n
    m = -float("inf")
    s = 0.0
    for c in range(t, n, BLOCK):
        v = tt.f32(x[base + c]) * scale
        if v > m:
            s = s * tt.exp(m - v) + 1.0
            m = v
        else:
            s += tt.exp(v - m)
    gm = block_max(m, BLOCK)
    total = block_sum(s * tt.exp(m - gm) if s > 0.0 else 0.0, BLOCK)
    inv = 1.0 / total
    for c in range(t, n, BLOCK):
        out[base + c] = tt.exp(tt.f32(x[base + c]) * scale - gm) * inv


def softmax(x: Tensor, scale: float = 1.0, out: Tensor | None = None) -> Tensor:
    """softmax(scale * x) over the last dimension."""
    n = x.shape[-1]
    out = out if out is not None else x.device.empty(x.shape, x.dtype)
    block = pick_block(n // 4, hi=512)
    softmax_kernel[x.size // n, block](x, out, n, scale, block)
    return out
