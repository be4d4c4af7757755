"""Weight matrices on a device, in the formats the kernels decode in place.

GGUF's block formats are repacked (not dequantized) at load time into a GPU-friendly layout:
the quantized bytes of each row as contiguous 32-bit words (so a lane reads a whole 32-element
block with one 16-byte load) and the per-block f16 scales (and Q4_1 minimums) as separate arrays.
Element order inside a block is GGUF's: for Q4, byte j holds element j in its low nibble and
element j+16 in its high nibble.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import tattletale as tt
from tattletale.runtimes import Tensor

BLOCK_ELEMS = 32
# bytes per 32-element block in GGUF files, and the bytes of header (scale, min) in front
_GGUF_BLOCK = {"q8_0": (34, 2), "q4_0": (18, 2), "q4_1": (20, 4)}
FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")


@dataclass
class Weight:
    """A [N, K] matrix (rows are output features) in one of FORMATS."""

    fmt: str
    shape: tuple[int, int]
    data: Tensor  # values (f32/f16/bf16) or u32 words of quants
    scales: Tensor | None = None  # f16, one per 32-element block (f32 on CPU OpenCL)
    mins: Tensor | None = None  # f16, Q4_1 only (f32 on CPU OpenCL)

    def __post_init__(self) -> None:
        """On CPU OpenCL the block scales and minimums are kept as f32: there the matrix products
        are bound by instructions, not bytes, and decoding an f16 costs more than reading 2 more
        bytes per 32 elements (Q4_1 GEMV 1.35-1.8x faster on PoCL)."""
        if cpu_simd(self.data.device):
            for name in ("scales", "mins"):
                t = getattr(self, name)
                if t is not None and t.dtype == tt.f16:
                    setattr(self, name, t.device.tensor(t.numpy().astype(np.float32)))

    @property
    def device(self):
        return self.data.device

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.data, self.scales, self.mins) if t is not None)

    @classmethod
    def from_array(cls, dev, array: np.ndarray, fmt: str) -> Weight:
        """Upload a float matrix as fmt (quantizing with the gguf package for block formats)."""
        a = np.ascontiguousarray(array, dtype=np.float32)
        if fmt == "f32":
            return cls(fmt, a.shape, dev.tensor(a))
        if fmt == "f16":
            return cls(fmt, a.shape, dev.tensor(a.astype(np.float16)))
        if fmt == "bf16":
            return cls(fmt, a.shape, dev.tensor(tt.to_bf16_bits(a), dtype=tt.bf16))
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        raw = quantize(a, GGMLQuantizationType[fmt.upper()])
        return cls.from_gguf_blocks(dev, raw, fmt, a.shape)

    @classmethod
    def from_gguf_blocks(cls, dev, raw: np.ndarray, fmt: str, shape: tuple[int, int]) -> Weight:
        """Repack GGUF block bytes (uint8, rows of K/32 blocks) for the kernels."""
        n, k = shape
        if k % BLOCK_ELEMS:
            raise ValueError(f"{fmt} rows must be a multiple of 32 elements, got {k}")
        size, head = _GGUF_BLOCK[fmt]
        blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, k // BLOCK_ELEMS, size)
        scales = np.ascontiguousarray(blocks[:, :, 0:2]).view(np.float16).reshape(n, -1)
        mins = None
        if fmt == "q4_1":
            mins = dev.tensor(np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16).reshape(n, -1))
        words = np.ascontiguousarray(blocks[:, :, head:]).view(np.uint32).reshape(n, -1)
        return cls(fmt, (n, k), dev.tensor(words), dev.tensor(scales), mins)


def cpu_simd(dev) -> bool:
    """A CPU OpenCL runtime (PoCL), which vectorizes within each work-item (a GPU OpenCL driver
    without subgroups, such as NVIDIA's, keeps the GPU kernels)."""
    return dev.caps.target == "opencl" and dev.caps.subgroup_size == 1 and not getattr(dev, "is_gpu", False)


@tt.func
def nibble(word, k):
    """The 4-bit value at nibble k (0 … 7) of a u32, as f32."""
    return tt.f32((word >> (4 * k)) & 15)


@tt.func
def sbyte(word, k):
    """The signed byte k (0 … 3) of a u32, as f32."""
    return tt.f32(tt.bitcast(word << (24 - 8 * k), tt.i32) >> 24)


@tt.func
def half_lo(word, BF16):
    """The low 16 bits of a u32 as an f16/bf16 value."""
    if BF16:
        return tt.bitcast(word << 16, tt.f32)
    return tt.f32(tt.bitcast(tt.u16(word & 65535), tt.f16))


@tt.func
def half_hi(word, BF16):
    if BF16:
        return tt.bitcast(word & 4294901760, tt.f32)
    return tt.f32(tt.bitcast(tt.u16(word >> 16), tt.f16))


@tt.func
def dequant_element(w, scales, mins, n, k, K, FMT):
    """Element (n, k) of a weight matrix as f32 (used by gathers; matmuls decode whole blocks)."""
    if FMT == "f32" or FMT == "f16" or FMT == "bf16":
        return tt.f32(w[n * K + k])
    b = n * (K // 32) + k // 32
    j = k % 32
    if FMT == "q8_0":
        word = w[n * (K // 4) + k // 4]
        return tt.f32(scales[b]) * sbyte(word, k % 4)
    word = w[b * 4 + (j % 16) // 4]
    q = nibble(word, 2 * (j % 4) + j // 16)
    if FMT == "q4_0":
        return tt.f32(scales[b]) * (q - 8.0)
    return tt.mul_rn(tt.f32(scales[b]), q) + tt.f32(mins[b])  # unfused, as gguf computes it
