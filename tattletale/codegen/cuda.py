"""CUDA C dialect of the C-family printer (compiled by NVRTC).

Matrix fragments (sm_80 and later) live in the registers of `mma.sync.m16n8k16`: an A or B
fragment is four 32-bit registers filled by one `ldmatrix.x4` (`.trans` for a B stored [k][n]),
an accumulator eight floats, and one `tt.mma` is two `mma.sync` on the left and right 16×8
halves. `tt.async_copy` is `cp.async` (zero-filling through its source-size operand). Kernels
whose shared arrays exceed the 48 KB of static shared memory take them from dynamic shared memory
(`Generated.shared_bytes`), which the runtime enables per function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..dsl import types as T
from . import ir
from .cfamily import Caps, CPrinter, Generated

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


@dataclass
class CudaGenerated(Generated):
    """CUDA C, and the dynamic shared memory each launch provides (shared arrays past 48 KB)."""

    shared_bytes: int = 0


_FRAG_TYPES = {"a": "tt_frag16", "b": "tt_frag16", "acc": "tt_frag32"}
STATIC_SHARED_LIMIT = 48 * 1024
SWIZZLE_ALIGN = 1024  # swizzled shared arrays start at multiples of the 128-byte swizzle's 8 rows


def _mma_helpers() -> dict[str, str]:
    fi = "__device__ __forceinline__"
    h = {
        "tt_frag16": "struct tt_frag16 { unsigned r[4]; };",
        "tt_frag32": "struct tt_frag32 { float v[8]; };",
        "tt_smem": "extern __shared__ __align__(1024) unsigned char tt_smem[];",
        "tt_mma_zero": f"{fi} tt_frag32 tt_mma_zero() {{ tt_frag32 c; "
                       f"for (int i = 0; i < 8; i++) c.v[i] = 0.0f; return c; }}",
        "tt_cp_async_commit": f'{fi} void tt_cp_async_commit() {{ asm volatile("cp.async.commit_group;" '
                              f'::: "memory"); }}',
    }
    for trans in ("", ".trans"):
        name = "tt_ldsm" + ("_t" if trans else "")
        h[name] = (
            f"{fi} tt_frag16 {name}(const unsigned short* p) {{ tt_frag16 f; "
            f"unsigned a = (unsigned)__cvta_generic_to_shared(p); "
            f'asm volatile("ldmatrix.sync.aligned.m8n8.x4{trans}.shared.b16 {{%0, %1, %2, %3}}, [%4];" '
            f': "=r"(f.r[0]), "=r"(f.r[1]), "=r"(f.r[2]), "=r"(f.r[3]) : "r"(a)); return f; }}')
    # Lane l supplies the address of one 8-element row: matrix q = l / 8, row l % 8 of it. The four
    # matrices are A's (rows 0-7 | 8-15) × (k 0-7 | 8-15), column-major over the quadrants, and B's
    # (k 0-7 | 8-15) × (n 0-7 | 8-15), which is mma's register order for each 16×8 half.
    rows_cols = {
        "a": ("(int)(l & 15u)", "(int)((l >> 4) << 3)", "tt_ldsm"),
        "bt": ("(int)((l & 7u) + ((l >> 4) << 3))", "(int)(((l >> 3) & 1u) << 3)", "tt_ldsm"),
        "b": ("(int)((l & 7u) + (((l >> 3) & 1u) << 3))", "(int)((l >> 4) << 3)", "tt_ldsm_t"),
    }
    for use, (r, c, ld) in rows_cols.items():
        h[f"tt_mma_load_{use}"] = (
            f"{fi} tt_frag16 tt_mma_load_{use}(const unsigned short* s, int row, int col, int ld) "
            f"{{ unsigned l = tt_linear_tid() & 31u; return {ld}(s + (row + {r}) * ld + col + {c}); }}")
    for t in ("f16", "bf16"):
        halves = []
        for half, (c0, c1, c2, c3) in enumerate(((0, 1, 4, 5), (2, 3, 6, 7))):
            halves.append(
                f'asm("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{%0, %1, %2, %3}}, '
                f'{{%4, %5, %6, %7}}, {{%8, %9}}, {{%0, %1, %2, %3}};" : "+f"(c.v[{c0}]), '
                f'"+f"(c.v[{c1}]), "+f"(c.v[{c2}]), "+f"(c.v[{c3}]) : "r"(a.r[0]), "r"(a.r[1]), '
                f'"r"(a.r[2]), "r"(a.r[3]), "r"(b.r[{2 * half}]), "r"(b.r[{2 * half + 1}]));')
        h[f"tt_mma_{t}"] = (f"{fi} tt_frag32 tt_mma_{t}(tt_frag16 a, tt_frag16 b, tt_frag32 c) "
                            f"{{ {' '.join(halves)} return c; }}")
    for n in (4, 8, 16):
        cache = "cg" if n == 16 else "ca"  # .cg (L2 only) exists for 16-byte copies alone
        h[f"tt_cp_async{n}"] = (
            f"{fi} void tt_cp_async{n}(void* dst, const void* src, bool pred) {{ "
            f"unsigned d = (unsigned)__cvta_generic_to_shared(dst); "
            f'asm volatile("cp.async.{cache}.shared.global [%0], [%1], {n}, %2;" :: "r"(d), "l"(src), '
            f'"r"(pred ? {n} : 0) : "memory"); }}')
    return h


# Warpgroup products (tt.wgmma, sm_90a). An accumulator of n columns is n / 2 floats per lane in
# wgmma's register order: register 4i + 2h + p of warp q holds row 16q + lane / 4 + 8h, column
# 8i + 2 (lane % 4) + p. Element e of the DSL's layout (codegen/mma.py: 16-column tiles of the
# mma.sync layout side by side) is register e with bits 1 and 2 swapped.
_SWIZZLE_MODES = {128: 1, 64: 2, 32: 3}  # the descriptor's layout type for rows of W bytes


def _wgmma_reg(e: int) -> int:
    return e & ~6 | (e & 2) << 1 | (e & 4) >> 1


def _wgmma_helpers() -> dict[str, str]:
    fi = "__device__ __forceinline__"
    h = {}
    for w, mode in _SWIZZLE_MODES.items():
        # start address, leading offset (unused for K-major swizzled tiles), stride between 8-row
        # groups (8 rows of w bytes), all in 16-byte units; the swizzle mode in bits 62-63
        h[f"tt_wgmma_desc{w}"] = (
            f"{fi} unsigned long long tt_wgmma_desc{w}(const void* p) {{ "
            f"unsigned a = (unsigned)__cvta_generic_to_shared(p); "
            f"return (unsigned long long)((a & 0x3ffffu) >> 4) | (1ull << 16) | "
            f"({8 * w // 16}ull << 32) | ({mode}ull << 62); }}")
    for n in range(16, 257, 16):
        regs = n // 2
        h[f"tt_wgacc{n}"] = f"struct tt_wgacc{n} {{ float v[{regs}]; }};"
        h[f"tt_wgacc{n}_zero"] = (f"{fi} tt_wgacc{n} tt_wgacc{n}_zero() {{ tt_wgacc{n} c; "
                                  f"for (int i = 0; i < {regs}; i++) c.v[i] = 0.0f; return c; }}")
        outs = ", ".join(f'"+f"(c.v[{i}])' for i in range(regs))
        # after wgmma.wait_group: the compiler must not move reads of the registers above it
        h[f"tt_wgacc{n}_pin"] = (f'{fi} void tt_wgacc{n}_pin(tt_wgacc{n}& c) '
                                 f'{{ asm volatile("" : {outs} :: "memory"); }}')
        regs_list = ", ".join(f"%{i}" for i in range(regs))
        for t in ("f16", "bf16"):
            # c = A B + (accumulate ? c : 0): wgmma's scale-d predicate
            h[f"tt_wgmma_{t}_n{n}"] = (
                f"{fi} void tt_wgmma_{t}_n{n}(tt_wgacc{n}& c, unsigned long long a, unsigned long long b, "
                f'int accumulate) {{ asm volatile("{{ .reg .pred p; setp.ne.b32 p, %{regs + 2}, 0; '
                f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t} "
                f'{{{regs_list}}}, %{regs}, %{regs + 1}, p, 1, 1, 0, 0; }}" : {outs} : "l"(a), "l"(b), '
                f'"r"(accumulate)); }}')
    return h


def native_wgmma(caps: Caps) -> bool:
    """wgmma.mma_async exists on sm_90a (compute_90a) alone."""
    return caps.arch in ("sm_90a", "compute_90a")


def native_mma(caps: Caps) -> bool:
    """mma.sync with bf16, ldmatrix and cp.async need sm_80 (compute_80) or later."""
    digits = re.sub(r"\D", "", caps.arch)
    return bool(digits) and int(digits) >= 80


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
    helpers = {**_fp16_helpers(), **_warp_reduce_helpers(), **_mma_helpers(), **_wgmma_helpers()}
    helper_deps = {
        **{f"tt_wgacc{n}_{f}": (f"tt_wgacc{n}",) for n in range(16, 257, 16) for f in ("zero", "pin")},
        **{f"tt_wgmma_{t}_n{n}": (f"tt_wgacc{n}",) for n in range(16, 257, 16) for t in ("f16", "bf16")},
        "tt_ldsm": ("tt_frag16",), "tt_ldsm_t": ("tt_frag16",), "tt_mma_zero": ("tt_frag32",),
        **{f"tt_mma_load_{u}": ("tt_linear_tid", "tt_ldsm_t" if u == "b" else "tt_ldsm")
           for u in ("a", "b", "bt")},
        **{f"tt_mma_{t}": ("tt_frag16", "tt_frag32") for t in ("f16", "bf16")},
        **{f"tt_round_{t}": (f"tt_{t}_value", f"tt_{t}_bits") for t in ("f16", "bf16")},
        **{f"tt_v{op}_{t}x{n}": (f"tt_{t}_value", f"tt_{t}_bits")
           for op in ("load", "store") for t in ("f16", "bf16") for n in (2, 4)},
    }

    def __init__(self, kernel: ir.Kernel, caps: Caps):
        super().__init__(kernel, caps)
        shared = [v for v in kernel.locals
                  if isinstance(v.type, T.ArrayType) and v.type.space == "shared"]
        self.shared_offsets: dict[int, int] = {}
        offset = 0
        for v in shared:  # swizzled arrays start at 1024 bytes (the hardware swizzles addresses)
            align = SWIZZLE_ALIGN if v.type.swizzle else 16
            offset = -(-offset // align) * align
            self.shared_offsets[id(v)] = offset
            offset += -(-v.type.size * v.type.elem.itemsize // 16) * 16
        self.shared_bytes = offset if offset > STATIC_SHARED_LIMIT else 0
        self.wgaccs = [v for v in kernel.locals if isinstance(getattr(v.type, "elem", v.type),
                                                              T.FragmentType)
                       and getattr(v.type, "elem", v.type).use == "wgacc"]

    def render(self) -> CudaGenerated:
        gen = super().render()
        return CudaGenerated(gen.text, gen.entry, gen.params, gen.line_map, self.shared_bytes)

    def vtype(self, t: T.Type) -> str:
        if isinstance(t, T.FragmentType):
            return self.need(f"tt_wgacc{t.n}" if t.use == "wgacc" else _FRAG_TYPES[t.use])
        return super().vtype(t)

    def local_decl(self, v: ir.Var) -> str:
        t = v.type
        if isinstance(t, T.ArrayType) and isinstance(t.elem, T.FragmentType):
            return f"{self.vtype(t.elem)} {self.name(v)}[{t.size}];"
        if isinstance(t, T.ArrayType) and t.space == "shared":
            st = self.storage_type(t.elem)
            if self.shared_bytes:
                smem = self.need("tt_smem")
                return f"{st}* {self.name(v)} = ({st}*)({smem} + {self.shared_offsets[id(v)]});"
            align = SWIZZLE_ALIGN if t.swizzle else 16
            return f"__shared__ __align__({align}) {st} {self.name(v)}[{t.size}];"
        return super().local_decl(v)

    def load(self, var: ir.Var, index: str) -> str:
        if isinstance(var.type.elem, T.FragmentType):
            return f"{self.name(var)}[{index}]"
        return super().load(var, index)

    def store(self, var: ir.Var, index: str, value: ir.Expr) -> str:
        if isinstance(var.type.elem, T.FragmentType):
            return f"{self.name(var)}[{index}] = {self.expr(value)}"
        return super().store(var, index, value)

    def e_FragElem(self, e: ir.FragElem) -> str:
        if e.frag.type.use == "wgacc":  # the DSL's element order → wgmma's register order
            if isinstance(e.index, ir.Const):
                return f"{self.expr(e.frag)}.v[{_wgmma_reg(e.index.value)}]"
            i = self.expr(e.index)
            return f"{self.expr(e.frag)}.v[({i} & ~6) | (({i} & 2) << 1) | (({i} & 4) >> 1)]"
        return f"{self.expr(e.frag)}.v[{self.expr(e.index)}]"

    def e_MmaLoad(self, e: ir.MmaLoad) -> str:
        use = "a" if e.use == "a" else ("bt" if e.trans else "b")
        fn = self.need(f"tt_mma_load_{use}")
        ld = e.var.type.shape[1]
        return f"{fn}({self.name(e.var)}, {self.expr(e.row)}, {self.expr(e.col)}, {ld})"

    def e_Mma(self, e: ir.Mma) -> str:
        fn = self.need(f"tt_mma_{e.a.type.elem.name}")
        return f"{fn}({self.expr(e.a)}, {self.expr(e.b)}, {self.expr(e.c)})"

    def e_MmaZero(self, e: ir.MmaZero) -> str:
        if e.use == "wgacc":
            return f"{self.need(f'tt_wgacc{e.n}_zero')}()"
        return f"{self.need('tt_mma_zero')}()"

    def block(self, body: list[ir.Stmt], depth: int) -> None:
        """Statements; each run of consecutive tt.wgmma starts with wgmma.fence (the accumulator
        registers may have been touched by other instructions since the last run)."""
        after_wgmma = False
        for s in body:
            if isinstance(s, ir.Wgmma) and not after_wgmma:
                self.annotate(s, depth)
                self.line('asm volatile("wgmma.fence.sync.aligned;" ::: "memory");', depth)
            after_wgmma = isinstance(s, ir.Wgmma)
            self.stmt(s, depth)

    def wgmma(self, s: ir.Wgmma, depth: int) -> None:
        n, t = s.acc.type.n, s.a.type.elem.name
        descs = []
        for var, row, col in ((s.a, s.a_row, s.a_col), (s.b, s.b_row, s.b_col)):
            # the tile's unswizzled address: the hardware applies the swizzle to the address bits
            fn = self.need(f"tt_wgmma_desc{var.type.swizzle}")
            index = f"({self.expr(row)}) * {var.type.shape[1]} + {self.expr(col)}"
            descs.append(f"{fn}(&{self.name(var)}[{index}])")
        acc = "1" if isinstance(s.accumulate, ir.Const) and s.accumulate.value else \
            self.expr(s.accumulate)
        self.line(f"{self.need(f'tt_wgmma_{t}_n{n}')}({self.expr(s.acc)}, {descs[0]}, {descs[1]}, "
                  f"{acc});", depth)

    def wgmma_wait(self, s: ir.WgmmaWait, depth: int) -> None:
        self.line(f'asm volatile("wgmma.wait_group.sync.aligned {s.pending};" ::: "memory");', depth)
        for v in self.wgaccs:  # their registers are final (for the groups waited for) only now
            t = v.type
            if isinstance(t, T.ArrayType):
                pin = self.need(f"tt_wgacc{t.elem.n}_pin")
                for i in range(t.size):
                    self.line(f"{pin}({self.name(v)}[{i}]);", depth)
            else:
                self.line(f"{self.need(f'tt_wgacc{t.n}_pin')}({self.name(v)});", depth)

    def simple_stmt(self, s: ir.Stmt, depth: int) -> None:
        if isinstance(s, ir.AsyncCopy):
            n = s.count * s.dst.type.elem.itemsize
            pred = self.expr(s.pred)
            src = f"{self.name(s.src)}[{self.expr(s.src_index)}]"
            if not (isinstance(s.pred, ir.Const) and s.pred.value):  # never read past a tail
                src = f"{self.name(s.src)}[({pred}) ? ({self.expr(s.src_index)}) : 0]"
            self.line(f"{self.need(f'tt_cp_async{n}')}(&{self.name(s.dst)}[{self.expr(s.dst_index)}], "
                      f"&{src}, {pred});", depth)
        elif isinstance(s, ir.AsyncCommit):
            self.line(f"{self.need('tt_cp_async_commit')}();", depth)
        elif isinstance(s, ir.AsyncWait):
            self.line(f'asm volatile("cp.async.wait_group {s.pending};" ::: "memory");', depth)
        elif isinstance(s, ir.Wgmma):
            self.wgmma(s, depth)
        elif isinstance(s, ir.WgmmaCommit):
            self.line('asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");', depth)
        elif isinstance(s, ir.WgmmaWait):
            self.wgmma_wait(s, depth)
        elif isinstance(s, ir.Barrier) and "wgmma" in self.k.features:
            # what this thread wrote to shared memory (cp.async included) becomes visible to the
            # tensor cores' reads (the async proxy) of every thread past the barrier
            self.line('asm volatile("fence.proxy.async.shared::cta;" ::: "memory");', depth)
            super().simple_stmt(s, depth)
        else:
            super().simple_stmt(s, depth)

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


def render(kernel: ir.Kernel, caps: Caps) -> CudaGenerated:
    return CudaPrinter(kernel, caps).render()


DEFAULT_CAPS = Caps("cuda", subgroup_size=32, native_subgroups=True, fp16=True, arch="sm_90")
