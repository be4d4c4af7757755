"""OpenCL C dialect of the C-family printer.

Buffers are passed as (base pointer, element offset) pairs so tensor views need no sub-buffers.
f16 memory is accessed with `vload_half`/`vstore_half_rte`, which every OpenCL device has (PoCL
lacks `cl_khr_fp16`). Devices without subgroup extensions get subgroups of size 1: a correct,
portable degenerate case that kernels written against `tt.subgroup_size()` handle.
"""

from __future__ import annotations

from ..dsl import types as T
from . import ir
from .cfamily import Caps, CPrinter

_BF16 = {
    "tt_bf16_value": "inline float tt_bf16_value(ushort h) { return as_float(((uint)h) << 16); }",
    "tt_bf16_bits": ("inline ushort tt_bf16_bits(float f) { uint u = as_uint(f); "
                     "if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u); "
                     "return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); }"),
    "tt_round_bf16": "inline float tt_round_bf16(float f) { return tt_bf16_value(tt_bf16_bits(f)); }",
    "tt_f16_value": "inline float tt_f16_value(ushort h) { return vload_half(0, (const half*)&h); }",
    "tt_f16_bits": ("inline ushort tt_f16_bits(float f) { ushort h; vstore_half_rte(f, 0, (half*)&h); "
                    "return h; }"),
    "tt_round_f16": "inline float tt_round_f16(float f) { return tt_f16_value(tt_f16_bits(f)); }",
    "tt_bf16x2_value": ("inline float2 tt_bf16x2_value(ushort2 v) "
                        "{ return (float2)(tt_bf16_value(v.x), tt_bf16_value(v.y)); }"),
    "tt_bf16x4_value": ("inline float4 tt_bf16x4_value(ushort4 v) { return (float4)(tt_bf16_value(v.x), "
                        "tt_bf16_value(v.y), tt_bf16_value(v.z), tt_bf16_value(v.w)); }"),
    "tt_bf16x2_bits": ("inline ushort2 tt_bf16x2_bits(float2 v) "
                       "{ return (ushort2)(tt_bf16_bits(v.x), tt_bf16_bits(v.y)); }"),
    "tt_bf16x4_bits": ("inline ushort4 tt_bf16x4_bits(float4 v) { return (ushort4)(tt_bf16_bits(v.x), "
                       "tt_bf16_bits(v.y), tt_bf16_bits(v.z), tt_bf16_bits(v.w)); }"),
}
_ATOMIC_FLOAT = {
    f"tt_atomic_add_f32_{space}": (
        f"inline float tt_atomic_add_f32_{space}(volatile __{space} float* p, float v) {{ "
        f"uint old = as_uint(*p), seen; do {{ seen = old; old = atomic_cmpxchg("
        f"(volatile __{space} uint*)p, seen, as_uint(as_float(seen) + v)); }} while (old != seen); "
        f"return as_float(old); }}")
    for space in ("global", "local")
}
_MUL_RN = {
    "tt_mul_rn": "inline float tt_mul_rn(float a, float b) { return a * b; }",
    "tt_mul_rn_f64": "inline double tt_mul_rn_f64(double a, double b) { return a * b; }",
}
_LINEAR_LID = ("((int)(get_local_id(0) + get_local_size(0) * (get_local_id(1) + get_local_size(1) * "
               "get_local_id(2))))")


class OpenCLPrinter(CPrinter):
    value_types = {
        "f32": "float", "f64": "double", "f16": "float", "bf16": "float", "i8": "char",
        "u8": "uchar", "i16": "short", "u16": "ushort", "i32": "int", "u32": "uint", "i64": "long",
        "u64": "ulong", "bool": "bool",
    }
    kernel_qualifier = "__kernel void"
    extra_reserved = frozenset(
        [f"{b}{n}" for b in ("char", "uchar", "short", "ushort", "int", "uint", "long", "ulong",
                             "float", "double") for n in (2, 4)]
        + [f"{f}{n}" for f in ("vload", "vstore") for n in (2, 4)]
        + [f"vload_half{n}" for n in ("", 2, 4)] + [f"vstore_half{n}_rte" for n in ("", 2, 4)]
        + ["atomic_add", "atomic_min", "atomic_max", "atomic_xchg", "atomic_cmpxchg",
           "sub_group_shuffle", "sub_group_shuffle_xor", "sub_group_broadcast",
           "sub_group_reduce_add", "sub_group_reduce_max", "sub_group_reduce_min",
           "get_sub_group_local_id", "get_sub_group_id"])
    global_qualifier = "__global "
    shared_qualifier = "__local "
    barrier_stmt = "barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);"
    id_exprs = {
        "global_id": "((int)get_global_id({n}))",
        "local_id": "((int)get_local_id({n}))",
        "group_id": "((int)get_group_id({n}))",
        "local_size": "((int)get_local_size({n}))",
        "num_groups": "((int)get_num_groups({n}))",
        "global_size": "((int)get_global_size({n}))",
    }
    float_math = {n: n for n in ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin", "cos", "tanh",
                                 "floor", "ceil", "erf", "pow", "fmod", "fma")}
    # OpenCL C contracts a*b+c only within one expression: a product returned by a function
    # is never fused with the caller's addition.
    float_math.update(abs="fabs", min="fmin", max="fmax", mul_rn="tt_mul_rn")
    double_math = {**float_math, "mul_rn": "tt_mul_rn_f64"}
    bitcast_fns = {
        ("f32", "i32"): "as_int", ("f32", "u32"): "as_uint", ("i32", "f32"): "as_float",
        ("u32", "f32"): "as_float", ("f64", "i64"): "as_long", ("f64", "u64"): "as_ulong",
        ("i64", "f64"): "as_double", ("u64", "f64"): "as_double",
    }
    helpers = {**_BF16, **_ATOMIC_FLOAT, **_MUL_RN}
    helper_deps = {
        "tt_round_bf16": ("tt_bf16_value", "tt_bf16_bits"),
        "tt_round_f16": ("tt_f16_value", "tt_f16_bits"),
        **{f"tt_bf16x{n}_{w}": (f"tt_bf16_{w}",) for n in (2, 4) for w in ("value", "bits")},
    }
    int64_suffixes = ("L", "UL")

    def prelude_header(self) -> str:
        lines = []
        types = [v.type for v in self.k.params + self.k.locals]
        types += [n.type for n in ir.walk_body(self.k.body) if isinstance(n, ir.Expr)]
        uses_f64 = any(t == T.f64 or getattr(t, "elem", None) == T.f64 for t in types)
        if uses_f64:
            lines.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
        if self.caps.native_subgroups and "subgroup" in self.k.features:
            lines.append("#pragma OPENCL EXTENSION cl_khr_subgroups : enable")
            lines.append("#pragma OPENCL EXTENSION cl_khr_subgroup_shuffle : enable")
            lines.append("#pragma OPENCL EXTENSION cl_khr_subgroup_shuffle_relative : enable")
        return "\n".join(lines) + ("\n" if lines else "")

    def storage_type(self, t: T.ScalarType) -> str:
        return "half" if t == T.f16 else super().storage_type(t)

    def local_decl(self, v: ir.Var) -> str:
        t = v.type
        if isinstance(t, T.ArrayType) and t.elem == T.f16:  # half arrays need cl_khr_fp16
            q = self.shared_qualifier if t.space == "shared" else ""
            return f"{q}ushort {self.name(v)}[{t.size}];"
        return super().local_decl(v)

    def param_decl(self, p, v) -> str:
        if p.kind == "buffer":
            name = self.name(v)
            return f"__global {self.storage_type(p.elem)}* tt_base_{name}, ulong tt_off_{name}"
        return super().param_decl(p, v)

    def emit_param_setup(self, depth: int) -> None:
        for v in self.k.params:
            if isinstance(v.type, T.BufferType):
                n = self.name(v)
                self.line(f"__global {self.storage_type(v.type.elem)}* {n} = tt_base_{n} + "
                          f"tt_off_{n};", depth)
        super().emit_param_setup(depth)

    def _half_ptr(self, var: ir.Var) -> str:
        if isinstance(var.type, T.BufferType):
            return self.name(var)
        space = "__local " if var.type.space == "shared" else ""
        return f"({space}half*){self.name(var)}"

    def load(self, var, index):
        if var.type.elem == T.f16:
            return f"vload_half({index}, {self._half_ptr(var)})"
        return super().load(var, index)

    def store(self, var, index, value):
        if var.type.elem == T.f16:
            v = self.expr(self.stored(var, value))
            return f"vstore_half_rte({v}, {index}, {self._half_ptr(var)})"
        return super().store(var, index, value)

    def nan_literal(self, t):
        return "as_double(0x7ff8000000000000UL)" if t.bits == 64 else "NAN"

    def inf_literal(self, t):
        return "as_double(0x7ff0000000000000UL)" if t.bits == 64 else "INFINITY"

    def e_VecLoad(self, e: ir.VecLoad) -> str:
        t, n, p, i = e.var.type.elem, e.lanes, self.name(e.var), self.expr(e.index)
        if t == T.f16:
            return f"vload_half{n}({i}, {p})"
        if t == T.bf16:
            return f"{self.need(f'tt_bf16x{n}_value')}(vload{n}({i}, {p}))"
        return f"vload{n}({i}, {p})"

    def vec_store(self, var, index, value) -> str:
        t, n, p, v = var.type.elem, value.type.lanes, self.name(var), self.expr(value)
        if t == T.f16:
            return f"vstore_half{n}_rte({v}, {index}, {p})"
        if t == T.bf16:
            return f"vstore{n}({self.need(f'tt_bf16x{n}_bits')}({v}), {index}, {p})"
        return f"vstore{n}({v}, {index}, {p})"

    def e_MakeVec(self, e: ir.MakeVec) -> str:
        return f"(({self.vector_type(e.type)})({', '.join(self.expr(x) for x in e.elems)}))"

    _ATOMIC_FNS = {"add": "atomic_add", "min": "atomic_min", "max": "atomic_max",
                   "xchg": "atomic_xchg", "cas": "atomic_cmpxchg"}

    def e_Atomic(self, e: ir.Atomic) -> str:
        ptr = f"&{self.name(e.var)}[{self.expr(e.index)}]"
        args = ", ".join(self.expr(a) for a in e.args)
        if e.op == "add" and e.type == T.f32:
            space = "global" if isinstance(e.var.type, T.BufferType) else "local"
            return f"{self.need(f'tt_atomic_add_f32_{space}')}({ptr}, {args})"
        return f"{self._ATOMIC_FNS[e.op]}({ptr}, {args})"

    def subgroup(self, name, t, args):
        if not self.caps.native_subgroups:  # subgroups of one lane
            return {"subgroup_local_id": "0", "subgroup_id": _LINEAR_LID}.get(name, f"({args[0]})"
                                                                            if args else "0")
        if name == "subgroup_local_id":
            return "((int)get_sub_group_local_id())"
        if name == "subgroup_id":
            return "((int)get_sub_group_id())"
        if name == "shuffle":
            return f"sub_group_shuffle({args[0]}, (uint)({args[1]}))"
        if name == "shuffle_xor":
            return f"sub_group_shuffle_xor({args[0]}, (uint)({args[1]}))"
        if name == "subgroup_broadcast":
            return f"sub_group_broadcast({args[0]}, (uint)({args[1]}))"
        op = {"subgroup_sum": "add", "subgroup_max": "max", "subgroup_min": "min"}[name]
        return f"sub_group_reduce_{op}({args[0]})"


def render(kernel: ir.Kernel, caps: Caps):
    return OpenCLPrinter(kernel, caps).render()


DEFAULT_CAPS = Caps("opencl", subgroup_size=1, native_subgroups=False, fp16=False)
