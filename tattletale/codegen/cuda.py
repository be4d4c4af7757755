"""CUDA C dialect of the C-family printer (compiled by NVRTC)."""

from __future__ import annotations

from ..dsl import types as T
from . import ir
from .cfamily import Caps, CPrinter

_VEC_BASE = {"f32": "float", "f64": "double", "i8": "char", "u8": "uchar", "i16": "short",
             "u16": "ushort", "i32": "int", "u32": "uint", "i64": "longlong", "u64": "ulonglong"}
_WARP_MASK = "0xffffffffu"


def _fp16_helpers() -> dict[str, str]:
    h = {
        "tt_f16_value": "__device__ __forceinline__ float tt_f16_value(unsigned short h) "
                        "{ float f; asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h)); return f; }",
        "tt_f16_bits": "__device__ __forceinline__ unsigned short tt_f16_bits(float f) "
                       "{ unsigned short h; asm(\"cvt.rn.f16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(f)); "
                       "return h; }",
        "tt_bf16_value": "__device__ __forceinline__ float tt_bf16_value(unsigned short h) "
                         "{ return __uint_as_float(((unsigned)h) << 16); }",
        "tt_bf16_bits": "__device__ __forceinline__ unsigned short tt_bf16_bits(float f) "
                        "{ unsigned short h; asm(\"cvt.rn.bf16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(f)); "
                        "return h; }",
    }
    for t in ("f16", "bf16"):
        h[f"tt_round_{t}"] = (f"__device__ __forceinline__ float tt_round_{t}(float f) "
                              f"{{ return tt_{t}_value(tt_{t}_bits(f)); }}")
        for lanes, word in ((2, "unsigned"), (4, "uint2")):
            vt = f"float{lanes}"
            if lanes == 2:
                unpack = f"make_float2(tt_{t}_value(r & 0xffffu), tt_{t}_value(r >> 16))"
                pack = f"{word} r = tt_{t}_bits(v.x) | ((unsigned)tt_{t}_bits(v.y) << 16);"
            else:
                unpack = (f"make_float4(tt_{t}_value(r.x & 0xffffu), tt_{t}_value(r.x >> 16), "
                          f"tt_{t}_value(r.y & 0xffffu), tt_{t}_value(r.y >> 16))")
                pack = (f"{word} r; r.x = tt_{t}_bits(v.x) | ((unsigned)tt_{t}_bits(v.y) << 16); "
                        f"r.y = tt_{t}_bits(v.z) | ((unsigned)tt_{t}_bits(v.w) << 16);")
            h[f"tt_vload_{t}x{lanes}"] = (
                f"__device__ __forceinline__ {vt} tt_vload_{t}x{lanes}(const unsigned short* p, "
                f"long long i) {{ {word} r = ((const {word}*)p)[i]; return {unpack}; }}")
            h[f"tt_vstore_{t}x{lanes}"] = (
                f"__device__ __forceinline__ void tt_vstore_{t}x{lanes}(unsigned short* p, "
                f"long long i, {vt} v) {{ {pack} (({word}*)p)[i] = r; }}")
    return h


def _warp_reduce_helpers() -> dict[str, str]:
    h = {}
    for t, ct in (("f32", "float"), ("i32", "int"), ("u32", "unsigned")):
        fmin, fmax = ("fminf", "fmaxf") if t == "f32" else ("min", "max")
        for op, combine in (("sum", "v + o"), ("max", f"{fmax}(v, o)"), ("min", f"{fmin}(v, o)")):
            h[f"tt_subgroup_{op}_{t}"] = (
                f"__device__ __forceinline__ {ct} tt_subgroup_{op}_{t}({ct} v) {{ "
                f"for (int s = 16; s > 0; s >>= 1) {{ {ct} o = __shfl_xor_sync({_WARP_MASK}, v, s); "
                f"v = {combine}; }} return v; }}")
    h["tt_linear_tid"] = ("__device__ __forceinline__ unsigned tt_linear_tid() { return threadIdx.x + "
                          "blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }")
    return h


class CudaPrinter(CPrinter):
    value_types = {
        "f32": "float", "f64": "double", "f16": "float", "bf16": "float", "i8": "signed char",
        "u8": "unsigned char", "i16": "short", "u16": "unsigned short", "i32": "int",
        "u32": "unsigned", "i64": "long long", "u64": "unsigned long long", "bool": "bool",
    }
    kernel_qualifier = 'extern "C" __global__ void'
    extra_reserved = frozenset(
        [f"{pre}{b}{n}" for b in _VEC_BASE.values() for n in (2, 4) for pre in ("", "make_")]
        + ["atomicAdd", "atomicMin", "atomicMax", "atomicExch", "atomicCAS", "llabs"])
    shared_qualifier = "__shared__ "
    barrier_stmt = "__syncthreads();"
    id_exprs = {
        "global_id": "((int)(blockIdx.{d} * blockDim.{d} + threadIdx.{d}))",
        "local_id": "((int)threadIdx.{d})",
        "group_id": "((int)blockIdx.{d})",
        "local_size": "((int)blockDim.{d})",
        "num_groups": "((int)gridDim.{d})",
        "global_size": "((int)(gridDim.{d} * blockDim.{d}))",
    }
    float_math = {n: n + "f" for n in ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin", "cos",
                                       "tanh", "floor", "ceil", "erf", "pow", "fmod")}
    float_math.update(abs="fabsf", min="fminf", max="fmaxf", fma="fmaf", mul_rn="__fmul_rn")
    double_math = {n: n for n in ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin", "cos",
                                  "tanh", "floor", "ceil", "erf", "pow", "fmod")}
    double_math.update(abs="fabs", min="fmin", max="fmax", fma="fma", mul_rn="__dmul_rn")
    bitcast_fns = {
        ("f32", "i32"): "__float_as_int", ("f32", "u32"): "__float_as_uint",
        ("i32", "f32"): "__int_as_float", ("u32", "f32"): "__uint_as_float",
        ("f64", "i64"): "__double_as_longlong",
        ("f64", "u64"): "(unsigned long long)__double_as_longlong",
        ("i64", "f64"): "__longlong_as_double", ("u64", "f64"): "__longlong_as_double",
    }
    helpers = {**_fp16_helpers(), **_warp_reduce_helpers()}
    helper_deps = {
        **{f"tt_round_{t}": (f"tt_{t}_value", f"tt_{t}_bits") for t in ("f16", "bf16")},
        **{f"tt_v{op}_{t}x{n}": (f"tt_{t}_value", f"tt_{t}_bits")
           for op in ("load", "store") for t in ("f16", "bf16") for n in (2, 4)},
    }

    def vector_type(self, t: T.VectorType) -> str:
        elem = T.f32 if t.elem.is_float and t.elem.bits == 16 else t.elem
        return f"{_VEC_BASE[elem.name]}{t.lanes}"

    def nan_literal(self, t):
        return "__longlong_as_double(0x7ff8000000000000LL)" if t.bits == 64 else \
            "__int_as_float(0x7fc00000)"

    def inf_literal(self, t):
        return "__longlong_as_double(0x7ff0000000000000LL)" if t.bits == 64 else \
            "__int_as_float(0x7f800000)"

    def int_math(self, name, t, args):
        if name == "abs" and t.is_signed:
            return f"{'llabs' if t.bits == 64 else 'abs'}({args[0]})"
        return super().int_math(name, t, args)

    def e_VecLoad(self, e: ir.VecLoad) -> str:
        t, n = e.var.type.elem, e.lanes
        if t.is_float and t.bits == 16:
            return f"{self.need(f'tt_vload_{t.name}x{n}')}({self.name(e.var)}, {self.expr(e.index)})"
        vt = self.vector_type(e.type)
        return f"((const {vt}*){self.name(e.var)})[{self.expr(e.index)}]"

    def vec_store(self, var, index, value) -> str:
        t, n = var.type.elem, value.type.lanes
        if t.is_float and t.bits == 16:
            fn = self.need(f"tt_vstore_{t.name}x{n}")
            return f"{fn}({self.name(var)}, {index}, {self.expr(value)})"
        vt = self.vector_type(value.type)
        return f"(({vt}*){self.name(var)})[{index}] = {self.expr(value)}"

    def e_MakeVec(self, e: ir.MakeVec) -> str:
        return f"make_{self.vector_type(e.type)}({', '.join(self.expr(x) for x in e.elems)})"

    _ATOMIC_FNS = {"add": "atomicAdd", "min": "atomicMin", "max": "atomicMax",
                   "xchg": "atomicExch", "cas": "atomicCAS"}

    def e_Atomic(self, e: ir.Atomic) -> str:
        args = ", ".join(self.expr(a) for a in e.args)
        return f"{self._ATOMIC_FNS[e.op]}(&{self.name(e.var)}[{self.expr(e.index)}], {args})"

    def subgroup(self, name, t, args):
        tid = self.need("tt_linear_tid")
        if name == "subgroup_local_id":
            return f"((int)({tid}() & 31u))"
        if name == "subgroup_id":
            return f"((int)({tid}() >> 5))"
        if name in ("shuffle", "subgroup_broadcast"):
            return f"__shfl_sync({_WARP_MASK}, {args[0]}, {args[1]})"
        if name == "shuffle_xor":
            return f"__shfl_xor_sync({_WARP_MASK}, {args[0]}, {args[1]})"
        op = name[len("subgroup_"):]
        return f"{self.need(f'tt_subgroup_{op}_{t.name}')}({args[0]})"


def render(kernel: ir.Kernel, caps: Caps):
    return CudaPrinter(kernel, caps).render()


DEFAULT_CAPS = Caps("cuda", subgroup_size=32, native_subgroups=True, fp16=True, arch="sm_90")
