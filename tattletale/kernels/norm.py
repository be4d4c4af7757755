"""RMSNorm, optionally fused with the residual add that precedes it in a transformer block."""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .reduce import block_sum, pick_block


@tt.kernel
def rmsnorm_kernel(x: tt.Buffer, residual: tt.Buffer, w: tt.Buffer, out: tt.Buffer, n: tt.i32,
                   group: tt.i32, stride: tt.i32, eps: tt.f32, BLOCK: tt.constexpr,
                   ADD_RESIDUAL: tt.constexpr):
    """One workgroup per row. Rows come in groups of `group` consecutive rows, groups `stride`
    elements apart (per-head norms inside a fused QKV row). With ADD_RESIDUAL: residual += x (in
    place), out = norm(residual)."""
    row = tt.group_id(0)
    t = tt.local_id(0)
    base = (row // group) * stride + (row % group) * n
    ss = 0.0
    for c in range(t, n, BLOCK):
        v = tt.f32(x[base + c])
        if ADD_RESIDUAL:
            v += residual[base + c]
            residual[base + c] = v
        ss += v * v
    scale = tt.rsqrt(block_sum(ss, BLOCK) / tt.f32(n) + eps)
    for c in range(t, n, BLOCK):
        v = residual[base + c] if ADD_RESIDUAL else x[base + c]
        out[base + c] = v * scale * w[c]


def rmsnorm(x: Tensor, weight: Tensor, eps: float, out: Tensor | None = None,
            residual: Tensor | None = None) -> Tensor:
    """RMSNorm over the last dimension of x ([rows, n]).

    With `residual`, computes residual += x first (updating it in place) and normalizes that sum,
    as pre-norm transformer blocks do between layers.
    """
    n = x.shape[-1]
    rows = x.size // n
    if out is None:
        out = x.device.empty(x.shape, x.dtype)
    block = pick_block(n // 4)
    res = residual if residual is not None else x
    rmsnorm_kernel[rows, block](x, res, weight, out, n, 1, n, eps, block, residual is not None)
    return out


def rmsnorm_heads_(x: Tensor, weight: Tensor, eps: float, n_tokens: int, n_heads: int,
                   head_dim: int, row_stride: int) -> Tensor:
    """Normalize each head in place (Qwen3's q/k norms): token t's heads are contiguous at
    x[t * row_stride], so q and k can stay inside a fused QKV projection."""
    block = pick_block(head_dim // 4)
    rmsnorm_kernel[n_tokens * n_heads, block](x, x, weight, x, head_dim, n_heads, row_stride, eps,
                                              block, False)
    return x
