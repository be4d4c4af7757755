"""The DSL's type system: scalars, vectors, and the memory spaces a kernel can address.

Types are immutable, hashable values so that they can be part of specialization keys. Each
scalar knows its numpy counterpart (bf16 has none: it travels as raw uint16 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Type:
    """Base class of every DSL type."""

    def is_scalar(self) -> bool:
        return isinstance(self, ScalarType)


@dataclass(frozen=True)
class ScalarType(Type):
    name: str
    kind: str  # "f" float, "i" signed int, "u" unsigned int, "b" bool
    bits: int

    def __repr__(self) -> str:
        return f"tt.{self.name}"

    def __str__(self) -> str:
        return self.name

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind in "iu"

    @property
    def is_signed(self) -> bool:
        return self.kind == "i"

    @property
    def is_bool(self) -> bool:
        return self.kind == "b"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype that holds this type's bits (bf16 → uint16)."""
        return np.dtype(_NP_NAMES[self.name])

    def __call__(self, value):  # noqa: D401 - only meaningful inside kernels
        """Casting (`tt.f16(x)`) is only defined inside `@tt.kernel` code."""
        raise TypeError(f"tt.{self.name}(...) is a cast usable only inside @tt.kernel / @tt.func code")


@dataclass(frozen=True)
class VectorType(Type):
    elem: ScalarType
    lanes: int

    def __str__(self) -> str:
        return f"{self.elem.name}x{self.lanes}"

    __repr__ = __str__


@dataclass(frozen=True)
class BufferType(Type):
    """A pointer to device (global) memory holding elements of `elem`."""

    elem: ScalarType | None  # None: generic, inferred from the argument at launch

    def __str__(self) -> str:
        return f"Buffer[{self.elem}]"

    __repr__ = __str__


@dataclass(frozen=True)
class ArrayType(Type):
    """A fixed-shape array in workgroup-shared (`space="shared"`) or private memory."""

    elem: ScalarType | FragmentType  # fragments only in private arrays
    shape: tuple[int, ...]
    space: str  # "shared" | "private"
    # Swizzled shared arrays (`tt.shared(..., swizzle=True)`): the bytes of one row (32, 64 or 128),
    # whose 16-byte chunks are permuted by row (see `swizzle_terms`); 0 for plain arrays.
    swizzle: int = 0

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __str__(self) -> str:
        swz = f", swizzle {self.swizzle}" if self.swizzle else ""
        return f"{self.space}[{self.elem}, {self.shape}{swz}]"

    __repr__ = __str__


def swizzle_terms(t: ArrayType) -> tuple[int, int, int]:
    """(shift, mask, chunk) of a swizzled array: element column c of row r is stored at column
    c ^ (((r >> shift) & mask) * chunk), i.e. the 16-byte chunk j of a row of W bytes moves to
    j ^ ((r // (128 / W)) % (W / 16)). This is the 128/64/32-byte swizzle of NVIDIA's tensor-core
    descriptors when the array starts at a multiple of 8·W bytes: the chunk bits of an address
    XORed with the bits just above 128 bytes."""
    w = t.swizzle
    return (128 // w).bit_length() - 1, w // 16 - 1, 16 // t.elem.itemsize


@dataclass(frozen=True)
class FragmentType(Type):
    """A 16×16 matrix tile held collectively by the lanes of a subgroup (see `tt.mma`): operand A
    or B of a product (f16/bf16 elements, opaque) or an f32 accumulator (elements readable).

    Only the accumulator's per-lane share is defined (codegen/mma.py gives its layout), so each
    target keeps operands in the form its matrix units (or its fallback) want."""

    use: str  # "a" | "b" | "acc" | "wgacc" (a warpgroup's 64 × n accumulator, see tt.wgmma)
    elem: ScalarType
    n: int = 16  # columns of the tile

    def __str__(self) -> str:
        if self.use == "wgacc":
            return f"fragment[wgacc 64x{self.n}, {self.elem}]"
        return f"fragment[{self.use}, {self.elem}]"

    __repr__ = __str__


class _BufferFactory:
    """`tt.Buffer[tt.f32]` in annotations; bare `tt.Buffer` is generic over the element type."""

    def __getitem__(self, elem: ScalarType) -> BufferType:
        if not isinstance(elem, ScalarType):
            raise TypeError(f"Buffer[...] takes a scalar type, not {elem!r}")
        return BufferType(elem)

    def __repr__(self) -> str:
        return "tt.Buffer"


class ConstExpr:
    """Annotation marking a compile-time parameter; each distinct value is its own specialization."""

    def __repr__(self) -> str:
        return "tt.constexpr"


f16 = ScalarType("f16", "f", 16)
bf16 = ScalarType("bf16", "f", 16)
f32 = ScalarType("f32", "f", 32)
f64 = ScalarType("f64", "f", 64)
i8 = ScalarType("i8", "i", 8)
u8 = ScalarType("u8", "u", 8)
i16 = ScalarType("i16", "i", 16)
u16 = ScalarType("u16", "u", 16)
i32 = ScalarType("i32", "i", 32)
u32 = ScalarType("u32", "u", 32)
i64 = ScalarType("i64", "i", 64)
u64 = ScalarType("u64", "u", 64)
bool_ = ScalarType("bool", "b", 8)

Buffer = _BufferFactory()
constexpr = ConstExpr()

SCALARS: dict[str, ScalarType] = {
    t.name: t for t in (f16, bf16, f32, f64, i8, u8, i16, u16, i32, u32, i64, u64, bool_)
}
_NP_NAMES = {
    "f16": "float16", "bf16": "uint16", "f32": "float32", "f64": "float64", "i8": "int8",
    "u8": "uint8", "i16": "int16", "u16": "uint16", "i32": "int32", "u32": "uint32",
    "i64": "int64", "u64": "uint64", "bool": "bool",
}
_FROM_NP = {np.dtype(v): SCALARS[k] for k, v in _NP_NAMES.items() if k != "bf16"}


def from_numpy(dtype) -> ScalarType:
    """The DSL type of a numpy dtype (uint16 maps to u16; pass `dtype=tt.bf16` explicitly for bf16)."""
    try:
        return _FROM_NP[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"no tattletale type for numpy dtype {np.dtype(dtype)}") from None


def as_type(t) -> ScalarType:
    """Accept a DSL scalar type, a numpy dtype or a type name."""
    if isinstance(t, ScalarType):
        return t
    if isinstance(t, str) and t in SCALARS:
        return SCALARS[t]
    return from_numpy(t)


def fragment(use: str, elem: ScalarType = f32, n: int | None = None) -> FragmentType:
    """The type of an mma fragment, for arrays of them: `tt.array((4,), tt.fragment("a", tt.f16))`,
    `tt.array((4, 4), tt.fragment("acc"))`, `tt.array((2,), tt.fragment("wgacc", n=128))` (a
    warpgroup's 64 × 128 accumulator, see `tt.wgmma`)."""
    if use == "wgacc":
        if elem != f32 or not isinstance(n, int) or not 16 <= n <= 256 or n % 16:
            raise TypeError(f"a 'wgacc' fragment holds f32 and n columns, n a multiple of 16 up to "
                            f"256, not {n!r}")
        return FragmentType(use, elem, n)
    if n is not None:
        raise TypeError(f"{use!r} fragments are 16 × 16: n is for 'wgacc'")
    if use in ("a", "b") and elem in (f16, bf16) or use == "acc" and elem == f32:
        return FragmentType(use, elem)
    raise TypeError(f"no fragment {use!r} of {elem}: operands 'a' and 'b' hold f16 or bf16, "
                    f"accumulators ('acc', 'wgacc') f32")


def vector(elem: ScalarType, lanes: int) -> VectorType:
    if lanes not in (2, 4):
        raise TypeError("vectors have 2 or 4 lanes")
    return VectorType(elem, lanes)


def promote(a: ScalarType, b: ScalarType) -> ScalarType:
    """The type binary arithmetic on `a` and `b` computes in: C's usual arithmetic conversions.

    Each operand is first promoted on its own (bool and 8/16-bit integers to i32, 16-bit floats
    to f32: a u8 is an i32 in arithmetic, as in C); then a float wins, else the wider integer,
    and at equal width the unsigned one.
    """
    a, b = arith_type(a), arith_type(b)
    if a == b:
        return a
    if a.is_float or b.is_float:
        bits = max(x.bits for x in (a, b) if x.is_float)
        return f64 if bits == 64 else f32
    if a.bits != b.bits:
        return a if a.bits > b.bits else b
    return a if not a.is_signed else b


def wrap_int(value: int, t: ScalarType) -> int:
    """`value` converted to the integer type `t` as C does: modulo 2**bits, two's complement."""
    value &= (1 << t.bits) - 1
    if t.is_signed and value >> (t.bits - 1):
        value -= 1 << t.bits
    return value


def round_float(value: float, t: ScalarType) -> float:
    """The float `t` nearest to `value` (round to nearest even), as a Python float."""
    if t.bits == 64:
        return float(value)
    with np.errstate(over="ignore"):
        v32 = np.float32(value)
        if t == f16:
            return float(np.float16(value))
        if t == bf16:
            return float(from_bf16_bits(to_bf16_bits(v32)))
        return float(v32)


def arith_type(t: ScalarType) -> ScalarType:
    """Sub-word integers and bools compute as i32, 16-bit floats as f32."""
    if t.is_float:
        return f32 if t.bits < 32 else t
    if t.bits < 32:
        return i32
    return t


# --- host-side bf16 helpers (numpy has no bf16) -------------------------------------------------


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16 (round to nearest even), returned as uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """Widen uint16 bf16 bits to float32."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
