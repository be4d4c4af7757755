"""Rotary position embeddings, applied in place to q and k, in both layouts models use.

Interleaved (GPT-J/GGUF style) rotates pairs (2i, 2i+1); half-split ("neox", HF Llama) rotates
(i, i + d/2). Frequencies come from `inv_freq`, computed on the host once per model (with
Llama-3 or linear scaling), so the kernel reads one float per pair.
"""

from __future__ import annotations

import math

import numpy as np

import tattletale as tt
from tattletale.runtimes import Tensor

BLOCK = 256


@tt.kernel
def rope_kernel(x: tt.Buffer, pos: tt.Buffer[tt.i32], inv_freq: tt.Buffer[tt.f32], n_tokens: tt.i32,
                n_heads: tt.i32, head_dim: tt.i32, row_stride: tt.i32, NEOX: tt.constexpr):
    """One thread per (token, pair), rotating that pair in every head: the angle's cosine and sine
    are computed once for all heads (on CPUs they are most of the kernel's time). Token t's heads
    start at x[t * row_stride]."""
    i = tt.global_id(0)
    half = head_dim // 2
    if i < n_tokens * half:
        p = i % half
        t = i // half
        angle = tt.f32(pos[t]) * inv_freq[p]
        c = tt.cos(angle)
        s = tt.sin(angle)
        for h in range(n_heads):
            base = t * row_stride + h * head_dim
            a = base + p if NEOX else base + 2 * p
            b = a + half if NEOX else a + 1
            x0 = tt.f32(x[a])
            x1 = tt.f32(x[b])
            x[a] = x0 * c - x1 * s
            x[b] = x0 * s + x1 * c


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Per-pair inverse frequencies in float32, as HF transformers computes them, with the
    Llama-3 ("llama3") or linear rope scaling of a model config's `rope_scaling`."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    if kind not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {kind!r}")
    return inv


def rope_(x: Tensor, positions: Tensor, inv_freq: Tensor, n_heads: int, head_dim: int,
          neox: bool = True, row_stride: int | None = None) -> Tensor:
    """Rotate x in place. x holds n_tokens rows of n_heads*head_dim values (row_stride apart, so q
    and k can be views into a fused qkv projection)."""
    n_tokens = positions.size
    stride = row_stride if row_stride is not None else n_heads * head_dim
    total = n_tokens * (head_dim // 2)
    rope_kernel[(total + BLOCK - 1) // BLOCK, BLOCK](x, positions, inv_freq, n_tokens, n_heads,
                                                      head_dim, stride, neox)
    return x
