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
- **Rounding**: values reaching 16-bit memory are already rounded by a `Cast`, so stores convert
  exactly; a Cast to f16 uses OpFConvert under the RoundingModeRTE execution mode when the device
  guarantees it, else integer arithmetic; bf16 always rounds with integer arithmetic.
- **Debug info**: OpString/OpLine carry the Python file and line of every statement, so the
  `spirv-dis` listing (`kernel.source("vulkan")`) reads against the kernel's source.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field

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
ConvertSToF=111 ConvertUToF=112 UConvert=113 SConvert=114 FConvert=115 ConvertUToPtr=120
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
_F64_MISSING = {"exp", "exp2", "log", "log2", "sin", "cos", "tanh", "erf", "pow"}


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

    slot: int  # index into SpirvModule.params; -1 for the grid (3 × u32)
    offset: int
    fmt: str  # struct-module format: "Q" address, "I" byte offset, or the scalar's format


@dataclass
class SpirvModule(Generated):
    """A SPIR-V module plus what the runtime needs to launch it."""

    binary: bytes = b""
    push_size: int = 0
    push_fields: list[PushField] = field(default_factory=list)
    bindings: int = 0  # descriptor mode: storage-buffer bindings 0..n-1, one per buffer param
    subgroups: bool = False  # uses subgroup operations (the pipeline pins the subgroup size)


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
        words += _inst("MemoryModel", 5348 if physical else 0, 1)  # (PhysicalStorageBuffer64|Logical, GLSL450)
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
                v = float(T.from_bf16_bits(T.to_bf16_bits(np.float32(v)))[()])
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
        return SpirvModule(disassemble(binary), self.k.name, params, binary=binary,
                           push_size=self.push_size, push_fields=self.push_fields,
                           bindings=self.nbindings, subgroups=self.subgroups)
