"""Embedding lookup: rows of a (possibly quantized) table gathered by token id."""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .quant import Weight, dequant_element

BLOCK = 256


@tt.kernel
def embedding_kernel(table: tt.Buffer, scales: tt.Buffer, mins: tt.Buffer, ids: tt.Buffer[tt.i32],
                     out: tt.Buffer, n_ids: tt.i32, dim: tt.i32, FMT: tt.constexpr):
    i = tt.global_id(0)
    if i < n_ids * dim:
        t = i // dim
        out[i] = dequant_element(table, scales, mins, ids[t], i % dim, dim, FMT)


def embedding(table: Weight, ids: Tensor, out: Tensor | None = None, dtype=tt.f32) -> Tensor:
    """out[t, :] = table[ids[t], :] decoded to `dtype` (f32 or f16)."""
    dim = table.shape[1]
    n = ids.size
    out = out if out is not None else ids.device.empty((n, dim), dtype)
    scales = table.scales if table.scales is not None else table.data
    mins = table.mins if table.mins is not None else scales
    embedding_kernel[(n * dim + BLOCK - 1) // BLOCK, BLOCK](table.data, scales, mins, ids, out, n, dim,
                                                           table.fmt)
    return out
