"""IR → SPIR-V binary for Vulkan compute, emitted directly (no GLSL compiler in between).

Design (the whys):

- **Registers** follow the C-family printers: 16-bit floats are carried in f32 (already rounded),
  sub-word integers in 32-bit integers (sign- or zero-extended, re-wrapped after every cast), bools
  as OpTypeBool. So arithmetic needs no Int8/Int16/Float16 capability; only memory does.
- **Buffers** are 64-bit device addresses in push constants (buffer device address): a launch
  needs no descriptor set, and a tensor view is just an address. Without BDA every buffer is a
  descriptor-bound array of u32 words plus a byte offset in push constants, and each element type
  is assembled from words. 8/16-bit elements use typed memory where the device has 8/16-bit
  storage, else the same word path (stores then merge with atomic and/or, as neighbours may be
  written concurrently).
- **Control flow** is structured: if → OpSelectionMerge, loops → OpLoopMerge with a dedicated
  check block and continue block, break/continue/return branch to the loop's merge, its continue
  target, or OpReturn. `and`/`or` and lazy selects whose unchosen side could fault (loads,
  atomics, integer division, subgroup operations) become selection constructs with an OpPhi.
- **Locals** are Function-storage variables in the entry block; parameters, builtins and base
  pointers are loaded once in the entry block (the "preamble") and so dominate every use.
- **Rounding**: a Cast to f16/bf16 rounds with integer arithmetic (drivers fold OpFConvert pairs);
  a store to f16 memory skips that Cast and converts with OpFConvert under the RoundingModeRTE
  execution mode where the device guarantees it; otherwise stored values are already rounded.
- **Math**: GLSL.std.450 where it is accurate; sin, cos and tanh (hardware approximations on
  NVIDIA) and erf, and every 64-bit transcendental (GLSL.std.450 has none), in software.
- **Vector accesses** are one access of the whole vector, aligned to its size as in CUDA: tensor
  views passed to tt.vload/tt.vstore must start at a multiple of it (the runtime checks).
- **Debug info**: OpString/OpLine carry the Python file and line of every statement, so the
  `spirv-dis` listing (`kernel.source("vulkan")`) reads against the kernel's source.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field, fields

import numpy as np

from ..dsl import types as T
from ..dsl.errors import CompileError
from . import ir
from .cfamily import Caps, Generated, ParamABI

# --- SPIR-V numbers (SPIR-V 1.6 unified specification, GLSL.std.450) -----------------------------

OP = {name: int(num) for name, num in (item.split("=") for item in """
Name=5 MemberName=6 String=7 Line=8 Extension=10 ExtInstImport=11 ExtInst=12 MemoryModel=14
EntryPoint=15 ExecutionMode=16 Capability=17 TypeVoid=19 TypeBool=20 TypeInt=21 TypeFloat=22
TypeVector=23 TypeArray=28 TypeRuntimeArray=29 TypeStruct=30 TypePointer=32 TypeFunction=33
ConstantTrue=41 ConstantFalse=42 Constant=43 SpecConstant=50 SpecConstantComposite=51 Function=54
FunctionEnd=56 Variable=59 Load=61 Store=62 AccessChain=65 PtrAccessChain=67 Decorate=71
MemberDecorate=72 CompositeConstruct=80 CompositeExtract=81 ConvertFToU=109 ConvertFToS=110
IsNan=156 ConvertSToF=111 ConvertUToF=112 UConvert=113 SConvert=114 FConvert=115 ConvertUToPtr=120
Bitcast=124 SNegate=126 FNegate=127 IAdd=128 FAdd=129 ISub=130 FSub=131 IMul=132 FMul=133
UDiv=134 SDiv=135 FDiv=136 UMod=137 SRem=138 FRem=140 LogicalEqual=164 LogicalNotEqual=165
LogicalOr=166 LogicalAnd=167 LogicalNot=168 Select=169 IEqual=170 INotEqual=171 UGreaterThan=172
SGreaterThan=173 UGreaterThanEqual=174 SGreaterThanEqual=175 ULessThan=176 SLessThan=177
ULessThanEqual=178 SLessThanEqual=179 FOrdEqual=180 FUnordNotEqual=183 FOrdLessThan=184
FOrdGreaterThan=186 FOrdLessThanEqual=188 FOrdGreaterThanEqual=190 ShiftRightLogical=194
ShiftRightArithmetic=195 ShiftLeftLogical=196 BitwiseOr=197 BitwiseXor=198 BitwiseAnd=199 Not=200
BitFieldSExtract=202 BitFieldUExtract=203 ControlBarrier=224 AtomicLoad=227 AtomicExchange=229
AtomicCompareExchange=230 AtomicIAdd=234 AtomicSMin=236 AtomicUMin=237 AtomicSMax=238
AtomicUMax=239 AtomicAnd=240 AtomicOr=241 Phi=245 LoopMerge=246 SelectionMerge=247 Label=248
Branch=249 BranchConditional=250 Return=253 Unreachable=255 GroupNonUniformShuffle=345
GroupNonUniformShuffleXor=346 GroupNonUniformIAdd=349 GroupNonUniformFAdd=350
GroupNonUniformSMin=353 GroupNonUniformUMin=354 GroupNonUniformFMin=355 GroupNonUniformSMax=356
GroupNonUniformUMax=357 GroupNonUniformFMax=358 AtomicFAddEXT=6035
""".split())}
_OP_NAMES = {v: k for k, v in OP.items()}

CAP = {"Shader": 1, "Float16": 9, "Float64": 10, "Int64": 11, "Int16": 22, "Int8": 39,
       "GroupNonUniform": 61, "GroupNonUniformArithmetic": 63, "GroupNonUniformShuffle": 65,
       "StorageBuffer16BitAccess": 4433, "StorageBuffer8BitAccess": 4448, "RoundingModeRTE": 4467,
       "PhysicalStorageBufferAddresses": 5347, "AtomicFloat32AddEXT": 6033}
GLSL = {"Trunc": 3, "FAbs": 4, "SAbs": 5, "Floor": 8, "Ceil": 9, "Sin": 13, "Cos": 14, "Tanh": 21,
        "Pow": 26, "Exp": 27, "Log": 28, "Exp2": 29, "Log2": 30, "Sqrt": 31, "InverseSqrt": 32,
        "UMin": 38, "SMin": 39, "UMax": 41, "SMax": 42, "Fma": 50, "PackHalf2x16": 58,
        "UnpackHalf2x16": 62, "NMin": 79, "NMax": 80}
# storage classes, builtins, scopes, decorations
SC_INPUT, SC_WORKGROUP, SC_FUNCTION, SC_PUSH, SC_STORAGE, SC_PSB = 1, 4, 7, 9, 12, 5349
BUILTIN = {"NumWorkgroups": 24, "WorkgroupSize": 25, "WorkgroupId": 26, "LocalInvocationId": 27,
           "GlobalInvocationId": 28, "LocalInvocationIndex": 29, "SubgroupId": 40,
           "SubgroupLocalInvocationId": 41}
SCOPE_DEVICE, SCOPE_WORKGROUP, SCOPE_SUBGROUP = 1, 2, 3
DEC_SPEC_ID, DEC_BLOCK, DEC_ARRAY_STRIDE, DEC_BUILTIN = 1, 2, 6, 11
DEC_BINDING, DEC_SET, DEC_OFFSET = 33, 34, 35
ALIGNED = 2
SPIRV_VERSION = 0x00010500  # SPIR-V 1.5: what Vulkan 1.2 consumes

_ID_BUILTINS = {"global_id": "GlobalInvocationId", "local_id": "LocalInvocationId",
                "group_id": "WorkgroupId"}


@dataclass
class VulkanCaps(Caps):
    """What a Vulkan device offers the emitter; each missing feature has a fallback or a clear error."""

    bda: bool = True  # buffers through device addresses in push constants (else descriptors)
    storage8: bool = True  # StorageBuffer8BitAccess
    storage16: bool = True  # StorageBuffer16BitAccess
    int8: bool = True
    int16: bool = True
    int64: bool = True
    float16: bool = True
    float64: bool = True
    rte16: bool = True  # conversions to 16-bit floats can be made round-to-nearest-even
    atomic_add_f32_buffer: bool = True  # SPV_EXT_shader_atomic_float_add on buffers
    atomic_add_f32_shared: bool = True
    max_push_constants: int = 128


@dataclass
class PushField:
    """One push-constant member: the runtime parameter (index into `params`) or the grid."""

    slot: int  # index into SpirvModule.params; -1, -2, -3: the grid's x, y, z (u32 each)
    offset: int
    fmt: str  # struct-module format: "Q" address, "I" byte offset, or the scalar's format


@dataclass
class SpirvModule(Generated):
    """A SPIR-V module plus what the runtime needs to launch it. `line_map` is keyed by
    instruction number (1-based, as spirv-val reports them) of each OpLine."""

    binary: bytes = b""
    push_size: int = 0
    push_fields: list[PushField] = field(default_factory=list)
    bindings: int = 0  # descriptor mode: storage-buffer bindings 0..n-1, one per buffer param
    subgroups: bool = False  # uses subgroup operations (the pipeline pins the subgroup size)
    vector_align: dict[int, int] = field(default_factory=dict)  # param → bytes its view needs

    def annotate_log(self, log: str) -> str:
        """After each message naming an instruction ("line N:"), the Python line behind it."""
        out = []
        for line in log.splitlines():
            out.append(line)
            m = re.search(r"\bline (\d+):", line)
            loc = self._nearest(int(m.group(1))) if m else None
            if loc is not None:
                out.append(f"    ↳ from {loc.file}:{loc.line}: {loc.text.strip()}")
        return "\n".join(out)


# --- module builder -----------------------------------------------------------------------------


def _string(s: str) -> list[int]:
    b = s.encode() + b"\0"
    b += b"\0" * (-len(b) % 4)
    return list(struct.unpack(f"<{len(b) // 4}I", b))


def _inst(opname: str, *operands) -> list[int]:
    """One instruction's words; operands are ints (ids, literals), strings or lists of ints."""
    words: list[int] = []
    for x in operands:
        if isinstance(x, str):
            words += _string(x)
        elif isinstance(x, (list, tuple)):
            words += x
        else:
            words.append(x)
    return [(len(words) + 1) << 16 | OP[opname], *words]


class _Builder:
    """Ids, the module-level sections, capabilities, and deduplicated types and constants."""

    def __init__(self):
        self.bound = 1
        self.capabilities: dict[int, None] = {CAP["Shader"]: None}
        self.extensions: dict[str, None] = {}
        self.glsl_id: int | None = None
        self.modes: list[int] = []
        self.strings: list[int] = []
        self.names: list[int] = []
        self.annotations: list[int] = []
        self.globals: list[int] = []  # types, constants and global variables, in dependency order
        self._cache: dict[tuple, int] = {}

    def id(self) -> int:
        self.bound += 1
        return self.bound - 1

    def cap(self, name: str) -> None:
        self.capabilities[CAP[name]] = None

    def decorate(self, target: int, *args) -> None:
        self.annotations += _inst("Decorate", target, *args)

    def name(self, target: int, name: str) -> None:
        self.names += _inst("Name", target, name)

    def glsl(self) -> int:
        if self.glsl_id is None:
            self.glsl_id = self.id()
        return self.glsl_id

    def cached(self, key: tuple, opname: str, *operands, rtype: int | None = None) -> int:
        """A global instruction emitted once per key (types, constants); returns its id."""
        rid = self._cache.get(key)
        if rid is None:
            rid = self._cache[key] = self.id()
            self.globals += _inst(opname, *([rtype] if rtype is not None else []), rid, *operands)
        return rid

    def type(self, kind: str, *operands: int) -> int:
        return self.cached((kind, *operands), "Type" + kind, *operands)

    def binary(self, entry: list[int], function: list[int]) -> bytes:
        words = [0x07230203, SPIRV_VERSION, 0, self.bound, 0]
        for c in self.capabilities:
            words += _inst("Capability", c)
        for e in self.extensions:
            words += _inst("Extension", e)
        if self.glsl_id is not None:
            words += _inst("ExtInstImport", self.glsl_id, "GLSL.std.450")
        physical = CAP["PhysicalStorageBufferAddresses"] in self.capabilities
        # addressing PhysicalStorageBuffer64 (5348) or Logical (0); memory model GLSL450 (1)
        words += _inst("MemoryModel", 5348 if physical else 0, 1)
        words += entry + self.modes + self.strings + self.names + self.annotations + self.globals
        return struct.pack(f"<{len(words) + len(function)}I", *words, *function)


# --- lowering -----------------------------------------------------------------------------------


@dataclass
class _Loop:
    merge: int
    cont: int
    cont_used: bool = False


@dataclass
class _Buf:
    """How a buffer parameter is reached: a device address, or a descriptor plus a byte offset."""

    addr: int | None = None  # BDA: the u64 address of element 0
    var: int | None = None  # descriptor mode: the StorageBuffer variable (an array of u32 words)
    off: int | None = None  # descriptor mode: the u32 byte offset of element 0


def _speculatable(e: ir.Expr) -> bool:
    """Cheap to evaluate even when not needed, and unable to fault or to change other lanes."""
    n = 0
    for x in ir.walk(e):
        n += 1
        if isinstance(x, (ir.Load, ir.VecLoad, ir.Atomic)):
            return False
        if isinstance(x, ir.Binary) and x.op in ("/", "%") and not x.type.is_float:
            return False
        if isinstance(x, ir.Call) and (x.name.startswith("subgroup") or x.name.startswith("shuffle")):
            return False
    return n <= 12


def _abi(t: T.ScalarType) -> T.ScalarType:
    """How a scalar travels in push constants: 32 bits at least, 16-bit floats as f32."""
    if t.is_bool:
        return T.i32
    if t.is_float:
        return T.f32 if t.bits == 16 else t
    if t.bits < 32:
        return T.i32 if t.is_signed else T.u32
    return t


class _Printer:
    """Lowers one kernel; the emission state mirrors the structured IR it walks."""

    def __init__(self, kernel: ir.Kernel, caps: VulkanCaps):
        self.k, self.caps, self.m = kernel, caps, _Builder()
        self.vars: list[int] = []  # Function-storage OpVariables (first in the entry block)
        self.pre: list[int] = []  # entry-block preamble: parameters, builtins, base pointers
        self.code: list[int] = []  # the body
        self.out = self.pre
        self.open = True  # the current block has no terminator yet
        self.cur = 0  # the current block's label
        self.loops: list[_Loop] = []
        self.interface: list[int] = []
        self.values: dict[int, int] = {}  # id(param) → its value
        self.ptrs: dict[int, int] = {}  # id(local or array) → its variable
        self.bufs: dict[int, _Buf] = {}
        self.lazy: dict[tuple, int] = {}  # preamble values made on first use
        self.grid: list[int] = []  # num_groups (push constants), when used
        self.rte16 = False
        self.subgroups = False
        self.files: dict[str, int] = {}
        self.last_line: tuple | None = None
        self.line_locs: list[ir.Loc] = []  # of each OpLine, in emission order
        self.vector_align: dict[int, int] = {}
        self.bits_arrays = self._bits_arrays()

    # --- types and constants --------------------------------------------------------------------

    def t_int(self, bits: int, signed: bool) -> int:
        if bits == 64:
            self.m.cap("Int64")
        elif bits == 16 and self.caps.int16:
            self.m.cap("Int16")
        elif bits == 8 and self.caps.int8:
            self.m.cap("Int8")
        return self.m.type("Int", bits, int(signed))

    def t_float(self, bits: int) -> int:
        if bits == 64:
            self.m.cap("Float64")
        elif bits == 16 and self.caps.float16:
            self.m.cap("Float16")
        return self.m.type("Float", bits)

    @property
    def u32(self) -> int:
        return self.t_int(32, False)

    @property
    def i32(self) -> int:
        return self.t_int(32, True)

    @property
    def f32(self) -> int:
        return self.t_float(32)

    @property
    def bool(self) -> int:
        return self.m.type("Bool")

    def t_vec(self, elem: int, n: int) -> int:
        return self.m.type("Vector", elem, n)

    def t_ptr(self, sc: int, pointee: int, stride: int = 0) -> int:
        """A pointer type; PhysicalStorageBuffer pointers carry the ArrayStride OpPtrAccessChain needs."""
        key = ("Pointer", sc, pointee)
        if key not in self.m._cache and sc == SC_PSB:
            self.m.decorate(self.m.type(*key), DEC_ARRAY_STRIDE, stride)
        return self.m.type(*key)

    def reg(self, t: T.Type) -> int:
        """The SPIR-V type a value of IR type `t` lives in (see the module docstring)."""
        if isinstance(t, T.VectorType):
            return self.t_vec(self.reg(t.elem), t.lanes)
        if t.is_bool:
            return self.bool
        if t.is_float:
            return self.t_float(64 if t.bits == 64 else 32)
        return self.t_int(64 if t.bits == 64 else 32, t.is_signed)

    def narrow_type(self, t: T.ScalarType) -> int:
        """The 8/16-bit memory type of a sub-word element (bool as u8, bf16 as its u16 bits)."""
        if t.is_bool:
            return self.t_int(8, False)
        if t == T.f16:
            return self.t_float(16)
        return self.t_int(t.bits, t.is_signed and t.is_int)

    def const(self, t: T.ScalarType, v) -> int:
        if t.is_bool:
            return self.m.cached(("bool", bool(v)), "ConstantTrue" if v else "ConstantFalse",
                                 rtype=self.bool)
        rt = self.reg(t)
        if t.is_float:
            if t == T.bf16:
                v = T.from_bf16_bits(T.to_bf16_bits(np.float32(v))).item()
            with np.errstate(over="ignore"):
                arr = np.array(v, np.float64 if t.bits == 64 else np.float16 if t == T.f16 else np.float32)
            bits = int(arr.astype(np.float64 if t.bits == 64 else np.float32).view(
                np.uint64 if t.bits == 64 else np.uint32))
        else:
            bits = int(v) & ((1 << (64 if t.bits == 64 else 32)) - 1)
        words = [bits & 0xFFFFFFFF] + ([bits >> 32] if t.bits == 64 else [])
        return self.m.cached(("const", rt, *words), "Constant", *words, rtype=rt)

    def cu(self, v: int) -> int:
        return self.const(T.u32, v)

    def cf(self, v: float) -> int:
        return self.const(T.f32, v)

    # --- instructions ---------------------------------------------------------------------------

    def op(self, name: str, rtype: int, *args, rid: int | None = None) -> int:
        rid = self.m.id() if rid is None else rid
        self.out += _inst(name, rtype, rid, *args)
        return rid

    def do(self, name: str, *args) -> None:
        self.out += _inst(name, *args)

    def ext(self, name: str, rtype: int, *args) -> int:
        return self.op("ExtInst", rtype, self.m.glsl(), GLSL[name], *args)

    def label(self, lid: int) -> None:
        self.do("Label", lid)
        self.open, self.cur, self.last_line = True, lid, None

    def branch(self, target: int) -> None:
        self.do("Branch", target)
        self.open = False

    def in_preamble(self, key: tuple, make) -> int:
        """A value computed once in the entry block (so it dominates every use)."""
        if key not in self.lazy:
            saved, self.out = self.out, self.pre
            try:
                self.lazy[key] = make()
            finally:
                self.out = saved
        return self.lazy[key]

    def global_var(self, sc: int, t: int, name: str) -> int:
        vid = self.m.id()
        self.m.globals += _inst("Variable", self.t_ptr(sc, t), vid, sc)
        self.m.name(vid, name)
        self.interface.append(vid)
        return vid

    def load_mem(self, t: int, ptr: int, align: int | None) -> int:
        """OpLoad; PhysicalStorageBuffer accesses must state their alignment."""
        return self.op("Load", t, ptr, *([ALIGNED, align] if align else []))

    def store_mem(self, ptr: int, v: int, align: int | None) -> None:
        self.do("Store", ptr, v, *([ALIGNED, align] if align else []))

    # --- the module -----------------------------------------------------------------------------

    def render(self) -> SpirvModule:
        self._check_support()
        self.wgsize = self._workgroup_size()
        params = self._declare_params()
        self._declare_locals()
        fn, void = self.m.id(), self.m.type("Void")
        self.m.name(fn, self.k.name)
        entry_label = self.cur = self.m.id()
        self.out = self.code
        self.block(self.k.body)
        if self.open:
            self.do("Return")
        if self.rte16:
            self.m.cap("RoundingModeRTE")
            self.m.modes += _inst("ExecutionMode", fn, 4462, 16)  # RoundingModeRTE for 16-bit
        function = (_inst("Function", void, fn, 0, self.m.type("Function", void))
                    + _inst("Label", entry_label)
                    + self.vars + self.pre + self.code + _inst("FunctionEnd"))
        entry = _inst("EntryPoint", 5, fn, self.k.name, *self.interface)  # GLCompute
        binary = self.m.binary(entry, function)
        return SpirvModule(disassemble(binary), self.k.name, params, self._line_map(binary),
                           binary=binary, push_size=self.push_size, push_fields=self.push_fields,
                           bindings=self.nbindings, subgroups=self.subgroups,
                           vector_align=self.vector_align)

    def _line_map(self, binary: bytes) -> dict[int, ir.Loc]:
        """Instruction number of each OpLine → its Python location."""
        words = struct.unpack(f"<{len(binary) // 4}I", binary)
        out, k, n, locs = {}, 5, 0, iter(self.line_locs)
        while k < len(words):
            n += 1
            if words[k] & 0xFFFF == OP["Line"]:
                out[n] = next(locs)
            k += words[k] >> 16
        return out

    def error(self, msg: str, loc: ir.Loc | None) -> CompileError:
        if loc is None:
            return CompileError(f"kernel '{self.k.name}': {msg}", self.k.source_file or "<kernel>")
        return CompileError(msg, loc.file, loc.line, loc.col, loc.text)

    def _check_support(self) -> None:
        """Refuse at compile time what this device cannot run at all (there is no fallback)."""
        lacks = {"f64": (not self.caps.float64, "shaderFloat64"),
                 "i64": (not self.caps.int64, "shaderInt64"), "u64": (not self.caps.int64, "shaderInt64")}
        found = [(v.type, None) for v in self.k.params + self.k.locals]
        found += [(n.type, n.loc) for n in ir.walk_body(self.k.body) if isinstance(n, ir.Expr)]
        for t, loc in found:
            name = getattr(getattr(t, "elem", t), "name", None)
            if name in lacks and lacks[name][0]:
                raise self.error(f"{name} needs the Vulkan feature {lacks[name][1]}, which this device "
                                 f"lacks", loc)

    def _declare_params(self) -> list[ParamABI]:
        """Push constants: buffer addresses (or byte offsets), scalars, and the grid when used."""
        params, fields = [], []
        for i, v in enumerate(self.k.params):
            t = v.type
            if isinstance(t, T.BufferType):
                params.append(ParamABI(v.name, "buffer", t.elem, t.elem))
                fields.append((i, 8, self.t_int(64, False), "Q") if self.caps.bda else (i, 4, self.u32, "I"))
            else:
                abi = _abi(t)
                params.append(ParamABI(v.name, "scalar", t, abi))
                fields.append((i, abi.itemsize, self.reg(abi), _STRUCT_FMT[abi.name]))
        if any(isinstance(n, ir.Call) and n.name in ("num_groups", "global_size")
               for n in ir.walk_body(self.k.body)):
            fields += [(-1 - d, 4, self.u32, "I") for d in range(3)]
        fields.sort(key=lambda f: -f[1])  # 8-byte members first: naturally aligned without padding
        self.push_fields, offset = [], 0
        for slot, size, _, fmt in fields:
            self.push_fields.append(PushField(slot, offset, fmt))
            offset += size
        self.push_size = offset
        if offset > self.caps.max_push_constants:
            raise self.error(f"the parameters need {offset} bytes of push constants; this device "
                             f"offers {self.caps.max_push_constants}: pass fewer parameters", None)
        values = self._push_block([f[2] for f in fields], [f[0] for f in fields])
        self.grid = [0, 0, 0]
        assigned = {id(n.var) for n in ir.walk_body(self.k.body) if isinstance(n, ir.Assign)}
        for (slot, *_), value in zip(fields, values):
            if slot < 0:
                self.grid[-1 - slot] = value
                continue
            v = self.k.params[slot]
            if isinstance(v.type, T.BufferType):
                self.bufs[id(v)] = _Buf(addr=value) if self.caps.bda else _Buf(off=value)
            elif id(v) in assigned:  # a parameter assigned to is a variable like any other
                var = self.ptrs[id(v)] = self.m.id()
                self.vars += _inst("Variable", self.t_ptr(SC_FUNCTION, self.reg(v.type)), var, SC_FUNCTION)
                self.m.name(var, v.name)
                self.do("Store", var, self.from_abi(v.type, value))
            else:
                self.values[id(v)] = self.from_abi(v.type, value)
        self.nbindings = 0
        for v in self.k.params:
            if isinstance(v.type, T.BufferType) and not self.caps.bda:
                self.bufs[id(v)].var = self._words_var(self.nbindings, v.name)
                self.nbindings += 1
        return params

    def _push_block(self, members: list[int], slots: list[int]) -> list[int]:
        if not members:
            return []
        st = self.m.id()
        self.m.globals += _inst("TypeStruct", st, *members)
        self.m.decorate(st, DEC_BLOCK)
        for k, f in enumerate(self.push_fields):
            self.m.annotations += _inst("MemberDecorate", st, k, DEC_OFFSET, f.offset)
            name = self.k.params[f.slot].name if f.slot >= 0 else "grid" + "xyz"[-1 - f.slot]
            self.m.names += _inst("MemberName", st, k, name)
        var = self.global_var(SC_PUSH, st, "args")
        return [self.op("Load", t, self.op("AccessChain", self.t_ptr(SC_PUSH, t), var, self.const(T.i32, k)))
                for k, t in enumerate(members)]

    def _words_var(self, binding: int, name: str) -> int:
        """Descriptor mode: a buffer as a runtime array of u32 words."""
        first = ("RuntimeArray", self.u32) not in self.m._cache
        arr = self.m.type("RuntimeArray", self.u32)
        st = self.m.cached(("words",), "TypeStruct", arr)
        if first:
            self.m.decorate(arr, DEC_ARRAY_STRIDE, 4)
            self.m.decorate(st, DEC_BLOCK)
            self.m.annotations += _inst("MemberDecorate", st, 0, DEC_OFFSET, 0)
        var = self.global_var(SC_STORAGE, st, name)
        self.m.decorate(var, DEC_SET, 0)
        self.m.decorate(var, DEC_BINDING, binding)
        return var

    def from_abi(self, t: T.ScalarType, v: int) -> int:
        """A scalar parameter as passed (see `_abi`) → its register value."""
        if t.is_bool:
            return self.op("INotEqual", self.bool, v, self.const(T.i32, 0))
        if t.is_float and t.bits == 16:
            return self.round16(t, v)
        if t.bits < 32:
            return self.int_cast(v, T.i32 if t.is_signed else T.u32, t)
        return v

    def _declare_locals(self) -> None:
        for v in self.k.locals:
            t = v.type
            if isinstance(t, T.ArrayType):
                vt = self.m.type("Array", self.array_elem(v)[0], self.cu(t.size))
                if t.space == "shared":
                    self.ptrs[id(v)] = self.global_var(SC_WORKGROUP, vt, v.name)
                    continue
            else:
                vt = self.reg(t)
            vid = self.ptrs[id(v)] = self.m.id()
            self.vars += _inst("Variable", self.t_ptr(SC_FUNCTION, vt), vid, SC_FUNCTION)
            self.m.name(vid, v.name)

    def _bits_arrays(self) -> set[int]:
        """f32 shared arrays that atomics see as u32 (exchange, or add without float atomics)."""
        return {id(n.var) for n in ir.walk_body(self.k.body)
                if isinstance(n, ir.Atomic) and isinstance(n.var.type, T.ArrayType)
                and n.var.type.elem == T.f32
                and (n.op == "xchg" or not self.caps.atomic_add_f32_shared)}

    def array_elem(self, v: ir.Var) -> tuple[int, str]:
        """The element type of a shared/private array and how values are kept: "same" (the register
        type), "narrow" (8/16-bit memory) or "bits" (an f32 kept as u32 for atomics)."""
        e = v.type.elem
        if id(v) in self.bits_arrays:
            return self.u32, "bits"
        native = {8: self.caps.int8, 16: self.caps.float16 if e == T.f16 else self.caps.int16}
        if not e.is_bool and native.get(e.bits, False):
            return self.narrow_type(e), "narrow"
        return self.reg(e), "same"

    # --- statements -----------------------------------------------------------------------------

    def block(self, body: list[ir.Stmt]) -> None:
        for s in body:
            if not self.open:
                return  # after break/continue/return (or an if whose branches all end so)
            self.line(s.loc)
            getattr(self, "s_" + type(s).__name__)(s)

    def line(self, loc: ir.Loc | None) -> None:
        """OpLine: the Python line each instruction came from, for the listing and debuggers."""
        if loc is None or (loc.file, loc.line) == self.last_line:
            return
        self.last_line = (loc.file, loc.line)
        fid = self.files.get(loc.file)
        if fid is None:
            fid = self.files[loc.file] = self.m.id()
            self.m.strings += _inst("String", fid, loc.file.rsplit("/", 1)[-1])
        self.do("Line", fid, loc.line, loc.col)
        self.line_locs.append(loc)

    def s_Assign(self, s: ir.Assign) -> None:
        self.do("Store", self.ptrs[id(s.var)], self.expr(s.value))

    def s_Store(self, s: ir.Store) -> None:
        i = self.expr(s.index)
        self.store(s.var, i, s.index.type, self.expr(self._stored(s.var, s.value)))

    def s_VecStore(self, s: ir.VecStore) -> None:
        i = self.expr(s.index)
        self.vstore(s.var, i, s.index.type, s.value.type.lanes, self.expr(self._stored(s.var, s.value)))

    def _stored(self, var: ir.Var, value: ir.Expr) -> ir.Expr:
        """The value to store: f16 memory written by OpFConvert under RoundingModeRTE rounds by
        itself, so the Cast that rounds the f32 value (or each lane's) is skipped."""
        native = self.array_elem(var)[1] == "narrow" if isinstance(var.type, T.ArrayType) \
            else self.caps.bda and self.caps.storage16
        if var.type.elem != T.f16 or not (native and self.caps.rte16):
            return value

        def unrounded(x: ir.Expr) -> ir.Expr:
            ok = isinstance(x, ir.Cast) and x.to == T.f16 and x.operand.type == T.f32
            return x.operand if ok else x

        if isinstance(value, ir.MakeVec):
            return ir.MakeVec(value.vtype, [unrounded(x) for x in value.elems])
        return unrounded(value)

    def s_ExprStmt(self, s: ir.ExprStmt) -> None:
        self.expr(s.expr)

    def s_If(self, s: ir.If) -> None:
        c = self.expr(s.cond)
        then_l, merge = self.m.id(), self.m.id()
        else_l = self.m.id() if s.orelse else merge
        self.do("SelectionMerge", merge, 0)
        self.do("BranchConditional", c, then_l, else_l)
        reached = not s.orelse
        for lab, body in [(then_l, s.then)] + ([(else_l, s.orelse)] if s.orelse else []):
            self.label(lab)
            self.block(body)
            if self.open:
                self.branch(merge)
                reached = True
        self.label(merge)
        if not reached:  # both branches left the construct: the merge block is dead
            self.do("Unreachable")
            self.open = False

    def _loop(self, check, body: list[ir.Stmt], step=None) -> None:
        """header (OpLoopMerge) → check → body → continue (`step`, then the back edge) → merge."""
        header, check_l, body_l, cont, merge = (self.m.id() for _ in range(5))
        self.branch(header)
        self.label(header)
        self.do("LoopMerge", merge, cont, 0)
        self.branch(check_l)
        self.label(check_l)
        self.do("BranchConditional", check(), body_l, merge)
        loop = _Loop(merge, cont)
        self.loops.append(loop)
        self.label(body_l)
        self.block(body)
        if self.open:
            self.branch(cont)
            loop.cont_used = True
        self.loops.pop()
        self.label(cont)
        if step is not None and loop.cont_used:  # an unreachable continue block holds only the back edge
            step()
        self.branch(header)
        self.label(merge)

    def s_While(self, s: ir.While) -> None:
        self._loop(lambda: self.expr(s.cond), s.body)

    def s_For(self, s: ir.For) -> None:
        t, ptr, rt = s.var.type, self.ptrs[id(s.var)], self.reg(s.var.type)
        self.do("Store", ptr, self.expr(s.start))
        stop, step = self.expr(s.stop), self.expr(s.step)

        def check() -> int:
            v = self.op("Load", rt, ptr)
            if isinstance(s.step, ir.Const):
                return self.compare("<" if s.step.value > 0 else ">", t, v, stop)
            up = self.compare(">", t, step, self.const(t, 0))
            return self.op("Select", self.bool, up, self.compare("<", t, v, stop),
                           self.compare(">", t, v, stop))

        def advance() -> None:
            self.do("Store", ptr, self.op("IAdd", rt, self.op("Load", rt, ptr), step))

        self._loop(check, s.body, advance)

    def s_Break(self, s: ir.Break) -> None:
        self.branch(self.loops[-1].merge)

    def s_Continue(self, s: ir.Continue) -> None:
        self.loops[-1].cont_used = True
        self.branch(self.loops[-1].cont)

    def s_Return(self, s: ir.Return) -> None:
        self.do("Return")
        self.open = False

    def s_Barrier(self, s: ir.Barrier) -> None:
        # workgroup execution barrier ordering shared (WorkgroupMemory) and buffer (UniformMemory)
        # accesses: AcquireRelease | UniformMemory | WorkgroupMemory
        wg = self.cu(SCOPE_WORKGROUP)
        self.do("ControlBarrier", wg, wg, self.cu(0x8 | 0x40 | 0x100))

    # --- expressions ----------------------------------------------------------------------------

    def expr(self, e: ir.Expr) -> int:
        return getattr(self, "e_" + type(e).__name__)(e)

    def e_Const(self, e: ir.Const) -> int:
        return self.const(e.type, e.value)

    def e_Ref(self, e: ir.Ref) -> int:
        if id(e.var) in self.values:
            return self.values[id(e.var)]
        return self.op("Load", self.reg(e.type), self.ptrs[id(e.var)])

    _FCMP = {"<": "FOrdLessThan", "<=": "FOrdLessThanEqual", ">": "FOrdGreaterThan",
             ">=": "FOrdGreaterThanEqual", "==": "FOrdEqual", "!=": "FUnordNotEqual"}  # C: NaN != x
    _ICMP = {"<": "LessThan", "<=": "LessThanEqual", ">": "GreaterThan", ">=": "GreaterThanEqual"}

    def compare(self, op: str, t: T.ScalarType, a: int, b: int) -> int:
        if t.is_float:
            name = self._FCMP[op]
        elif op in ("==", "!="):
            name = "IEqual" if op == "==" else "INotEqual"
        else:
            name = ("S" if t.is_signed else "U") + self._ICMP[op]
        return self.op(name, self.bool, a, b)

    _FARITH = {"+": "FAdd", "-": "FSub", "*": "FMul", "/": "FDiv", "%": "FRem"}
    _IARITH = {"+": "IAdd", "-": "ISub", "*": "IMul", "<<": "ShiftLeftLogical", "&": "BitwiseAnd",
               "|": "BitwiseOr", "^": "BitwiseXor"}
    _SIGNED = {"/": ("SDiv", "UDiv"), "%": (None, "UMod"),
               ">>": ("ShiftRightArithmetic", "ShiftRightLogical")}
    _BOOL_OPS = {"==": "LogicalEqual", "!=": "LogicalNotEqual", "&": "LogicalAnd", "|": "LogicalOr",
                 "^": "LogicalNotEqual"}

    def e_Binary(self, e: ir.Binary) -> int:
        op, t = e.op, e.lhs.type
        if op in ("and", "or"):
            a = self.expr(e.lhs)
            if _speculatable(e.rhs):
                return self.op("LogicalAnd" if op == "and" else "LogicalOr", self.bool, a, self.expr(e.rhs))
            return self.short_circuit(op == "and", a, e.rhs)
        a, b = self.expr(e.lhs), self.expr(e.rhs)
        if t.is_bool:
            if op in self._BOOL_OPS:
                return self.op(self._BOOL_OPS[op], self.bool, a, b)
            a, b, t = self.cast(a, t, T.u32), self.cast(b, t, T.u32), T.u32  # false < true
        if op in self._FCMP:
            return self.compare(op, t, a, b)
        rt = self.reg(e.type)
        if op == "%" and t.is_signed:  # OpSRem is undefined for negative operands in Vulkan
            return self.op("ISub", rt, a, self.op("IMul", rt, self.op("SDiv", rt, a, b), b))
        if t.is_float:
            name = self._FARITH[op]
        else:
            name = self._IARITH.get(op) or self._SIGNED[op][0 if t.is_signed else 1]
        return self.op(name, rt, a, b)

    def short_circuit(self, is_and: bool, a: int, rhs: ir.Expr) -> int:
        """`a and rhs` / `a or rhs` evaluating rhs only when needed: a selection and an OpPhi."""
        start, rhs_l, merge = self.cur, self.m.id(), self.m.id()
        self.do("SelectionMerge", merge, 0)
        self.do("BranchConditional", a, *((rhs_l, merge) if is_and else (merge, rhs_l)))
        self.label(rhs_l)
        b = self.expr(rhs)
        end = self.cur
        self.branch(merge)
        self.label(merge)
        return self.op("Phi", self.bool, self.const(T.bool_, not is_and), start, b, end)

    def choose(self, c: int, then, orelse, rtype: int) -> int:
        """`c ? then() : orelse()` evaluating only the chosen side: a selection and an OpPhi."""
        t_l, f_l, merge = self.m.id(), self.m.id(), self.m.id()
        self.do("SelectionMerge", merge, 0)
        self.do("BranchConditional", c, t_l, f_l)
        arms = []
        for lab, fn in ((t_l, then), (f_l, orelse)):
            self.label(lab)
            arms += [fn(), self.cur]
            self.branch(merge)
        self.label(merge)
        return self.op("Phi", rtype, *arms)

    def e_Unary(self, e: ir.Unary) -> int:
        v, rt = self.expr(e.operand), self.reg(e.type)
        if e.op == "not":
            return self.op("LogicalNot", self.bool, v)
        if e.op == "~":
            return self.op("Not", rt, v)
        return self.op("FNegate" if e.type.is_float else "SNegate", rt, v)

    def e_Select(self, e: ir.Select) -> int:
        c, rt = self.expr(e.cond), self.reg(e.type)
        if e.lazy and not (_speculatable(e.if_true) and _speculatable(e.if_false)):
            return self.choose(c, lambda: self.expr(e.if_true), lambda: self.expr(e.if_false), rt)
        return self.op("Select", rt, c, self.expr(e.if_true), self.expr(e.if_false))

    def e_Cast(self, e: ir.Cast) -> int:
        return self.cast(self.expr(e.operand), e.operand.type, e.to)

    def cast(self, v: int, src: T.ScalarType, to: T.ScalarType) -> int:
        """C conversions on register values (see `ir.Cast`)."""
        if src == to:
            return v
        rt = self.reg(to)
        if to.is_bool:
            return self.op("FUnordNotEqual" if src.is_float else "INotEqual", self.bool, v,
                           self.const(src, 0))
        if src.is_bool:
            return self.op("Select", rt, v, self.const(to, 1), self.const(to, 0))
        if to.is_float:
            if src.is_float:
                r = v if (src.bits == 64) == (to.bits == 64) else self.op("FConvert", rt, v)
            else:
                r = self.op("ConvertSToF" if src.is_signed else "ConvertUToF", rt, v)
            return self.round16(to, r) if to.bits == 16 else r
        if src.is_float:
            if to.bits >= 32:
                return self.op("ConvertFToS" if to.is_signed else "ConvertFToU", rt, v)
            return self.int_cast(self.op("ConvertFToS", self.i32, v), T.i32, to)
        return self.int_cast(v, src, to)

    def int_cast(self, v: int, src: T.ScalarType, to: T.ScalarType) -> int:
        """Integer conversion between register forms; sub-word results are re-wrapped."""
        sb, tb = (64 if src.bits == 64 else 32), (64 if to.bits == 64 else 32)
        if sb != tb:
            v = self.op("SConvert" if src.is_signed else "UConvert", self.t_int(tb, src.is_signed), v)
        if src.is_signed != to.is_signed:
            v = self.op("Bitcast", self.reg(to), v)
        fits = src.bits < to.bits and (to.is_signed or not src.is_signed)
        if to.bits < 32 and not fits:
            v = self.op("BitFieldSExtract" if to.is_signed else "BitFieldUExtract", self.reg(to), v,
                        self.cu(0), self.cu(to.bits))
        return v

    def round16(self, t: T.ScalarType, r: int) -> int:
        """An f32 rounded (to nearest even) to f16 or bf16, still as an f32. Integer arithmetic:
        drivers fold an OpFConvert to f16 and back into nothing (NVIDIA does)."""
        u32, cu = self.u32, self.cu
        u = self.op("Bitcast", u32, r)
        if t == T.bf16:
            nan = self.op("UGreaterThan", self.bool, self.op("BitwiseAnd", u32, u, cu(0x7FFFFFFF)),
                          cu(0x7F800000))
            odd = self.op("BitwiseAnd", u32, self.op("ShiftRightLogical", u32, u, cu(16)), cu(1))
            up = self.op("IAdd", u32, self.op("IAdd", u32, u, cu(0x7FFF)), odd)
            res = self.op("Select", u32, nan, self.op("BitwiseOr", u32, u, cu(0x400000)), up)
            return self.op("Bitcast", self.f32, self.op("BitwiseAnd", u32, res, cu(0xFFFF0000)))
        return self._soft_round_f16(u)

    def _soft_round_f16(self, u: int) -> int:
        """f32 bits → the nearest f16 value (ties to even) as an f32, with integer arithmetic."""
        u32, cu, b = self.u32, self.cu, self.bool

        def op(name, *args, t=u32):
            return self.op(name, t, *args)

        sign = op("BitwiseAnd", u, cu(0x80000000))
        a = op("BitwiseAnd", u, cu(0x7FFFFFFF))
        # normal f16 range: round the mantissa to 10 bits
        odd = op("BitwiseAnd", op("ShiftRightLogical", a, cu(13)), cu(1))
        normal = op("BitwiseAnd", op("IAdd", op("IAdd", a, cu(0xFFF)), odd), cu(0xFFFFE000))
        # subnormal f16 range: round the significand to a multiple of 2^-24
        s = self.ext("UMin", u32, op("ISub", cu(126), op("ShiftRightLogical", a, cu(23))), cu(31))
        m = op("BitwiseOr", op("BitwiseAnd", a, cu(0x7FFFFF)), cu(0x800000))
        half = op("ISub", op("ShiftLeftLogical", cu(1), op("ISub", s, cu(1))), cu(1))
        lsb = op("BitwiseAnd", op("ShiftRightLogical", m, s), cu(1))
        q = op("ShiftRightLogical", op("IAdd", op("IAdd", m, half), lsb), s)
        value = self.op("FMul", self.f32, self.op("ConvertUToF", self.f32, q), self.cf(2.0 ** -24))
        sub = op("Bitcast", value)
        res = op("Select", self.op("ULessThan", b, a, cu(0x38800000)), sub, normal)
        res = op("Select", self.op("UGreaterThanEqual", b, a, cu(0x477FF000)), cu(0x7F800000), res)
        res = op("Select", self.op("UGreaterThan", b, a, cu(0x7F800000)), op("BitwiseOr", a, cu(0x400000)),
                 res)
        return self.op("Bitcast", self.f32, op("BitwiseOr", res, sign))

    def e_Bitcast(self, e: ir.Bitcast) -> int:
        src, v = e.operand.type, self.expr(e.operand)
        if src.bits < 32:  # 16-bit floats and sub-word integers go through their bits
            return self.from_bits(e.to, self.to_bits(src, v), self.cu(0))
        return self.op("Bitcast", self.reg(e.to), v)

    def to_bits(self, t: T.ScalarType, v: int) -> int:
        """A sub-word value's memory bits, zero-extended into a u32."""
        u32 = self.u32
        if t.is_bool:
            return self.op("Select", u32, v, self.cu(1), self.cu(0))
        if t == T.f16:  # exact: the value is already an f16 value
            pair = self.op("CompositeConstruct", self.t_vec(self.f32, 2), v, self.cf(0.0))
            return self.ext("PackHalf2x16", u32, pair)
        if t == T.bf16:
            return self.op("ShiftRightLogical", u32, self.op("Bitcast", u32, v), self.cu(16))
        if t.is_signed:
            v = self.op("Bitcast", u32, v)
        return self.op("BitFieldUExtract", u32, v, self.cu(0), self.cu(t.bits))

    def from_bits(self, t: T.ScalarType, w: int, shift: int) -> int:
        """The sub-word value stored in bits `shift`… of the u32 `w`."""
        if t.is_signed and t.is_int:
            return self.op("BitFieldSExtract", self.i32, self.op("Bitcast", self.i32, w), shift,
                           self.cu(t.bits))
        b = self.op("BitFieldUExtract", self.u32, w, shift, self.cu(t.bits))
        if t.is_bool:
            return self.op("INotEqual", self.bool, b, self.cu(0))
        if t == T.f16:
            pair = self.ext("UnpackHalf2x16", self.t_vec(self.f32, 2), b)
            return self.op("CompositeExtract", self.f32, pair, 0)
        if t == T.bf16:
            return self.op("Bitcast", self.f32, self.op("ShiftLeftLogical", self.u32, b, self.cu(16)))
        return b

    def e_Lane(self, e: ir.Lane) -> int:
        return self.op("CompositeExtract", self.reg(e.type), self.expr(e.vec), e.lane)

    def e_MakeVec(self, e: ir.MakeVec) -> int:
        return self.op("CompositeConstruct", self.reg(e.type), *[self.expr(x) for x in e.elems])

    def e_Load(self, e: ir.Load) -> int:
        return self.load(e.var, self.expr(e.index), e.index.type)

    def e_VecLoad(self, e: ir.VecLoad) -> int:
        return self.vload(e.var, self.expr(e.index), e.index.type, e.lanes)

    # --- builtins -------------------------------------------------------------------------------

    def builtin(self, name: str, dim: int | None = None) -> int:
        """A builtin input (u32 or v3u32), loaded once in the preamble."""

        def load():
            t = self.u32 if dim is None else self.t_vec(self.u32, 3)
            var = self.global_var(SC_INPUT, t, name)
            self.m.decorate(var, DEC_BUILTIN, BUILTIN[name])
            return self.op("Load", t, var)

        v = self.in_preamble((name,), load)
        if dim is None:
            return v
        return self.in_preamble((name, dim), lambda: self.op("CompositeExtract", self.u32, v, dim))

    def _workgroup_size(self) -> int:
        """Specialization constants 0-2 forming the WorkgroupSize builtin: each pipeline sets them."""
        ids = []
        for d in range(3):
            ids.append(self.m.id())
            self.m.globals += _inst("SpecConstant", self.u32, ids[-1], 1)
            self.m.decorate(ids[-1], DEC_SPEC_ID, d)
        comp = self.m.id()
        self.m.globals += _inst("SpecConstantComposite", self.t_vec(self.u32, 3), comp, *ids)
        self.m.decorate(comp, DEC_BUILTIN, BUILTIN["WorkgroupSize"])
        return comp

    def workgroup_size(self, dim: int) -> int:
        return self.in_preamble(("wgsize", dim), lambda: self.op(
            "CompositeExtract", self.u32, self.wgsize, dim))

    def e_Call(self, e: ir.Call) -> int:
        if e.dim is not None:
            d = e.dim
            if e.name in _ID_BUILTINS:
                v = self.builtin(_ID_BUILTINS[e.name], d)
            elif e.name == "local_size":
                v = self.workgroup_size(d)
            elif e.name == "num_groups":
                v = self.grid[d]
            else:  # global_size
                v = self.in_preamble(("gsize", d), lambda: self.op(
                    "IMul", self.u32, self.grid[d], self.workgroup_size(d)))
            return self.op("Bitcast", self.i32, v)
        if e.name.startswith("subgroup") or e.name.startswith("shuffle"):
            return self.subgroup(e)
        return self.math(e)

    _REDUCE = {"subgroup_sum": ("FAdd", "IAdd", "IAdd"), "subgroup_max": ("FMax", "SMax", "UMax"),
               "subgroup_min": ("FMin", "SMin", "UMin")}

    def subgroup(self, e: ir.Call) -> int:
        name, t = e.name, e.type
        if not self.caps.native_subgroups:  # subgroups of one invocation, as on OpenCL without them
            if name == "subgroup_local_id":
                return self.const(T.i32, 0)
            if name == "subgroup_id":
                return self.op("Bitcast", self.i32, self.builtin("LocalInvocationIndex"))
            return self.expr(e.args[0])
        self.m.cap("GroupNonUniform")
        self.subgroups = True
        if name in ("subgroup_local_id", "subgroup_id"):
            which = "SubgroupLocalInvocationId" if name == "subgroup_local_id" else "SubgroupId"
            return self.op("Bitcast", self.i32, self.builtin(which))
        x, rt, scope = self.expr(e.args[0]), self.reg(t), self.cu(SCOPE_SUBGROUP)
        if name in self._REDUCE:
            self.m.cap("GroupNonUniformArithmetic")
            kind = 0 if t.is_float else 1 if t.is_signed else 2
            return self.op("GroupNonUniform" + self._REDUCE[name][kind], rt, scope, 0, x)  # 0: Reduce
        self.m.cap("GroupNonUniformShuffle")
        lane = self.op("Bitcast", self.u32, self.expr(e.args[1]))
        size = self.caps.subgroup_size
        if size & (size - 1) == 0:  # out-of-range lanes wrap, as CUDA's shuffles do
            lane = self.op("BitwiseAnd", self.u32, lane, self.cu(size - 1))
        opname = "GroupNonUniformShuffleXor" if name == "shuffle_xor" else "GroupNonUniformShuffle"
        return self.op(opname, rt, scope, x, lane)

    _FMATH = {"exp": "Exp", "exp2": "Exp2", "log": "Log", "log2": "Log2", "sqrt": "Sqrt",
              "rsqrt": "InverseSqrt", "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "floor": "Floor",
              "ceil": "Ceil", "abs": "FAbs", "min": "NMin", "max": "NMax", "fma": "Fma"}  # N*: fmin/fmax

    def math(self, e: ir.Call) -> int:
        t, rt = e.type, self.reg(e.type)
        args = [self.expr(a) for a in e.args]
        if t.is_float:
            if e.name == "fmod":
                return self.op("FRem", rt, *args)  # the sign of the dividend, as C's fmod
            if t.bits == 64 and e.name in self._F64_SOFT:  # GLSL.std.450 has only 32-bit ones
                return getattr(self, self._F64_SOFT[e.name])(*args)
            if e.name in ("sin", "cos"):
                return self.sincos32(args[0], e.name == "cos")
            if e.name == "tanh":
                return self.tanh32(args[0])
            if e.name == "erf":
                return self.erf(args[0])
            if e.name == "pow":
                return self.pow(*args)
            if e.name == "mul_rn":  # a product the driver must not fuse into an FMA
                product = self.op("FMul", rt, *args)
                self.m.decorate(product, 42)  # NoContraction
                return product
            return self.ext(self._FMATH[e.name], rt, *args)
        if e.name == "abs":
            return self.ext("SAbs", rt, args[0]) if t.is_signed else args[0]
        return self.ext(("S" if t.is_signed else "U") + e.name.capitalize(), rt, *args)

    def _poly(self, x: int, coeffs: list[float]) -> int:
        """Horner evaluation of sum(coeffs[k] * x**k) in f32."""
        acc = self.cf(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.ext("Fma", self.f32, acc, x, self.cf(c))
        return acc

    def erf(self, x: int) -> int:
        """erf in f32 (GLSL.std.450 has none): a Taylor series below 1, an erfc fit above."""
        f, b = self.f32, self.bool
        ax = self.ext("FAbs", f, x)
        x2 = self.op("FMul", f, x, x)
        small = self.op("FMul", f, x, self._poly(x2, _ERF_TAYLOR))
        t = self.op("FDiv", f, self.cf(1.0), self.ext("Fma", f, ax, self.cf(0.5), self.cf(1.0)))
        expo = self.op("FSub", f, self._poly(t, _ERFC_FIT), self.op("FMul", f, ax, ax))
        large = self.op("FSub", f, self.cf(1.0), self.op("FMul", f, t, self.ext("Exp", f, expo)))
        neg = self.op("FOrdLessThan", b, x, self.cf(0.0))
        large = self.op("Select", f, neg, self.op("FNegate", f, large), large)
        return self.op("Select", f, self.op("FOrdLessThan", b, ax, self.cf(1.0)), small, large)

    def sincos32(self, x: int, cos: bool) -> int:
        """sin/cos in f32 within 2 ulp (GLSL's Sin/Cos are coarse hardware approximations on
        NVIDIA): r = x − k·π/2, then series on [-π/4, π/4]. The reduction is exact in f64 (π/2 in
        two parts, the first of 32 bits: exact products); without f64, in f32 with π/2 in three
        parts and fused multiply-adds (lavapipe does not fuse them; GPUs do)."""
        f, i32 = self.f32, self.i32
        if self.caps.float64:
            d = self.t_float(64)
            xd = self.op("FConvert", d, x)
            scaled = self._d("FMul", xd, self._dc(2 / math.pi))
            k = self.ext("Floor", d, self._d("FAdd", scaled, self._dc(0.5)))
            rd = xd
            for part in _PIO2[:2]:
                rd = self._d("FSub", rd, self._d("FMul", k, self._dc(part)))
            r = self.op("FConvert", f, rd)
        else:
            k = self.ext("Floor", f, self.ext("Fma", f, x, self.cf(2 / math.pi), self.cf(0.5)))
            nk, r = self.op("FNegate", f, k), x
            for part in _PIO2_F32:
                r = self.ext("Fma", f, nk, self.cf(part), r)
        r2 = self.op("FMul", f, r, r)
        sin, cos_r = self.op("FMul", f, r, self._poly(r2, _SIN32)), self._poly(r2, _COS32)
        q = self.op("IAdd", i32, self.op("ConvertFToS", i32, k), self.const(T.i32, int(cos)))

        def bit(v: int) -> int:
            return self.op("INotEqual", self.bool, self.op("BitwiseAnd", i32, q, self.const(T.i32, v)),
                           self.const(T.i32, 0))

        v = self.op("Select", f, bit(1), cos_r, sin)
        return self.op("Select", f, bit(2), self.op("FNegate", f, v), v)

    def tanh32(self, x: int) -> int:
        """tanh in f32: a series below 0.55, else 1 − 2/(e^2|x| + 1) (GLSL's Tanh is coarse)."""
        f, b = self.f32, self.bool
        a = self.ext("FAbs", f, x)
        e = self.ext("Exp", f, self.op("FMul", f, a, self.cf(2.0)))
        tail = self.op("FDiv", f, self.cf(2.0), self.op("FAdd", f, e, self.cf(1.0)))
        big = self.op("FSub", f, self.cf(1.0), tail)
        neg = self.op("FOrdLessThan", b, x, self.cf(0.0))
        big = self.op("Select", f, neg, self.op("FNegate", f, big), big)
        small = self.op("FMul", f, x, self._poly(self.op("FMul", f, x, x), _TANH_SERIES))
        return self.op("Select", f, self.op("FOrdLessThan", b, a, self.cf(0.55)), small, big)

    def pow(self, x: int, y: int, f64: bool = False) -> int:
        """C's pow: GLSL's Pow is undefined for x < 0 and x = y = 0 (and 32-bit only)."""
        f, b = self.t_float(64 if f64 else 32), self.bool
        ax = self.ext("FAbs", f, x)
        r = self.exp64(self.op("FMul", f, y, self.log64(ax))) if f64 else self.ext("Pow", f, ax, y)
        c = (lambda v: self.const(T.f64, v)) if f64 else self.cf
        integral = self.op("FOrdEqual", b, self.ext("Trunc", f, y), y)
        h = self.op("FMul", f, y, c(0.5))
        odd = self.op("FUnordNotEqual", b, self.ext("Trunc", f, h), h)
        signed = self.op("Select", f, odd, self.op("FNegate", f, r), r)
        neg = self.op("Select", f, integral, signed, c(float("nan")))
        r = self.op("Select", f, self.op("FOrdLessThan", b, x, c(0.0)), neg, r)
        return self.op("Select", f, self.op("FOrdEqual", b, y, c(0.0)), c(1.0), r)

    # --- f64 transcendentals in software: range reduction and series, ~1e-15 relative error ------

    _F64_SOFT = {"exp": "exp64", "exp2": "exp2_64", "log": "log64", "log2": "log2_64", "sin": "sin64",
                 "cos": "cos64", "tanh": "tanh64", "erf": "erf64", "pow": "pow64"}

    def _d(self, name: str, *args) -> int:
        return self.op(name, self.t_float(64), *args)

    def _dc(self, v: float) -> int:
        return self.const(T.f64, v)

    def _horner64(self, x: int, coeffs: list[float]) -> int:
        acc = self._dc(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.ext("Fma", self.t_float(64), acc, x, self._dc(c))
        return acc

    def _ldexp64(self, p: int, n: int) -> int:
        """p * 2**n (i32 n, |n| < 2000) in two steps, so that results may over- or underflow."""
        u32, i32 = self.u32, self.i32

        def pow2(k: int) -> int:  # 2**k for -1022 <= k <= 1023, built from its exponent bits
            hi = self.op("ShiftLeftLogical", u32, self.op("Bitcast", u32, self.op(
                "IAdd", i32, k, self.const(T.i32, 1023))), self.cu(20))
            return self._d("Bitcast", self.op("CompositeConstruct", self.t_vec(u32, 2), self.cu(0), hi))

        a = self.op("ShiftRightArithmetic", i32, n, self.const(T.i32, 1))
        return self._d("FMul", self._d("FMul", p, pow2(a)), pow2(self.op("ISub", i32, n, a)))

    def exp64(self, x: int, base2: bool = False) -> int:
        f = self.t_float(64)
        lo, hi = (-1076.0, 1025.0) if base2 else (-746.0, 710.0)
        c = self.ext("NMax", f, self.ext("NMin", f, x, self._dc(hi)), self._dc(lo))
        if base2:
            k = self.ext("Floor", f, self._d("FAdd", c, self._dc(0.5)))
            r = self._d("FMul", self._d("FSub", c, k), self._dc(math.log(2)))
        else:  # r = x - k·ln2 with ln2 in two parts, exact for the k that occur
            k = self.ext("Floor", f, self.ext("Fma", f, c, self._dc(1 / math.log(2)), self._dc(0.5)))
            nk = self._d("FNegate", k)
            r = self.ext("Fma", f, nk, self._dc(_LN2_LO), self.ext("Fma", f, nk, self._dc(_LN2_HI), c))
        res = self._ldexp64(self._horner64(r, _EXP64), self.op("ConvertFToS", self.i32, k))
        return self.op("Select", f, self.op("IsNan", self.bool, x), x, res)

    def exp2_64(self, x: int) -> int:
        return self.exp64(x, base2=True)

    def _log_parts64(self, x: int) -> tuple[int, int]:
        """x = m·2**e with m in [√½, √2): (e as f64, log(m))."""
        f, u32, i32 = self.t_float(64), self.u32, self.i32
        tiny = self.op("FOrdLessThan", self.bool, x, self._dc(2.0 ** -1022))
        xs = self.op("Select", f, tiny, self._d("FMul", x, self._dc(2.0 ** 54)), x)
        words = self.op("Bitcast", self.t_vec(u32, 2), xs)
        low, high = (self.op("CompositeExtract", u32, words, k) for k in (0, 1))
        biased = self.op("Bitcast", i32, self.op("ShiftRightLogical", u32, high, self.cu(20)))
        e = self.op("ISub", i32, biased, self.const(T.i32, 1023))
        e = self.op("Select", i32, tiny, self.op("ISub", i32, e, self.const(T.i32, 54)), e)
        mhigh = self.op("BitwiseOr", u32, self.op("BitwiseAnd", u32, high, self.cu(0xFFFFF)),
                        self.cu(0x3FF00000))
        m = self._d("Bitcast", self.op("CompositeConstruct", self.t_vec(u32, 2), low, mhigh))
        big = self.op("FOrdGreaterThan", self.bool, m, self._dc(math.sqrt(2)))
        m = self.op("Select", f, big, self._d("FMul", m, self._dc(0.5)), m)
        e = self.op("Select", i32, big, self.op("IAdd", i32, e, self.const(T.i32, 1)), e)
        s = self._d("FDiv", self._d("FSub", m, self._dc(1.0)), self._d("FAdd", m, self._dc(1.0)))
        return self.op("ConvertSToF", f, e), self._d("FMul", s, self._horner64(self._d("FMul", s, s), _LOG64))

    def _log_special(self, x: int, r: int) -> int:
        f, b = self.t_float(64), self.bool
        inf = float("inf")
        r = self.op("Select", f, self.op("FOrdEqual", b, x, self._dc(inf)), x, r)
        r = self.op("Select", f, self.op("FOrdEqual", b, x, self._dc(0.0)), self._dc(-inf), r)
        bad = self.op("LogicalOr", b, self.op("FOrdLessThan", b, x, self._dc(0.0)), self.op("IsNan", b, x))
        return self.op("Select", f, bad, self._dc(float("nan")), r)

    def log64(self, x: int) -> int:
        f = self.t_float(64)
        e, lm = self._log_parts64(x)
        r = self.ext("Fma", f, e, self._dc(_LN2_HI), self.ext("Fma", f, e, self._dc(_LN2_LO), lm))
        return self._log_special(x, r)

    def log2_64(self, x: int) -> int:
        e, lm = self._log_parts64(x)
        return self._log_special(x, self.ext("Fma", self.t_float(64), lm, self._dc(1 / math.log(2)), e))

    def _sincos64(self, x: int, quarter: int) -> int:
        """sin(x + quarter·π/2): reduce by multiples of π/2 (in three parts), then series."""
        f, i32 = self.t_float(64), self.i32
        k = self.ext("Floor", f, self.ext("Fma", f, x, self._dc(2 / math.pi), self._dc(0.5)))
        nk, r = self._d("FNegate", k), x
        for part in _PIO2:
            r = self.ext("Fma", f, nk, self._dc(part), r)
        r2 = self._d("FMul", r, r)
        sin, cos = self._d("FMul", r, self._horner64(r2, _SIN64)), self._horner64(r2, _COS64)
        q = self.op("IAdd", i32, self.op("ConvertFToS", i32, k), self.const(T.i32, quarter))

        def bit(v: int) -> int:
            return self.op("INotEqual", self.bool, self.op("BitwiseAnd", i32, q, self.const(T.i32, v)),
                           self.const(T.i32, 0))

        v = self.op("Select", f, bit(1), cos, sin)
        return self.op("Select", f, bit(2), self._d("FNegate", v), v)

    def sin64(self, x: int) -> int:
        return self._sincos64(x, 0)

    def cos64(self, x: int) -> int:
        return self._sincos64(x, 1)

    def tanh64(self, x: int) -> int:
        f, b = self.t_float(64), self.bool
        a = self.ext("FAbs", f, x)
        e = self.exp64(self._d("FMul", a, self._dc(-2.0)))
        t = self._d("FDiv", self._d("FSub", self._dc(1.0), e), self._d("FAdd", self._dc(1.0), e))
        t = self.op("Select", f, self.op("FOrdLessThan", b, x, self._dc(0.0)), self._d("FNegate", t), t)
        small = self._d("FMul", x, self._horner64(self._d("FMul", x, x), _TANH_SERIES[:6]))
        return self.op("Select", f, self.op("FOrdLessThan", b, a, self._dc(0.0625)), small, t)

    def erf64(self, x: int) -> int:
        """Taylor series below 2.5; above, erfc by its continued fraction (30 terms)."""
        f, b = self.t_float(64), self.bool
        a = self.ext("FAbs", f, x)
        small = self._d("FMul", x, self._horner64(self._d("FMul", x, x), _ERF64))
        frac = a
        for k in range(30, 0, -1):
            frac = self._d("FAdd", a, self._d("FDiv", self._dc(k / 2), frac))
        tail = self._d("FDiv", self.exp64(self._d("FNegate", self._d("FMul", a, a))),
                       self._d("FMul", frac, self._dc(math.sqrt(math.pi))))
        large = self._d("FSub", self._dc(1.0), tail)
        large = self.op("Select", f, self.op("FOrdLessThan", b, x, self._dc(0.0)), self._d("FNegate", large),
                        large)
        return self.op("Select", f, self.op("FOrdLessThan", b, a, self._dc(2.5)), small, large)

    def pow64(self, x: int, y: int) -> int:
        return self.pow(x, y, f64=True)

    # --- memory ---------------------------------------------------------------------------------

    def _index(self, i: int, it: T.ScalarType, bits: int) -> int:
        """An element index as an unsigned `bits`-wide integer (i32 sign-extends to 64 bits)."""
        if it.bits != bits:
            i = self.op("SConvert" if it.is_signed else "UConvert", self.t_int(bits, it.is_signed), i)
        return self.op("Bitcast", self.t_int(bits, False), i) if it.is_signed else i

    def _native(self, var: ir.Var) -> bool:
        """Whether a buffer's elements are accessed as typed memory (else as u32 words)."""
        e = var.type.elem
        if not self.caps.bda:
            return False
        if e.bits < 32:
            ok = self.caps.storage8 if e.bits == 8 else self.caps.storage16
            if ok:
                self.m.cap("StorageBuffer8BitAccess" if e.bits == 8 else "StorageBuffer16BitAccess")
            return ok
        return True

    def _elem_ptr(self, var: ir.Var, pointee: int, size: int, i: int) -> int:
        """BDA: a PhysicalStorageBuffer pointer to element `i` of a buffer viewed as `pointee`s."""
        self.m.cap("PhysicalStorageBufferAddresses")
        ptype = self.t_ptr(SC_PSB, pointee, size)
        base = self.in_preamble(("base", id(var), pointee), lambda: self.op(
            "ConvertUToPtr", ptype, self.bufs[id(var)].addr))
        return self.op("PtrAccessChain", ptype, base, i)

    def _word(self, var: ir.Var, i: int, it: T.ScalarType, size: int, extra: int = 0) -> tuple[int, int, int]:
        """The u32 word holding byte `i*size + extra` of a buffer: (pointer, bit shift, alignment)."""
        buf, u32 = self.bufs[id(var)], self.u32
        if buf.addr is not None:
            self.m.cap("PhysicalStorageBufferAddresses")
            u64 = self.t_int(64, False)
            a = self.op("IAdd", u64, buf.addr, self.op("IMul", u64, self._index(i, it, 64),
                                                        self.const(T.u64, size)))
            if extra:
                a = self.op("IAdd", u64, a, self.const(T.u64, extra))
            word_addr = self.op("BitwiseAnd", u64, a, self.const(T.u64, ~3 & (2 ** 64 - 1)))
            ptr = self.op("ConvertUToPtr", self.t_ptr(SC_PSB, u32, 4), word_addr)
            low = self.op("UConvert", u32, self.op("BitwiseAnd", u64, a, self.const(T.u64, 3)))
            return ptr, self.op("ShiftLeftLogical", u32, low, self.cu(3)), 4
        a = self.op("IAdd", u32, buf.off, self.op("IMul", u32, self._index(i, it, 32), self.cu(size)))
        if extra:
            a = self.op("IAdd", u32, a, self.cu(extra))
        word = self.op("ShiftRightLogical", u32, a, self.cu(2))
        ptr = self.op("AccessChain", self.t_ptr(SC_STORAGE, u32), buf.var, self.const(T.i32, 0), word)
        low = self.op("BitwiseAnd", u32, a, self.cu(3))
        return ptr, self.op("ShiftLeftLogical", u32, low, self.cu(3)), None

    def _array_ptr(self, var: ir.Var, i: int) -> tuple[int, int, str]:
        st, how = self.array_elem(var)
        sc = SC_WORKGROUP if var.type.space == "shared" else SC_FUNCTION
        return self.op("AccessChain", self.t_ptr(sc, st), self.ptrs[id(var)], i), st, how

    def widen(self, t: T.ScalarType, s: int) -> int:
        """An 8/16-bit memory value (see `narrow_type`) → its register value."""
        if t.is_bool:
            return self.op("INotEqual", self.bool, self.op("UConvert", self.u32, s), self.cu(0))
        if t == T.f16:
            return self.op("FConvert", self.f32, s)
        if t == T.bf16:
            wide = self.op("UConvert", self.u32, s)
            return self.op("Bitcast", self.f32, self.op("ShiftLeftLogical", self.u32, wide, self.cu(16)))
        return self.op("SConvert" if t.is_signed else "UConvert", self.reg(t), s)

    def narrow(self, t: T.ScalarType, r: int) -> int:
        """A register value → its 8/16-bit memory value (exact: 16-bit floats are already rounded)."""
        st = self.narrow_type(t)
        if t.is_bool:
            return self.op("UConvert", st, self.op("Select", self.u32, r, self.cu(1), self.cu(0)))
        if t == T.f16:
            self.rte16 |= self.caps.rte16
            return self.op("FConvert", st, r)
        if t == T.bf16:
            bits = self.op("ShiftRightLogical", self.u32, self.op("Bitcast", self.u32, r), self.cu(16))
            return self.op("UConvert", st, bits)
        return self.op("SConvert" if t.is_signed else "UConvert", st, r)

    def load(self, var: ir.Var, i: int, it: T.ScalarType) -> int:
        e = var.type.elem
        if isinstance(var.type, T.ArrayType):
            ptr, st, how = self._array_ptr(var, i)
            s = self.op("Load", st, ptr)
            return self.widen(e, s) if how == "narrow" else self.op("Bitcast", self.f32, s) \
                if how == "bits" else s
        if self._native(var):
            st = self.narrow_type(e) if e.bits < 32 else self.reg(e)
            s = self.load_mem(st, self._elem_ptr(var, st, e.itemsize, i), e.itemsize)
            return self.widen(e, s) if e.bits < 32 else s
        return self._load_words(var, i, it)

    def _load_words(self, var: ir.Var, i: int, it: T.ScalarType) -> int:
        e, u32 = var.type.elem, self.u32
        ptr, shift, align = self._word(var, i, it, e.itemsize)
        w = self.load_mem(u32, ptr, align)
        if e.bits < 32:
            return self.from_bits(e, w, shift)
        if e.bits == 64:
            hi_ptr, _, _ = self._word(var, i, it, 8, extra=4)
            u64 = self.t_int(64, False)
            hi = self.op("UConvert", u64, self.load_mem(u32, hi_ptr, align))
            w = self.op("BitwiseOr", u64, self.op("UConvert", u64, w),
                        self.op("ShiftLeftLogical", u64, hi, self.cu(32)))
            return w if e == T.u64 else self.op("Bitcast", self.reg(e), w)
        return w if e == T.u32 else self.op("Bitcast", self.reg(e), w)

    def store(self, var: ir.Var, i: int, it: T.ScalarType, v: int) -> None:
        e = var.type.elem
        if isinstance(var.type, T.ArrayType):
            ptr, _, how = self._array_ptr(var, i)
            s = self.narrow(e, v) if how == "narrow" else self.op("Bitcast", self.u32, v) \
                if how == "bits" else v
            self.do("Store", ptr, s)
        elif self._native(var):
            st = self.narrow_type(e) if e.bits < 32 else self.reg(e)
            s = self.narrow(e, v) if e.bits < 32 else v
            self.store_mem(self._elem_ptr(var, st, e.itemsize, i), s, e.itemsize)
        else:
            self._store_words(var, i, it, v)

    def _store_words(self, var: ir.Var, i: int, it: T.ScalarType, v: int) -> None:
        e, u32 = var.type.elem, self.u32
        ptr, shift, align = self._word(var, i, it, e.itemsize)
        if e.bits < 32:  # neighbours in the word may be stored concurrently: merge atomically
            scope, relaxed = self.cu(SCOPE_DEVICE), self.cu(0)
            mask = self.op("ShiftLeftLogical", u32, self.cu((1 << e.bits) - 1), shift)
            self.op("AtomicAnd", u32, ptr, scope, relaxed, self.op("Not", u32, mask))
            bits = self.op("ShiftLeftLogical", u32, self.to_bits(e, v), shift)
            self.op("AtomicOr", u32, ptr, scope, relaxed, bits)
            return
        if e.bits == 64:
            u64 = self.t_int(64, False)
            w = v if e == T.u64 else self.op("Bitcast", u64, v)
            hi_ptr, _, _ = self._word(var, i, it, 8, extra=4)
            self.store_mem(ptr, self.op("UConvert", u32, w), align)
            hi = self.op("ShiftRightLogical", u64, w, self.cu(32))
            self.store_mem(hi_ptr, self.op("UConvert", u32, hi), align)
            return
        self.store_mem(ptr, v if e == T.u32 else self.op("Bitcast", u32, v), align)

    def _lane_index(self, i: int, it: T.ScalarType, lanes: int, k: int) -> int:
        rt = self.reg(it)
        return self.op("IAdd", rt, self.op("IMul", rt, i, self.const(it, lanes)), self.const(it, k))

    def _aligned(self, var: ir.Var, lanes: int) -> None:
        """Note that the view passed for `var` must be aligned to the vector (on every device)."""
        slot = self.k.params.index(var)
        self.vector_align[slot] = max(self.vector_align.get(slot, 1), lanes * var.type.elem.itemsize)

    def vload(self, var: ir.Var, i: int, it: T.ScalarType, lanes: int) -> int:
        """Elements i*lanes … i*lanes+lanes-1: one aligned vector access where memory is typed."""
        e = var.type.elem
        self._aligned(var, lanes)
        vt = self.reg(T.VectorType(e, lanes))
        if not self._native(var):
            elems = [self._load_words(var, self._lane_index(i, it, lanes, k), it) for k in range(lanes)]
            return self.op("CompositeConstruct", vt, *elems)
        st = self.narrow_type(e) if e.bits < 32 else self.reg(e)
        svt = self.t_vec(st, lanes)
        v = self.load_mem(svt, self._elem_ptr(var, svt, e.itemsize * lanes, i), e.itemsize * lanes)
        if e.bits >= 32:
            return v
        elems = [self.widen(e, self.op("CompositeExtract", st, v, k)) for k in range(lanes)]
        return self.op("CompositeConstruct", vt, *elems)

    def vstore(self, var: ir.Var, i: int, it: T.ScalarType, lanes: int, v: int) -> None:
        e = var.type.elem
        self._aligned(var, lanes)
        re = self.reg(e)
        if not self._native(var):
            for k in range(lanes):
                lane = self.op("CompositeExtract", re, v, k)
                self._store_words(var, self._lane_index(i, it, lanes, k), it, lane)
            return
        st = self.narrow_type(e) if e.bits < 32 else re
        svt = self.t_vec(st, lanes)
        if e.bits < 32:
            v = self.op("CompositeConstruct", svt, *[
                self.narrow(e, self.op("CompositeExtract", re, v, k)) for k in range(lanes)])
        self.store_mem(self._elem_ptr(var, svt, e.itemsize * lanes, i), v, e.itemsize * lanes)

    # --- atomics --------------------------------------------------------------------------------

    _ATOMIC = {"add": ("AtomicIAdd", "AtomicIAdd"), "min": ("AtomicSMin", "AtomicUMin"),
               "max": ("AtomicSMax", "AtomicUMax"), "xchg": ("AtomicExchange", "AtomicExchange")}

    def e_Atomic(self, e: ir.Atomic) -> int:
        var, elem = e.var, e.var.type.elem
        i = self.expr(e.index)
        args = [self.expr(a) for a in e.args]
        # the 32-bit location: typed as the element where possible, else as u32 bits
        float_add = e.op == "add" and elem == T.f32
        if isinstance(var.type, T.ArrayType):
            ptr, pt, _ = self._array_ptr(var, i)
            scope, native_fadd = SCOPE_WORKGROUP, self.caps.atomic_add_f32_shared
        elif self.caps.bda:
            native_fadd = self.caps.atomic_add_f32_buffer
            pt = self.reg(elem) if elem != T.f32 or (float_add and native_fadd) else self.u32
            ptr, scope = self._elem_ptr(var, pt, 4, i), SCOPE_DEVICE
        else:
            (ptr, _, _), pt = self._word(var, i, e.index.type, 4), self.u32
            scope, native_fadd = SCOPE_DEVICE, False
        sc, relaxed = self.cu(scope), self.cu(0)
        if float_add:
            if pt == self.f32 and native_fadd:
                self.m.cap("AtomicFloat32AddEXT")
                self.m.extensions["SPV_EXT_shader_atomic_float_add"] = None
                return self.op("AtomicFAddEXT", self.f32, ptr, sc, relaxed, args[0])
            return self._cas_add(ptr, sc, args[0])
        rt = self.reg(elem)
        args = [a if pt == rt else self.op("Bitcast", pt, a) for a in args]
        if e.op == "cas":  # IR args: (compare, value)
            old = self.op("AtomicCompareExchange", pt, ptr, sc, relaxed, relaxed, args[1], args[0])
        else:
            old = self.op(self._ATOMIC[e.op][0 if elem.is_signed else 1], pt, ptr, sc, relaxed, args[0])
        return old if pt == rt else self.op("Bitcast", rt, old)

    def _cas_add(self, ptr: int, scope: int, v: int) -> int:
        """Float atomic add as a compare-exchange loop on the u32 bits; yields the old value."""
        u32, relaxed = self.u32, self.cu(0)
        init = self.op("AtomicLoad", u32, ptr, scope, relaxed)
        start = self.cur
        header, body, cont, merge = (self.m.id() for _ in range(4))
        cur, seen = self.m.id(), self.m.id()
        self.branch(header)
        self.label(header)
        self.op("Phi", u32, init, start, seen, cont, rid=cur)
        self.do("LoopMerge", merge, cont, 0)
        self.branch(body)
        self.label(body)
        new = self.op("FAdd", self.f32, self.op("Bitcast", self.f32, cur), v)
        self.op("AtomicCompareExchange", u32, ptr, scope, relaxed, relaxed,
                self.op("Bitcast", u32, new), cur, rid=seen)
        self.do("BranchConditional", self.op("IEqual", self.bool, seen, cur), merge, cont)
        self.label(cont)
        self.branch(header)
        self.label(merge)
        return self.op("Bitcast", self.f32, seen)


# --- entry points -------------------------------------------------------------------------------

_LN2_HI, _LN2_LO = 0.6931471803691238, 1.9082149292705877e-10  # ln 2 = HI + LO, HI with 32 bits
_PIO2 = (1.5707963267341256, 6.077100506303966e-11, 2.0222662487959506e-21)  # π/2 in three parts
_EXP64 = [1 / math.factorial(n) for n in range(14)]
_LOG64 = [2 / (2 * n + 1) for n in range(11)]  # log(m) = s·Σ 2s²ⁿ/(2n+1), s = (m-1)/(m+1)
_SIN64 = [(-1) ** n / math.factorial(2 * n + 1) for n in range(9)]
_COS64 = [(-1) ** n / math.factorial(2 * n) for n in range(10)]
_PIO2_F32 = (1.5707963705062866, -4.371138828673793e-08, -1.7151245100058819e-15)  # f32 parts
_SIN32 = [(-1) ** n / math.factorial(2 * n + 1) for n in range(7)]
_COS32 = [(-1) ** n / math.factorial(2 * n) for n in range(8)]
_TANH_SERIES = [1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 0.003592128036572481,
                -0.0014558343870513183, 0.000590027440945586, -0.00023912911424355248]  # Bernoulli
_ERF64 = [2 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(39)]
_STRUCT_FMT = {"f32": "f", "f64": "d", "i32": "i", "u32": "I", "i64": "q", "u64": "Q"}
_ERF_TAYLOR = [2 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(11)]
# erfc(z) ≈ t·exp(-z² + P(t)), t = 1/(1 + z/2): the Chebyshev fit of Numerical Recipes (6.2),
# fractional error below 1.2e-7
_ERFC_FIT = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
             1.48851587, -0.82215223, 0.17087277]


def render(kernel: ir.Kernel, caps: Caps) -> SpirvModule:
    if not isinstance(caps, VulkanCaps):
        caps = VulkanCaps(**{f.name: getattr(caps, f.name) for f in fields(Caps)})
    return _Printer(kernel, caps).render()


def disassemble(binary: bytes) -> str:
    """`spirv-dis` output where the tool is installed, else a plain opcode listing."""
    tool = shutil.which("spirv-dis")
    if tool:
        done = subprocess.run([tool, "-", "-o", "-"], input=binary, capture_output=True)
        if done.returncode == 0:
            return done.stdout.decode()
    words = struct.unpack(f"<{len(binary) // 4}I", binary)
    out, k = [f"; SPIR-V {words[1] >> 16 & 0xFF}.{words[1] >> 8 & 0xFF}, bound {words[3]}"], 5
    while k < len(words):
        n, opcode = words[k] >> 16, words[k] & 0xFFFF
        out.append(f"Op{_OP_NAMES.get(opcode, opcode)} " + " ".join(map(str, words[k + 1:k + n])))
        k += max(n, 1)
    return "\n".join(out) + "\n"


def validate(binary: bytes, env: str = "vulkan1.2") -> str:
    """`spirv-val`'s complaints about a module: "" when it is valid or spirv-val is not installed."""
    tool = shutil.which("spirv-val")
    if tool is None:
        return ""
    done = subprocess.run([tool, "--target-env", env, "-"], input=binary, capture_output=True)
    return "" if done.returncode == 0 else (done.stderr + done.stdout).decode()


DEFAULT_CAPS = VulkanCaps("vulkan", subgroup_size=32, native_subgroups=True, fp16=True)
