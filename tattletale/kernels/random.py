"""Filling device memory with reproducible pseudo-random values, on the device (benchmarks of
large model shapes need gigabytes of random weights, too slow to make and upload from the host)."""

from __future__ import annotations

import tattletale as tt
from tattletale.runtimes import Tensor

from .sampling import hash_u32

BLOCK = 256


@tt.kernel
def fill_uniform_kernel(out: tt.Buffer, n: tt.i32, seed: tt.u32, lo: tt.f32, hi: tt.f32):
    i = tt.global_id(0)
    if i < n:
        r = hash_u32(tt.u32(i) ^ hash_u32(seed))
        out[i] = lo + (hi - lo) * (tt.f32(r >> 8) * (1.0 / 16777216.0))


@tt.kernel
def fill_bits_kernel(out: tt.Buffer[tt.u32], n: tt.i32, seed: tt.u32):
    i = tt.global_id(0)
    if i < n:
        out[i] = hash_u32(tt.u32(i) ^ hash_u32(seed))


def fill_uniform_(t: Tensor, seed: int, lo: float = -1.0, hi: float = 1.0) -> Tensor:
    """Uniform values in [lo, hi) (float tensors) — or random bits for u32 tensors."""
    n = t.size
    if t.dtype == tt.u32:
        fill_bits_kernel[-(-n // BLOCK), BLOCK](t, n, seed & 0xFFFFFFFF)
    else:
        fill_uniform_kernel[-(-n // BLOCK), BLOCK](t, n, seed & 0xFFFFFFFF, lo, hi)
    return t
