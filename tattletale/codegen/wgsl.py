"""WGSL printer: WebGPU compute shaders (naga validates them in wgpu, Tint in browsers).

WGSL offers much less than C, so this printer legalizes as it prints:

* Types. WGSL has no 8/16-bit types in memory, no bf16, no 64-bit types. 8/16-bit and bool values
  compute in i32/u32/f32 registers, as the C printers carry 16-bit floats in floats (a cast to i8
  wraps with shifts). i64, u64 and f64 raise CompileError at their first use.
* Buffers of 8/16-bit (and bool) elements are `array<u32>`: loads unpack the element from its word
  (f16 with `unpack2x16float`, bf16 by a shift into the high half). A store must change only its
  element even while other threads store the neighbours in the same word (kernels commonly write
  adjacent f16 elements from adjacent threads), so such buffers are `array<atomic<u32>>` and a
  store is an `atomicXor` of exactly the bits that change (the element's old bits come from an
  `atomicLoad`; no other thread may store the same element concurrently, as in C).
* Vector loads/stores: a buffer accessed with n-wide vectors is declared as an array of vectors
  (`array<vec4<f32>>`, `array<vec2<u32>>` for f16x4), so that where the view's offset is a
  multiple of n, one 64/128-bit access moves the vector; sub-word vector stores covering whole
  words are plain atomic stores. Other offsets go element by element.
* f32 → f16 rounding is integer code (to nearest even, overflow to inf): WGSL leaves the rounding
  and overflow of `pack2x16float` to the implementation.
* Workgroup and private arrays of 8/16-bit elements take one 32-bit word per element: no
  read-modify-write, at two or four times the memory.
* Buffers and shared arrays used with atomics are `array<atomic<i32|u32>>`, and every access to
  them is atomic; an f32 atomic add is a compare-exchange loop on the bits, and the DSL's strong
  compare-and-swap retries `atomicCompareExchangeWeak` after spurious failures.
* Lazy selects and `and`/`or` whose deferred side loads or has side effects become `if`
  statements (passes.lower_lazy): WGSL's `select` is eager, and naga evaluates both sides of
  `&&`. Pure ones print as `select(...)` and `&&`.
* Barriers must be reached in workgroup-uniform control flow. The printer checks this with the
  rules of WGSL's uniformity analysis (which Tint enforces, naga does not) and raises CompileError
  at the barrier's Python line. Buffers the kernel never writes are `var<storage, read>`, whose
  loads at uniform indices are uniform. Kernels that need it to pass (block reductions whose
  result steers a loop) read shared arrays at uniform indices in uniform control flow with
  `workgroupUniformLoad`, which makes the value uniform at the cost of a barrier.
* Scalars and the element offsets of tensor views travel in a uniform block (`tt`; WebGPU has no
  push constants, and binding offsets must be 256-byte aligned): see `uniform_fields`.
* The block size is an `override` constant set at pipeline creation, so one module serves every
  block shape; the workgroup is one-dimensional and the 3-D local id is unfolded from its linear
  index. Grids wider than 65535 groups are dispatched folded and unfolded in the prologue.
* Subgroups: WGSL's subgroup builtins where the device has the `subgroup` feature, else subgroups
  of one invocation (as the OpenCL printer does).
* Drivers' gaps: signed `%` is `a - (a / b) * b` (naga's OpSRem is undefined for negative operands
  in Vulkan), and sin, cos, tanh, erf and pow are computed here (WGSL allows sin/cos ~2^-11
  absolute error, drivers overflow tanh, WGSL has no erf and its pow is undefined for x < 0).

Limitations: `fma` and `mul_rn` follow the driver (WGSL neither guarantees fusing nor forbids
contraction); float division, exp and log have the driver's precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dsl import types as T
from ..dsl.errors import CompileError
from . import ir
from .cfamily import Caps, Generated, ParamABI
from .passes import lower_lazy
from .text import TextPrinter

# Keywords, reserved words, predeclared types, enumerants and builtin functions: a module-scope
# buffer or a local with one of these names would be an error or would shadow the builtin.
WGSL_RESERVED = set("""
alias break case const const_assert continue continuing default diagnostic discard else enable
false fn for if let loop override requires return struct switch true var while NULL Self abstract
active alignas alignof as asm asm_fragment async attribute auto await become cast catch class
co_await co_return co_yield coherent column_major common compile compile_fragment concept
const_cast consteval constexpr constinit crate debugger decltype delete demote demote_to_helper do
dynamic_cast enum explicit export extends extern external fallthrough filter final finally friend
from fxgroup get goto groupshared highp impl implements import inline instanceof interface layout
lowp macro macro_rules match mediump meta mod module move mut mutable namespace new nil noexcept
noinline nointerpolation non_coherent noncoherent noperspective null nullptr of operator package
packoffset partition pass patch pixelfragment precise precision premerge priv protected pub
public readonly ref regardless register reinterpret_cast require resource restrict self set
shared sizeof smooth snorm static static_assert static_cast std subroutine super target template
this thread_local throw trait try type typedef typeid typename typeof union unless unorm unsafe
unsized use using varying virtual volatile wgsl where with writeonly yield
bool f16 f32 i32 u32 vec2 vec3 vec4 mat2x2 mat2x3 mat2x4 mat3x2 mat3x3 mat3x4 mat4x2 mat4x3 mat4x4
array atomic ptr sampler sampler_comparison texture_1d texture_2d texture_2d_array texture_3d
texture_cube texture_cube_array texture_multisampled_2d texture_storage_1d texture_storage_2d
texture_storage_2d_array texture_storage_3d texture_depth_2d texture_depth_2d_array
texture_depth_cube texture_depth_cube_array texture_depth_multisampled_2d texture_external
vec2i vec3i vec4i vec2u vec3u vec4u vec2f vec3f vec4f vec2h vec3h vec4h
function private workgroup uniform storage handle read write read_write
abs acos acosh all any arrayLength asin asinh atan atan2 atanh ceil clamp cos cosh countLeadingZeros
countOneBits countTrailingZeros cross degrees determinant distance dot exp exp2 extractBits
faceForward firstLeadingBit firstTrailingBit floor fma fract frexp insertBits inverseSqrt ldexp
length log log2 max min mix modf normalize pow quantizeToF16 radians reflect refract reverseBits
round saturate select sign sin sinh smoothstep sqrt step tan tanh transpose trunc bitcast
pack4x8snorm pack4x8unorm pack2x16snorm pack2x16unorm pack2x16float unpack4x8snorm unpack4x8unorm
unpack2x16snorm unpack2x16unorm unpack2x16float storageBarrier workgroupBarrier textureBarrier
workgroupUniformLoad atomicLoad atomicStore atomicAdd atomicSub atomicMax atomicMin atomicAnd
atomicOr atomicXor atomicExchange atomicCompareExchangeWeak subgroupAdd subgroupMax subgroupMin
subgroupShuffle subgroupShuffleXor subgroupBroadcast subgroupBallot subgroupElect main
""".split())

MAX_GROUPS = 65535  # WebGPU's default maxComputeWorkgroupsPerDimension


def wgsl_name(name: str, taken: set[str]) -> str:
    """A WGSL identifier for a DSL name that clashes with nothing the printer emits."""
    if name == "tt" or name.startswith(("tt_", "_")):
        name = "v" + name  # tt/tt_ are the printer's; WGSL forbids a leading `__` and a lone `_`
    while name in WGSL_RESERVED or name in taken:
        name += "_"
    return name


@dataclass(frozen=True)
class UniformField:
    """One 4-byte field of the uniform block: a scalar parameter, a buffer's element offset, or a
    dimension of the logical grid. `index` is the parameter's position among the kernel's runtime
    parameters (the dimension for "grid"); `wgsl` is i32, u32 or f32."""

    name: str
    kind: str  # "scalar" | "offset" | "grid"
    index: int
    wgsl: str


@dataclass
class WGSLGenerated(Generated):
    """Generated WGSL and how each buffer parameter is bound ("read" or "read_write")."""

    access: list[str] = field(default_factory=list)


def uniform_fields(params: list[ParamABI], names: list[str]) -> list[UniformField]:
    """The uniform block's layout, shared by the printer and the runtime that fills it: every
    scalar parameter (packed as its ABI type), then every buffer's element offset, then the grid."""
    taken = {n for p, n in zip(params, names) if p.kind == "scalar"}
    out = []
    for i, (p, n) in enumerate(zip(params, names)):
        if p.kind == "scalar":
            out.append(UniformField(n, "scalar", i, _value_type(p.abi)))
    for i, (p, n) in enumerate(zip(params, names)):
        if p.kind == "buffer":
            out.append(UniformField(_fresh(f"{n}_off", taken), "offset", i, "i32"))
    for d in range(3):
        out.append(UniformField(_fresh(f"grid_{'xyz'[d]}", taken), "grid", d, "u32"))
    return out


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _value_type(t: T.ScalarType) -> str:
    """The WGSL type holding values of a DSL scalar type."""
    if t.is_bool:
        return "bool"
    if t.is_float:
        return "f32"
    return "i32" if t.is_signed else "u32"


def _wide(t: T.ScalarType) -> bool:
    return t.bits == 64 and not t.is_bool


_F16_BITS = """fn tt_f16_bits(f: f32) -> u32 {
    // round to nearest even, as IEEE conversion does; WGSL leaves pack2x16float's rounding open
    let u = bitcast<u32>(f);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    if (a > 0x7f800000u) { return sign | 0x7e00u | ((a >> 13u) & 0x3ffu); }  // NaN
    if (a >= 0x477ff000u) { return sign | 0x7c00u; }  // 65520 and above round to inf
    if (a >= 0x38800000u) {  // normal: drop 13 mantissa bits, rebias the exponent by 112
        return sign | (((a + 0xfffu + ((a >> 13u) & 1u)) >> 13u) - 0x1c000u);
    }
    return sign | u32(round(bitcast<f32>(a) * 16777216.0f));  // subnormal: units of 2^-24
}"""

# erf: a Taylor series in x^2 for |x| < 1; above, erfc(x) = exp(-x^2) * P(1 / (1 + x/2)) with P of
# degree 6 least-squares fitted to erfc(x) exp(x^2) on [0.9, 4] (relative error ~2e-7); 1 above 4.
_ERF_TAYLOR = ", ".join(repr(float(np.float32(c))) + "f" for c in (
    1.1283791670955126, -0.37612638903183754, 0.11283791670955126, -0.026866170645131252,
    0.005223977625442188, -0.0008548327023450852, 0.00012055332981789664,
    -1.4925650358406251e-05, 1.6462114365889246e-06, -1.6365844691234924e-07))
# sin/cos: pi/2 as 1.5703125 + 4.8375e-4 + 7.55e-8 (8, 11 and 24 significant bits: k * part is
# exact for |k| < 2^13), and polynomials in z = r^2 least-squares fitted on |r| <= pi/4
# (relative error ~1e-7): sin r = r + r z S(z), cos r = 1 - z/2 + z^2 C(z).
_PIO2 = (1.5703125, 0.0004837512969970703, 7.549790126404332e-08)
_SIN_FIT = (-0.16666655242443085, 0.008332186378538609, -0.000195181361050345)
_COS_FIT = (0.04166664555668831, -0.0013887312961742282, 2.4432831196463667e-05)
_TANH_TAYLOR = tuple(float(np.float32(c)) for c in (
    1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075,
    -929569 / 638512875))
_ERFC_FIT = (0.0006796139059588313, 0.2726859450340271, 0.3357405662536621, 0.08766040205955505,
             0.42489996552467346, -0.07456614077091217, -0.04772192984819412)


def _horner(coeffs, var: str) -> str:
    text = repr(coeffs[-1]) + "f"
    for c in coeffs[-2::-1]:
        text = f"fma({text}, {var}, {c!r}f)"
    return text


_GENERIC_HELPERS = {
    "tt_f16_bits": _F16_BITS,
    "tt_round_f16": "fn tt_round_f16(f: f32) -> f32 { return unpack2x16float(tt_f16_bits(f)).x; }",
    "tt_bf16_bits": """fn tt_bf16_bits(f: f32) -> u32 {
    let u = bitcast<u32>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { return (u >> 16u) | 0x40u; }  // NaN stays NaN
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;  // round to nearest even
}""",
    "tt_round_bf16": ("fn tt_round_bf16(f: f32) -> f32 "
                      "{ return bitcast<f32>(tt_bf16_bits(f) << 16u); }"),
    "tt_special": ("// inf and NaN: WGSL has no literals for them, and constant expressions must be "
                   "finite\nvar<private> tt_special: vec2<u32> = vec2<u32>(0x7f800000u, 0x7fc00000u);"),
    "tt_erf": f"""fn tt_erf(x: f32) -> f32 {{
    let a = abs(x);
    if (a < 1.0f) {{
        let c = array<f32, 10>({_ERF_TAYLOR});
        let z = x * x;
        var s = c[9];
        for (var k = 8; k >= 0; k--) {{ s = fma(s, z, c[k]); }}
        return x * s;
    }}
    let t = 1.0f / (1.0f + 0.5f * a);
    let r = 1.0f - exp(-a * a) * {_horner(_ERFC_FIT, "t")};
    return select(sign(x) * r, sign(x), a >= 4.0f);
}}""",
    "tt_pow": """fn tt_pow(x: f32, y: f32) -> f32 {
    // C's powf: WGSL's pow is exp2(y * log2(x)), undefined for x < 0 and NaN for 0^0
    if (y == 0.0f || x == 1.0f) { return 1.0f; }
    let r = pow(abs(x), y);
    if (!(x < 0.0f)) { return r; }
    if (floor(y) != y) { return bitcast<f32>(tt_special.y); }  // negative base, fractional power
    return select(r, -r, floor(y * 0.5f) != y * 0.5f);  // odd powers keep the sign
}""",
    "tt_sincos": f"""fn tt_sincos(x: f32) -> vec2<f32> {{
    // (sin x, cos x) to a few ulp: drivers may compute WGSL's sin/cos to only ~2^-11 absolute
    // and without range reduction. x = k pi/2 + r, pi/2 split in parts with exact products k*P.
    let k = round(x * 0.63661977f);
    let r = ((x - k * {_PIO2[0]!r}f) - k * {_PIO2[1]!r}f) - k * {_PIO2[2]!r}f;
    let z = r * r;
    let s = r + r * z * {_horner(_SIN_FIT, "z")};
    let c = 1.0f - 0.5f * z + z * z * {_horner(_COS_FIT, "z")};
    let q = u32(i32(k)) & 3u;  // the quadrant
    let sn = select(s, c, (q & 1u) == 1u);
    let cs = select(c, s, (q & 1u) == 1u);
    return vec2<f32>(select(sn, -sn, (q & 2u) != 0u), select(cs, -cs, ((q + 1u) & 2u) != 0u));
}}""",
    "tt_sin": "fn tt_sin(x: f32) -> f32 { return tt_sincos(x).x; }",
    "tt_cos": "fn tt_cos(x: f32) -> f32 { return tt_sincos(x).y; }",
    "tt_rem": ("// naga's OpSRem is undefined for negative operands in Vulkan (NVIDIA returns garbage)"
               "\nfn tt_rem(a: i32, b: i32) -> i32 { return a - (a / b) * b; }"),
    "tt_tanh": f"""fn tt_tanh(x: f32) -> f32 {{
    // drivers compute tanh from exponentials, inaccurate near 0 and NaN where they overflow
    let a = abs(x);
    if (a < 0.4f) {{
        let z = x * x;
        return x * {_horner(_TANH_TAYLOR, "z")};
    }}
    let r = 1.0f - 2.0f / (exp(2.0f * a) + 1.0f);
    return select(r, -r, x < 0.0f);
}}""",
}
_HELPER_DEPS = {"tt_round_f16": ("tt_f16_bits",), "tt_round_bf16": ("tt_bf16_bits",),
                "tt_pow": ("tt_special",), "tt_sin": ("tt_sincos",), "tt_cos": ("tt_sincos",)}

_MATH = {"exp": "exp", "exp2": "exp2", "log": "log", "log2": "log2", "sqrt": "sqrt",
         "rsqrt": "inverseSqrt", "sin": "tt_sin", "cos": "tt_cos", "floor": "floor", "ceil": "ceil",
         "abs": "abs", "min": "min", "max": "max", "fma": "fma", "tanh": "tt_tanh", "erf": "tt_erf",
         "pow": "tt_pow"}
_SUBGROUP_REDUCE = {"subgroup_sum": "subgroupAdd", "subgroup_max": "subgroupMax",
                    "subgroup_min": "subgroupMin"}


@dataclass
class _Mem:
    """How one buffer or array variable is declared and accessed."""

    var: ir.Var
    name: str
    packed: bool  # 8/16-bit or bool buffer elements packed into u32 words
    atomic: bool  # array<atomic<...>>: every access is atomic
    vec: int = 1  # 32-bit words per array element: 2 or 4 where vector loads can be 64/128-bit
    readonly: bool = False  # a buffer the kernel never writes: `var<storage, read>`

    @property
    def elem(self) -> T.ScalarType:
        return self.var.type.elem

    @property
    def is_buffer(self) -> bool:
        return isinstance(self.var.type, T.BufferType)

    @property
    def bits(self) -> int:
        return max(self.elem.bits, 8) if self.packed else 32

    @property
    def word(self) -> str:
        """The WGSL element type of the array."""
        if self.packed:
            t = "atomic<u32>" if self.atomic else "u32"
        else:
            t = _value_type(self.elem)
            if self.atomic:
                t = f"atomic<{'u32' if t == 'f32' else t}>"
        return t if self.vec == 1 else f"vec{self.vec}<{t}>"


class WGSLPrinter(TextPrinter):
    """Prints one kernel as a WGSL module with a single compute entry point."""

    def __init__(self, kernel: ir.Kernel, caps: Caps):
        super().__init__()
        self.k = lower_lazy(kernel)
        self.caps = caps
        self.helpers: dict[str, str] = {}  # name -> definition, in first-use order
        self.builtins: set[str] = set()  # entry-point builtins the body uses
        taken: set[str] = set()
        self.entry = wgsl_name(kernel.name, taken)
        taken.add(self.entry)
        self.names: dict[int, str] = {}
        for v in self.k.params + self.k.locals:
            self.names[id(v)] = n = wgsl_name(v.name, taken)
            taken.add(n)
        self.assigned = {s.var for s in ir.walk_body(self.k.body) if isinstance(s, ir.Assign)}
        _check_types(self.k)
        self.mems = self._memories()
        try:  # shared-array loads broadcast with workgroupUniformLoad (a barrier) only if needed
            self.uniformity = _Uniformity(self.k, self.mems, broadcast=False)
            self.uniformity.check()
        except CompileError:
            self.uniformity = _Uniformity(self.k, self.mems, broadcast=True)
            self.uniformity.check()

    def name(self, v: ir.Var) -> str:
        return self.names[id(v)]

    # --- analysis -------------------------------------------------------------------------------

    def _memories(self) -> dict[int, _Mem]:
        stored, atomic, read = set(), set(), set()
        for n in ir.walk_body(self.k.body):
            if isinstance(n, (ir.Store, ir.VecStore)):
                stored.add(id(n.var))
            elif isinstance(n, ir.Atomic):
                atomic.add(id(n.var))
            elif isinstance(n, (ir.Load, ir.VecLoad)):
                read.add(id(n.var))
        lanes: dict[int, int] = {}  # widest vector access of each buffer, in 32-bit words
        for n in ir.walk_body(self.k.body):
            if isinstance(n, (ir.VecLoad, ir.VecStore)):
                n_lanes = n.lanes if isinstance(n, ir.VecLoad) else n.value.type.lanes
                words = n_lanes * max(n.var.type.elem.bits, 8) // 32
                lanes[id(n.var)] = max(lanes.get(id(n.var), 1), words)
        out = {}
        for v in self.k.params + self.k.locals:
            if isinstance(v.type, T.BufferType):
                packed = v.type.elem.bits < 32
                is_atomic = id(v) in atomic or (packed and id(v) in stored)
                vec = 1 if is_atomic else lanes.get(id(v), 1)
                readonly = id(v) not in stored and id(v) not in atomic
                out[id(v)] = _Mem(v, self.name(v), packed, is_atomic, vec, readonly)
            elif isinstance(v.type, T.ArrayType):
                out[id(v)] = _Mem(v, self.name(v), False, id(v) in atomic)
        # A barrier orders buffer memory only where a buffer is both written and read.
        written = stored | atomic
        self.storage_barrier = any(id(v) in written and id(v) in (read | atomic)
                                   for v in self.k.params if isinstance(v.type, T.BufferType))
        return out

    # --- module ---------------------------------------------------------------------------------

    def render(self) -> Generated:
        params = self.param_abi()
        names = [self.name(v) for v in self.k.params]
        self.fields = uniform_fields(params, names)
        self.field_of = {(f.kind, f.index): f.name for f in self.fields}
        self.emit_entry(params)
        head = self.module_head(params)
        offset = len(head)
        line_map = {n + offset: loc for n, loc in self.line_map.items()}
        access = ["read" if self.mems[id(v)].readonly else "read_write" for v in self.k.params
                  if isinstance(v.type, T.BufferType)]
        return WGSLGenerated("\n".join(head + self.lines) + "\n", self.entry, params, line_map,
                             access)

    def param_abi(self) -> list[ParamABI]:
        out = []
        for v in self.k.params:
            if isinstance(v.type, T.BufferType):
                out.append(ParamABI(v.name, "buffer", v.type.elem, v.type.elem))
            else:
                abi = T.i32 if v.type.is_bool else T.arith_type(v.type)
                out.append(ParamABI(v.name, "scalar", v.type, abi))
        return out

    def module_head(self, params: list[ParamABI]) -> list[str]:
        out = [f"// {self.entry}: generated by tattletale from "
               f"{self.k.source_file.rsplit('/', 1)[-1] or 'a kernel'}"]
        if self.caps.native_subgroups and "subgroup" in self.k.features:
            out += ["enable subgroups;", "diagnostic(off, subgroup_uniformity);"]
        out += ["", "struct Args {"]
        out += [f"    {f.name}: {f.wgsl}," for f in self.fields]
        out += ["}", "@group(1) @binding(0) var<uniform> tt: Args;"]
        binding = 0
        for v in self.k.params:
            if isinstance(v.type, T.BufferType):
                m = self.mems[id(v)]
                access = "read" if m.readonly else "read_write"
                out.append(f"@group(0) @binding({binding}) var<storage, {access}> {m.name}: "
                           f"array<{m.word}>;")
                binding += 1
        for v in self.k.locals:
            if isinstance(v.type, T.ArrayType) and v.type.space == "shared":
                m = self.mems[id(v)]
                out.append(f"var<workgroup> {m.name}: array<{m.word}, {v.type.size}>;")
        out += [f"override tt_block_{d}: u32;" for d in "xyz"]
        for h in self.helpers.values():
            out += ["", *h.splitlines()]
        return out + [""]

    def need(self, helper: str) -> str:
        """Register a generic helper (and what it uses); returns its name."""
        for dep in _HELPER_DEPS.get(helper, ()):
            self.need(dep)
        self.helpers.setdefault(helper, _GENERIC_HELPERS[helper])
        return helper

    def define(self, name: str, text: str) -> str:
        self.helpers.setdefault(name, text)
        return name

    # --- entry point ----------------------------------------------------------------------------

    def emit_entry(self, params: list[ParamABI]) -> None:
        body_start = len(self.lines)
        for v in self.k.locals:
            t = v.type
            if isinstance(t, T.ArrayType) and t.space == "private":
                self.line(f"var {self.name(v)}: array<{self.mems[id(v)].word}, {t.size}>;", 1)
            elif not isinstance(t, T.ArrayType):
                self.line(f"var {self.name(v)}: {self.vtype(t)};", 1)
        self.block(self.k.body, 1)
        body = self.lines[body_start:]
        del self.lines[body_start:]
        shift = len(self.lines)
        prologue = self.prologue(params)
        self.line_map = {n + len(prologue) - shift: loc for n, loc in self.line_map.items()}
        self.lines += prologue + body + ["}"]

    def prologue(self, params: list[ParamABI]) -> list[str]:
        f = self.field_of
        args = ["@builtin(local_invocation_index) tt_lidx: u32",
                "@builtin(workgroup_id) tt_wid: vec3<u32>",
                "@builtin(num_workgroups) tt_nwg: vec3<u32>"]
        extra = {"tt_lane": "@builtin(subgroup_invocation_id) tt_lane: u32",
                 "tt_sgid": "@builtin(subgroup_id) tt_sgid: u32"}
        args += [extra[b] for b in sorted(self.builtins)]
        gx, gy = f["grid", 0], f["grid", 1]
        # The workgroup is one-dimensional (wgpu rejects subgroup operations in 2-D and 3-D
        # workgroups whose x size is not a multiple of the largest subgroup size): the block's
        # 3-D local id is unfolded from the linear index, in which subgroups are contiguous.
        out = ["@compute @workgroup_size(tt_block_x * tt_block_y * tt_block_z)",
               f"fn {self.entry}({', '.join(args)}) {{",
               "    let tt_lid = vec3<u32>(tt_lidx % tt_block_x, (tt_lidx / tt_block_x) % tt_block_y,"
               " tt_lidx / (tt_block_x * tt_block_y));",
               "    var tt_group = tt_wid;",
               f"    if (tt_nwg.x != tt.{gx}) {{  // wide grids run folded: "
               f"({MAX_GROUPS}, ceil(x / {MAX_GROUPS}), y * z)",
               f"        tt_group = vec3<u32>(tt_wid.x + {MAX_GROUPS}u * tt_wid.y, "
               f"tt_wid.z % tt.{gy}, tt_wid.z / tt.{gy});",
               f"        if (tt_group.x >= tt.{gx}) {{ return; }}",
               "    }",
               "    let tt_gid = vec3<i32>(tt_group * vec3<u32>(tt_block_x, tt_block_y, tt_block_z)"
               " + tt_lid);"]
        for i, (p, v) in enumerate(zip(params, self.k.params)):
            if p.kind != "scalar":
                continue
            x = f"tt.{f['scalar', i]}"
            t = v.type
            if t.is_bool:
                x = f"({x} != 0i)"
            elif t.is_float and t.bits == 16:
                x = f"{self.need(f'tt_round_{t.name}')}({x})"
            elif t.bits < 32:  # packed as i32/u32 by the host: wrap like a C argument would
                x = self.convert(x, p.abi, t)
            out.append(f"    {'var' if v in self.assigned else 'let'} {self.name(v)} = {x};")
        return out

    def vtype(self, t: T.Type) -> str:
        if isinstance(t, T.VectorType):
            return f"vec{t.lanes}<{_value_type(t.elem)}>"
        return _value_type(t)

    # --- statements -----------------------------------------------------------------------------

    def simple_stmt(self, s: ir.Stmt, depth: int) -> None:
        if isinstance(s, ir.Assign):
            self.line(f"{self.name(s.var)} = {self.expr(s.value)};", depth)
        elif isinstance(s, ir.Store):
            m = self.mems[id(s.var)]
            self.line(self.store(m, self.index(s.index), self.expr(s.value)) + ";", depth)
        elif isinstance(s, ir.VecStore):
            m, n = self.mems[id(s.var)], s.value.type.lanes
            fn = self.vec_helper(m, n, store=True)
            self.line(f"{fn}({self.index(s.index)}, {self.expr(s.value)});", depth)
        elif isinstance(s, ir.Barrier):
            if self.storage_barrier:
                self.line("storageBarrier();", depth)
            self.line("workgroupBarrier();", depth)
        elif isinstance(s, ir.ExprStmt):
            self.line(f"_ = {self.expr(s.expr)};", depth)
        else:
            raise TypeError(f"cannot print {type(s).__name__}")

    def for_test(self, s: ir.For, v: str, stop: str, step: str) -> str:
        zero = "0i" if s.step.type.is_signed else "0u"
        # parenthesized: `a < b, c > d` would parse as a template argument list
        return f"select(({v} > {stop}), ({v} < {stop}), ({step} > {zero}))"

    # --- memory ---------------------------------------------------------------------------------

    def index(self, e: ir.Expr) -> str:
        """An element index as i32 text."""
        text = self.expr(e)
        return text if e.type.is_signed else f"i32({text})"

    def offset(self, m: _Mem) -> str:
        """The uniform field holding a buffer's element offset."""
        return f"tt.{self.field_of['offset', self.k.params.index(m.var)]}"

    def element(self, m: _Mem, index: str) -> str:
        """The array element at DSL element `index` of an array of one element per entry."""
        if m.is_buffer:
            off = self.offset(m)
            index = off if index == "0i" else f"{off} + {index}"
        return f"{m.name}[{index}]"

    @staticmethod
    def word(m: _Mem, w: str) -> str:
        """32-bit word `w` (u32 text) of a buffer, a component where entries are vectors."""
        if m.vec == 1:
            return f"{m.name}[{w}]"
        w = f"({w})" if " " in w else w
        return f"{m.name}[{w} >> {_log2(m.vec)}u][{w} & {m.vec - 1}u]"

    def load(self, m: _Mem, index: str) -> str:
        if m.packed or m.vec > 1:
            return f"{self.scalar_helper(m, store=False)}({index})"
        ref = self.element(m, index)
        if not m.atomic:
            return ref
        return f"bitcast<f32>(atomicLoad(&{ref}))" if m.elem == T.f32 else f"atomicLoad(&{ref})"

    def store(self, m: _Mem, index: str, value: str) -> str:
        if m.packed or m.vec > 1:
            return f"{self.scalar_helper(m, store=True)}({index}, {value})"
        ref = self.element(m, index)
        if not m.atomic:
            return f"{ref} = {value}"
        return f"atomicStore(&{ref}, {f'bitcast<u32>({value})' if m.elem == T.f32 else value})"

    # Helpers name their parameters and locals with a leading underscore, which no kernel name
    # has (see wgsl_name): a local must not shadow the module-scope buffer it accesses.

    def scalar_helper(self, m: _Mem, store: bool) -> str:
        """tt_load_X(i) / tt_store_X(i, v): one element of a packed or vector-typed buffer."""
        name = f"tt_{'store' if store else 'load'}_{m.name}"
        if name in self.helpers:
            return name
        t = _value_type(m.elem)
        sig = f"fn {name}(_i: i32, _v: {t})" if store else f"fn {name}(_i: i32) -> {t}"
        body = [f"let _e = u32({self.offset(m)} + _i);"]
        if not m.packed:
            ref = self.word(m, "_e")
            body.append(f"{ref} = _v;" if store else f"return {ref};")
        else:
            per = 32 // m.bits
            w = self.word(m, f"_e >> {_log2(per)}u")
            shift, mask = f"(_e & {per - 1}u) * {m.bits}u", f"0x{(1 << m.bits) - 1:x}u"
            if store:
                body += ["// flip only this element's changed bits: stores to the word's other "
                         "elements are kept", f"let _p = &{w};", f"let _sh = {shift};",
                         f"let _old = (atomicLoad(_p) >> _sh) & {mask};",
                         f"atomicXor(_p, (_old ^ {self.to_bits(m.elem, '_v')}) << _sh);"]
            else:
                word = f"atomicLoad(&{w})" if m.atomic else w
                body += [f"let _b = ({word} >> ({shift})) & {mask};",
                         f"return {self.from_bits(m.elem, '_b')};"]
        return self.define(name, sig + " {\n" + "".join(f"    {x}\n" for x in body) + "}")

    def vec_helper(self, m: _Mem, lanes: int, store: bool) -> str:
        """tt_vload{n}_X(i) / tt_vstore{n}_X(i, v): elements n*i … n*i+n-1. Where the view's
        offset is a multiple of n (a uniform branch), whole words or vectors move at once."""
        name = f"tt_v{'store' if store else 'load'}{lanes}_{m.name}"
        if name in self.helpers:
            return name
        vt = f"vec{lanes}<{_value_type(m.elem)}>"
        off = self.offset(m)
        fast: list[str] = []
        if not m.packed and lanes == m.vec:  # one entry of the array
            ref = f"{m.name}[({off} >> {_log2(lanes)}u) + _i]"
            fast = [f"{ref} = _v;", "return;"] if store else [f"return {ref};"]
        elif m.packed and lanes * m.bits >= 32:  # whole words
            per, words = 32 // m.bits, lanes * m.bits // 32
            fast = [f"let _w = u32({off} + _b) >> {_log2(per)}u;"]
            refs = [self.word(m, "_w" if j == 0 else f"_w + {j}u") for j in range(words)]
            if store:
                for j, ref in enumerate(refs):
                    lane = ["_v." + "xyzw"[j * per + k] for k in range(per)]
                    bits = " | ".join(f"({self.to_bits(m.elem, x)} << {k * m.bits}u)"
                                      for k, x in enumerate(lane))
                    fast.append(f"atomicStore(&{ref}, {bits});")
                fast.append("return;")
            else:
                if m.atomic:
                    refs = [f"atomicLoad(&{r})" for r in refs]
                fast += [f"let _w{j} = {r};" for j, r in enumerate(refs)]
                fast.append(f"return {vt}({', '.join(self._unpack(m.elem, per, words))});")
        idx = ["_b"] + [f"_b + {k}i" for k in range(1, lanes)]
        body = [f"let _b = {lanes}i * _i;"]
        if fast:
            body += [f"if (({off} & {lanes - 1}i) == 0i) {{", *("    " + x for x in fast), "}"]
        if store:
            sig = f"fn {name}(_i: i32, _v: {vt})"
            body += [f"{self.store(m, x, '_v.' + 'xyzw'[k])};" for k, x in enumerate(idx)]
        else:
            sig = f"fn {name}(_i: i32) -> {vt}"
            body.append(f"return {vt}({', '.join(self.load(m, x) for x in idx)});")
        return self.define(name, sig + " {\n" + "".join(f"    {x}\n" for x in body) + "}")

    def _unpack(self, t: T.ScalarType, per: int, words: int) -> list[str]:
        """The lanes held in words _w0, _w1, … (as constructor arguments)."""
        if t == T.f16:
            return [f"unpack2x16float(_w{j})" for j in range(words)]
        out = []
        masked = t.is_bool or (t.is_int and not t.is_signed)  # the others shift the rest out
        for j in range(words):
            for k in range(per):
                bits = f"_w{j}" if k == 0 else f"(_w{j} >> {k * 32 // per}u)"
                if masked and k < per - 1:
                    bits = f"({bits} & 0x{(1 << (32 // per)) - 1:x}u)"
                out.append(self.from_bits(t, bits))
        return out

    def to_bits(self, t: T.ScalarType, x: str) -> str:
        """The low `t.bits` bits (as u32) of a value of sub-word type `t` held in `x`."""
        if t == T.f16:
            return f"{self.need('tt_f16_bits')}({x})"
        if t == T.bf16:
            return f"{self.need('tt_bf16_bits')}({x})"
        if t.is_bool:
            return f"u32({x})"
        mask = f"0x{(1 << t.bits) - 1:x}u"
        return f"({x} & {mask})" if not t.is_signed else f"(bitcast<u32>({x}) & {mask})"

    def from_bits(self, t: T.ScalarType, b: str) -> str:
        """The value of sub-word type `t` whose bits are the low bits of u32 `b`."""
        if t == T.f16:
            return f"unpack2x16float({b}).x"
        if t == T.bf16:
            return f"bitcast<f32>({b} << 16u)"
        if t.is_bool:
            return f"({b} != 0u)"
        if not t.is_signed:
            return b
        return f"(bitcast<i32>({b} << {32 - t.bits}u) >> {32 - t.bits}u)"

    # --- expressions ----------------------------------------------------------------------------

    def expr(self, e: ir.Expr) -> str:
        return getattr(self, "e_" + type(e).__name__)(e)

    def e_Const(self, e: ir.Const) -> str:
        t, v = e.type, e.value
        if t.is_bool:
            return "true" if v else "false"
        if t.is_float:
            with np.errstate(over="ignore"):
                f = float(np.float32(v))
            if f != f or f in (float("inf"), float("-inf")):
                special = f"bitcast<f32>({self.need('tt_special')}.{'y' if f != f else 'x'})"
                return f"(-{special})" if f < 0 else special
            text = repr(float(v))
            if "e" not in text and "." not in text:
                text += ".0"
            return f"({text}f)" if text.startswith("-") else f"{text}f"
        suffix = "i" if t.is_signed else "u"
        if v == -(1 << 31):
            return "(-2147483647i - 1i)"
        return f"({v}{suffix})" if v < 0 else f"{v}{suffix}"

    def e_Ref(self, e: ir.Ref) -> str:
        return self.name(e.var)

    def e_Binary(self, e: ir.Binary) -> str:
        op, a, b = e.op, self.expr(e.lhs), self.expr(e.rhs)
        lt = e.lhs.type
        if op in ("and", "or"):
            return f"({a} {'&&' if op == 'and' else '||'} {b})"
        if op in ("<<", ">>"):
            if isinstance(e.rhs, ir.Const):
                b = f"{e.rhs.value}u"
            elif e.rhs.type.is_signed:
                b = f"u32({b})"
        elif lt.is_bool and op == "^":
            op = "!="
        elif lt.is_bool and op in ("<", "<=", ">", ">="):
            a, b = f"i32({a})", f"i32({b})"
        elif op == "%" and lt.is_signed:
            return f"{self.need('tt_rem')}({a}, {b})"
        return f"({a} {op} {b})"

    def e_Unary(self, e: ir.Unary) -> str:
        x, t = self.expr(e.operand), e.operand.type
        if e.op == "-" and t.is_int and not t.is_signed:
            return f"(0u - {x})"  # WGSL negates signed values only
        return f"({'!' if e.op == 'not' else e.op}{x})"

    def e_Cast(self, e: ir.Cast) -> str:
        return self.convert(self.expr(e.operand), e.operand.type, e.to)

    def convert(self, x: str, src: T.ScalarType, to: T.ScalarType) -> str:
        """Value conversion of WGSL text `x` from DSL type `src` to `to`."""
        if to == src:
            return x
        if to.is_float:
            f = x if src.is_float else f"f32({x})"
            return f if to.bits == 32 else f"{self.need(f'tt_round_{to.name}')}({f})"
        if to.is_bool:
            return f"bool({x})"
        base = _value_type(to)
        v = x if _value_type(src) == base else f"{base}({x})"
        if to.bits >= 32 or src.is_bool or _fits(src, to):
            return v
        if to.is_signed:
            return f"(({v} << {32 - to.bits}u) >> {32 - to.bits}u)"
        return f"({v} & 0x{(1 << to.bits) - 1:x}u)"

    def e_Bitcast(self, e: ir.Bitcast) -> str:
        src, to, x = e.operand.type, e.to, self.expr(e.operand)
        if src.bits == 32:
            return f"bitcast<{_value_type(to)}>({x})"
        return self.from_bits(to, self.to_bits(src, x))

    def e_Select(self, e: ir.Select) -> str:
        return f"select({self.expr(e.if_false)}, {self.expr(e.if_true)}, {self.cond(e.cond)})"

    def e_Load(self, e: ir.Load) -> str:
        m = self.mems[id(e.var)]
        if self.uniformity.broadcast.get(id(e)):  # the same value for all: a uniform one
            return f"workgroupUniformLoad(&{self.element(m, self.index(e.index))})"
        return self.load(m, self.index(e.index))

    def e_VecLoad(self, e: ir.VecLoad) -> str:
        fn = self.vec_helper(self.mems[id(e.var)], e.lanes, store=False)
        return f"{fn}({self.index(e.index)})"

    def e_Lane(self, e: ir.Lane) -> str:
        return f"{self.expr(e.vec)}.{'xyzw'[e.lane]}"

    def e_MakeVec(self, e: ir.MakeVec) -> str:
        return f"{self.vtype(e.type)}({', '.join(self.expr(x) for x in e.elems)})"

    def e_Call(self, e: ir.Call) -> str:
        if e.dim is not None:
            return self.builtin_id(e.name, "xyz"[e.dim], e.dim)
        if e.name.startswith(("subgroup_", "shuffle")):
            return self.subgroup(e)
        args = [self.expr(a) for a in e.args]
        t = e.type
        if e.name == "mul_rn":
            return f"({args[0]} * {args[1]})"
        if e.name == "fmod":
            return f"({args[0]} % {args[1]})"
        if e.name == "abs" and t.is_int and not t.is_signed:
            return args[0]
        fn = _MATH[e.name]
        if fn.startswith("tt_"):
            self.need(fn)
        return f"{fn}({', '.join(args)})"

    def builtin_id(self, name: str, d: str, n: int) -> str:
        if name == "global_id":
            return f"tt_gid.{d}"
        if name == "local_id":
            return f"i32(tt_lid.{d})"
        if name == "group_id":
            return f"i32(tt_group.{d})"
        if name == "local_size":
            return f"i32(tt_block_{d})"
        grid = f"tt.{self.field_of['grid', n]}"
        if name == "num_groups":
            return f"i32({grid})"
        return f"i32({grid} * tt_block_{d})"  # global_size

    def subgroup(self, e: ir.Call) -> str:
        name = e.name
        args = [self.expr(a) for a in e.args]
        if not self.caps.native_subgroups:  # subgroups of one invocation
            if name == "subgroup_local_id":
                return "0i"
            if name == "subgroup_id":
                return "i32(tt_lidx)"
            return args[0]
        if name == "subgroup_local_id":
            self.builtins.add("tt_lane")
            return "i32(tt_lane)"
        if name == "subgroup_id":
            self.builtins.add("tt_sgid")
            return "i32(tt_sgid)"
        if name in _SUBGROUP_REDUCE:
            return f"{_SUBGROUP_REDUCE[name]}({args[0]})"
        lane = e.args[1]
        if name == "subgroup_broadcast" and isinstance(lane, ir.Const):
            return f"subgroupBroadcast({args[0]}, {lane.value}u)"  # the lane must be constant
        fn = "subgroupShuffleXor" if name == "shuffle_xor" else "subgroupShuffle"
        return f"{fn}({args[0]}, u32({args[1]}))"

    def e_Atomic(self, e: ir.Atomic) -> str:
        m = self.mems[id(e.var)]
        index = self.index(e.index)
        args = [self.expr(a) for a in e.args]
        ref = f"&{self.element(m, index)}"
        if e.op == "cas":
            return f"{self.cas_helper(m)}({index}, {args[0]}, {args[1]})"
        if m.elem == T.f32:
            if e.op == "xchg":
                return f"bitcast<f32>(atomicExchange({ref}, bitcast<u32>({args[0]})))"
            return f"{self.float_add_helper(m)}({index}, {args[0]})"
        fn = {"add": "atomicAdd", "min": "atomicMin", "max": "atomicMax",
              "xchg": "atomicExchange"}[e.op]
        return f"{fn}({ref}, {args[0]})"

    def cas_helper(self, m: _Mem) -> str:
        name = f"tt_atomic_cas_{m.name}"
        t = _value_type(m.elem)
        ref = self.element(m, "_i")
        return self.define(name, f"""fn {name}(_i: i32, _compare: {t}, _value: {t}) -> {t} {{
    // the DSL's compare-and-swap is strong: retry the weak one after a spurious failure
    var _r = atomicCompareExchangeWeak(&{ref}, _compare, _value);
    while (!_r.exchanged && _r.old_value == _compare) {{
        _r = atomicCompareExchangeWeak(&{ref}, _compare, _value);
    }}
    return _r.old_value;
}}""")

    def float_add_helper(self, m: _Mem) -> str:
        name = f"tt_atomic_add_{m.name}"
        return self.define(name, f"""fn {name}(_i: i32, _v: f32) -> f32 {{
    let _p = &{self.element(m, "_i")};
    var _old = atomicLoad(_p);
    loop {{
        let _r = atomicCompareExchangeWeak(_p, _old, bitcast<u32>(bitcast<f32>(_old) + _v));
        if (_r.exchanged) {{ break; }}
        _old = _r.old_value;
    }}
    return bitcast<f32>(_old);
}}""")


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _fits(src: T.ScalarType, to: T.ScalarType) -> bool:
    """Whether every value of integer type `src` is a value of integer type `to`."""
    if not src.is_int:
        return False
    if src.is_signed == to.is_signed:
        return src.bits <= to.bits
    return not src.is_signed and src.bits < to.bits



# --- checks -------------------------------------------------------------------------------------


def _error(msg: str, loc: ir.Loc | None, kernel: ir.Kernel) -> CompileError:
    if loc is None:
        return CompileError(msg, kernel.source_file or "<kernel>")
    return CompileError(msg, loc.file, loc.line, loc.col, loc.text)


def _unsupported(t: T.ScalarType, loc: ir.Loc | None, kernel: ir.Kernel,
                 what: str = "") -> CompileError:
    """The error for a type WGSL lacks; `unsupported_feature` lets test suites skip on it."""
    kind = "64-bit floats (f64)" if t.is_float else f"64-bit integers ({t.name})"
    err = _error(f"the webgpu target has no {kind}: WGSL has no 64-bit types{what}", loc, kernel)
    err.unsupported_feature = t.name
    return err


def _check_types(k: ir.Kernel) -> None:
    """64-bit types have no WGSL equivalent: fail at their first use, with the reason."""
    def bad(t) -> T.ScalarType | None:
        t = getattr(t, "elem", t)
        return t if isinstance(t, T.ScalarType) and _wide(t) else None

    for n in ir.walk_body(k.body):
        for t in (getattr(n, "type", None), getattr(getattr(n, "var", None), "type", None)):
            if t is not None and bad(t):
                raise _unsupported(bad(t), n.loc, k)
    for v in k.params + k.locals:
        if bad(v.type):
            raise _unsupported(bad(v.type), None, k, f" (parameter or variable '{v.name}')")


class _Uniformity:
    """WGSL's uniformity rule for barriers: every invocation of a workgroup must reach each
    `workgroupBarrier` together, which Tint proves with a conservative analysis and rejects
    otherwise. This mirrors it on the IR so the error points at the kernel's Python line.

    Uniform values: constants, scalar parameters (uniform buffer), group ids, grid and block sizes,
    variables last assigned uniform values in uniform control flow (flow-sensitively), and loads
    at uniform indices from read-only buffers and (in uniform control flow) shared arrays.
    Non-uniform: thread ids, subgroup values, loads from buffers the kernel writes, atomics.
    Control flow becomes non-uniform inside an `if` or loop on a non-uniform condition, in a loop
    after a non-uniform `break`/`continue` (for all its iterations), and everywhere after a
    `return` in non-uniform control flow. An `if` reconverges after it; so does a loop.
    """

    _VARYING = {"global_id", "local_id", "subgroup_local_id", "subgroup_id", "shuffle",
                "shuffle_xor", "subgroup_broadcast", "subgroup_sum", "subgroup_max", "subgroup_min"}

    def __init__(self, kernel: ir.Kernel, mems: dict[int, _Mem], broadcast: bool):
        self.k = kernel
        self.mems = mems
        self.allow_broadcast = broadcast
        self.returned: str | None = None  # why: a return happened in non-uniform control flow
        self.loops: list[list] = []  # per enclosing loop: [why a break/continue was non-uniform]
        # With `broadcast`, shared-array loads at a uniform index in uniform control flow, by id:
        # printed as workgroupUniformLoad, whose result is uniform (the last analysis decides).
        self.broadcast: dict[int, bool] = {}

    def check(self) -> None:
        self.block(self.k.body, None, frozenset())

    def why(self, e: ir.Expr, varying: frozenset, cf: str | None) -> str | None:
        """Why `e` may differ between invocations of a workgroup (None: it is uniform).

        A load is uniform at a uniform index from a read-only buffer (as WGSL's `var<storage,
        read>`), from a private array holding uniform values, or from a shared array in uniform
        control flow (through workgroupUniformLoad)."""
        reason = None
        for n in ir.walk(e):
            r = None
            if isinstance(n, ir.Ref) and n.var in varying:
                r = f"'{n.var.name}', which holds a per-thread value"
            elif isinstance(n, (ir.Load, ir.VecLoad)):
                m = self.mems.get(id(n.var))
                if n.var.kind == "private":
                    r = f"'{n.var.name}', which holds per-thread values" if n.var in varying else None
                elif n.var.kind == "shared" and not m.atomic:
                    ok = self.allow_broadcast and cf is None and self.why(n.index, varying,
                                                                          cf) is None
                    self.broadcast[id(n)] = ok
                    r = None if ok else f"a load from the shared array '{n.var.name}'"
                elif not (m.is_buffer and m.readonly):
                    r = f"a load from '{n.var.name}', which the kernel also writes"
            elif isinstance(n, ir.Atomic):
                r = "an atomic operation"
            elif isinstance(n, ir.Call) and n.name in self._VARYING:
                r = f"tt.{n.name}()"
            reason = reason or r
        return reason

    @staticmethod
    def _cause(loc: ir.Loc | None, reason: str, what: str) -> str:
        where = f" at {loc.file.rsplit('/', 1)[-1]}:{loc.line} (`{loc.text.strip()}`)" if loc else ""
        return f"the {what}{where} depends on {reason}"

    def block(self, body: list[ir.Stmt], cf: str | None, varying: frozenset) -> frozenset:
        """Analyze `body` entered with control flow `cf` (None: uniform, else why not); returns
        the set of variables holding non-uniform values after it."""
        for s in body:
            varying = self.stmt(s, cf or self.returned, varying)
        return varying

    def stmt(self, s: ir.Stmt, cf: str | None, varying: frozenset) -> frozenset:
        if isinstance(s, ir.Assign):
            return varying | {s.var} if cf or self.why(s.value, varying, cf) else varying - {s.var}
        if isinstance(s, ir.Store):
            if s.var.kind == "private" and (cf or self.why(s.index, varying, cf) or
                                            self.why(s.value, varying, cf)):
                return varying | {s.var}
            return varying
        if isinstance(s, ir.Barrier):
            if cf:
                raise _error(
                    "tt.barrier() is reached in non-uniform control flow, which WGSL rejects: "
                    f"all threads of a workgroup must reach a barrier together, but {cf}. Move "
                    "the barrier out of that branch or loop, or make its condition depend only "
                    "on parameters, constants, group ids, sizes and uniform loop counters",
                    s.loc, self.k)
            return varying
        if isinstance(s, ir.Return):
            if cf and not self.returned:
                self.returned = f"{cf}, and a thread may have returned there"
            return varying
        if isinstance(s, (ir.Break, ir.Continue)):
            if cf and self.loops and not self.loops[-1]:
                self.loops[-1].append(f"{cf}, and a thread may have left the loop there")
            return varying
        if isinstance(s, ir.If):
            reason = self.why(s.cond, varying, cf)
            inner = cf or (self._cause(s.loc, reason, "condition") if reason else None)
            before = self.returned
            a = self.block(s.then, inner, varying)
            after_then, self.returned = self.returned, before
            b = self.block(s.orelse, inner, varying)
            self.returned = self.returned or after_then
            return a | b
        if isinstance(s, (ir.For, ir.While)):
            return self.loop(s, cf, varying)
        return varying

    def loop(self, s: ir.For | ir.While, cf: str | None, varying: frozenset) -> frozenset:
        """Iterate to a fixed point: what the body makes non-uniform flows into later iterations."""
        is_for = isinstance(s, ir.For)
        head = varying
        if is_for:  # the counter starts as `start`
            head = head | {s.var} if cf or self.why(s.start, varying, cf) else head - {s.var}
        tainted = None
        while True:
            bounds = [s.stop, s.step] if is_for else [s.cond]
            reason = next(filter(None, (self.why(b, head, cf) for b in bounds)), None)
            if is_for and s.var in head and not reason:
                reason = f"'{s.var.name}', which holds a per-thread value"
            inner = cf or self.returned or tainted or (
                self._cause(s.loc, reason, "loop") if reason else None)
            if is_for and inner:
                head = head | {s.var}
            returned = self.returned
            self.loops.append([])
            out = self.block(s.body, inner, head)
            exits = self.loops.pop()
            changed = not out <= head or self.returned != returned
            if exits and not tainted:
                tainted, changed = exits[0], True
            if not changed:
                return head
            head = head | out


def render(kernel: ir.Kernel, caps: Caps) -> WGSLGenerated:
    return WGSLPrinter(kernel, caps).render()


DEFAULT_CAPS = Caps("webgpu", subgroup_size=32, native_subgroups=True, fp16=False)
