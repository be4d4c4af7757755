"""The printer shared by the C-family targets (CUDA C, OpenCL C).

What differs between dialects is data on the subclass (type names, qualifiers, builtin names,
helper snippets) plus a few overridable methods (16-bit float memory access, vectors, atomics,
subgroups). Generated code is meant to be read: each statement is preceded by a comment with the
Python line it came from, and the `line_map` lets backend compiler errors be traced back.

16-bit floats are storage types: their values live in `float` registers (already rounded to the
16-bit format), memory holds their bits, and conversion happens at loads, stores and casts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..dsl import types as T
from . import ir
from .text import TextPrinter

C_RESERVED = set("""
auto break case char const continue default do double else enum extern float for goto if inline
int long register restrict return short signed sizeof static struct switch typedef union unsigned
void volatile while bool true false half kernel global local constant private read_only write_only
uchar ushort uint ulong size_t ptrdiff_t this new delete class template typename namespace using
operator friend virtual public protected private catch throw try min max abs exp exp2 log log2 sqrt
rsqrt sin cos tanh floor ceil erf pow fmod fabs fmin fmax fma select clamp barrier atomic_add
vload_half vstore_half printf main threadIdx blockIdx blockDim gridDim warpSize asm NAN INFINITY
""".split())
_IDENT = re.compile(r"(?<![.\w{])[A-Za-z_]\w*(?![\w}])")  # not members, placeholders, literals


@dataclass
class Caps:
    """What the target device offers; `default_caps` gives a typical device per target."""

    target: str
    subgroup_size: int = 1
    native_subgroups: bool = False
    fp16: bool = False
    arch: str = ""


@dataclass
class ParamABI:
    """How one runtime argument is passed: a buffer of `elem`, or a scalar packed as `dtype`."""

    name: str
    kind: str  # "buffer" | "scalar"
    elem: T.ScalarType  # buffer element type or the scalar's DSL type
    abi: T.ScalarType  # the type the scalar is packed as (f16/bf16 → f32, bool → i32)


@dataclass
class Generated:
    """Generated source of one kernel specialization for one target."""

    text: str
    entry: str
    params: list[ParamABI]
    line_map: dict[int, ir.Loc] = field(default_factory=dict)  # generated line (1-based) → Python

    def annotate_log(self, log: str) -> str:
        """Append, after each compiler message naming a generated line, the Python line behind it."""
        import re

        out = []
        for line in log.splitlines():
            out.append(line)
            m = re.search(r"(?:\((\d+)\)|:(\d+):)", line)
            if m:
                n = int(m.group(1) or m.group(2))
                loc = self._nearest(n)
                if loc is not None:
                    out.append(f"    ↳ from {loc.file}:{loc.line}: {loc.text.strip()}")
        return "\n".join(out)

    def _nearest(self, n: int) -> ir.Loc | None:
        best = None
        for gl in sorted(self.line_map):
            if gl <= n:
                best = self.line_map[gl]
        return best


def abi_type(t: T.ScalarType) -> T.ScalarType:
    if t.is_bool:
        return T.i32
    if t.is_float and t.bits == 16:
        return T.f32
    return t


class CPrinter(TextPrinter):
    """Base C-family printer. Subclasses fill in the dialect tables and override hooks."""

    value_types: dict[str, str] = {}
    kernel_qualifier = ""
    global_qualifier = ""
    shared_qualifier = ""
    barrier_stmt = ""
    id_exprs: dict[str, str] = {}
    float_math: dict[str, str] = {}  # DSL name -> f32 function
    double_math: dict[str, str] = {}
    bitcast_fns: dict[tuple[str, str], str] = {}  # (from, to) type names -> function
    helpers: dict[str, str] = {}  # helper name -> definition (may use other helpers)
    helper_deps: dict[str, tuple[str, ...]] = {}
    int64_suffixes = ("LL", "ULL")
    # Identifiers the dialect's methods print besides those in the tables above (vector types,
    # atomics, shuffles, …): a kernel variable of that name would shadow them.
    extra_reserved: frozenset[str] = frozenset()
    _reserved_cache: set[str] | None = None

    @classmethod
    def reserved(cls) -> set[str]:
        """Every identifier generated code may use, which kernel variables must not shadow."""
        if cls.__dict__.get("_reserved_cache") is None:
            texts = [*cls.value_types.values(), *cls.id_exprs.values(), *cls.float_math.values(),
                     *cls.double_math.values(), *cls.bitcast_fns.values(), cls.barrier_stmt,
                     cls.kernel_qualifier, cls.global_qualifier, cls.shared_qualifier]
            found = {m for t in texts for m in _IDENT.findall(re.sub(r'"[^"]*"', "", t))}
            cls._reserved_cache = C_RESERVED | found | set(cls.extra_reserved)
        return cls._reserved_cache

    def c_name(self, name: str, taken: set[str]) -> str:
        """A C identifier for a DSL name that clashes with nothing the printer emits."""
        if name.startswith(("tt_", "__")) or re.match(r"_[A-Z]", name):
            name = "v" + name  # tt_ is the printer's prefix; __x and _X are the compiler's
        while name in self.reserved() or name in taken:
            name += "_"
        return name

    def __init__(self, kernel: ir.Kernel, caps: Caps):
        super().__init__()
        self.k = kernel
        self.caps = caps
        self.needed: list[str] = []
        self.names: dict[int, str] = {}
        self.entry = self.c_name(kernel.name, set())
        taken: set[str] = {self.entry}
        for v in kernel.params + kernel.locals:
            name = self.c_name(v.name, taken)
            taken.add(name)
            self.names[id(v)] = name

    # --- entry ----------------------------------------------------------------------------------

    def render(self) -> Generated:
        params = self.param_abi()
        self.emit_kernel(params)
        body = self.lines
        prelude = self.prelude()
        head = prelude.splitlines() if prelude else []
        offset = len(head) + (1 if head else 0)
        text = "\n".join(head + ([""] if head else []) + body) + "\n"
        line_map = {n + offset: loc for n, loc in self.line_map.items()}
        return Generated(text, self.entry, params, line_map)

    def param_abi(self) -> list[ParamABI]:
        out = []
        for p in self.k.params:
            if isinstance(p.type, T.BufferType):
                out.append(ParamABI(p.name, "buffer", p.type.elem, p.type.elem))
            else:
                out.append(ParamABI(p.name, "scalar", p.type, abi_type(p.type)))
        return out

    def prelude(self) -> str:
        done: list[str] = []

        def add(name):
            if name in done:
                return
            for d in self.helper_deps.get(name, ()):
                add(d)
            done.append(name)

        for n in list(self.needed):
            add(n)
        return self.prelude_header() + "\n".join(self.helpers[n] for n in done)

    def prelude_header(self) -> str:
        return ""

    def need(self, helper: str) -> str:
        if helper not in self.needed:
            self.needed.append(helper)
        return helper

    # --- types ----------------------------------------------------------------------------------

    def vtype(self, t: T.Type) -> str:
        """The C type of a value (registers)."""
        if isinstance(t, T.VectorType):
            return self.vector_type(t)
        return self.value_types[t.name]

    def vector_type(self, t: T.VectorType) -> str:
        elem = T.f32 if t.elem.is_float and t.elem.bits == 16 else t.elem
        return f"{self.value_types[elem.name]}{t.lanes}"

    def storage_type(self, t: T.ScalarType) -> str:
        """The C type of an element in memory."""
        if t.is_float and t.bits == 16:
            return self.value_types["u16"]
        if t.is_bool:
            return self.value_types["u8"]
        return self.value_types[t.name]

    def name(self, v: ir.Var) -> str:
        return self.names[id(v)]

    # --- emission -------------------------------------------------------------------------------

    def emit_kernel(self, params: list[ParamABI]) -> None:
        sig = ", ".join(self.param_decl(p, v) for p, v in zip(params, self.k.params))
        self.line(f"{self.kernel_qualifier} {self.entry}({sig})", 0)
        self.line("{", 0)
        self.emit_param_setup(1)
        for v in self.k.locals:
            self.line(self.local_decl(v), 1)
        self.block(self.k.body, 1)
        self.line("}", 0)

    def param_decl(self, p: ParamABI, v: ir.Var) -> str:
        if p.kind == "buffer":
            return f"{self.global_qualifier}{self.storage_type(p.elem)}* {self.name(v)}"
        return f"{self.value_types[p.abi.name]} {self.name(v)}"

    def emit_param_setup(self, depth: int) -> None:
        """Per-target prologue (e.g. buffer offsets); scalar bool/16-bit params are converted."""
        for v in self.k.params:
            t = v.type
            if isinstance(t, T.ScalarType) and t.is_float and t.bits == 16:
                self.line(f"{self.name(v)} = {self.round_fn(t)}({self.name(v)});", depth)

    def local_decl(self, v: ir.Var) -> str:
        t = v.type
        if isinstance(t, T.ArrayType):
            q = self.shared_qualifier if t.space == "shared" else ""
            return f"{q}{self.storage_type(t.elem)} {self.name(v)}[{t.size}];"
        return f"{self.vtype(t)} {self.name(v)};"

    def simple_stmt(self, s: ir.Stmt, depth: int) -> None:
        if isinstance(s, ir.Assign):
            self.line(f"{self.name(s.var)} = {self.expr(s.value)};", depth)
        elif isinstance(s, ir.Store):
            self.line(self.store(s.var, self.expr(s.index), s.value) + ";", depth)
        elif isinstance(s, ir.VecStore):
            self.line(self.vec_store(s.var, self.expr(s.index), s.value) + ";", depth)
        elif isinstance(s, ir.Barrier):
            self.line(self.barrier_stmt, depth)
        elif isinstance(s, ir.ExprStmt):
            self.line(self.expr(s.expr) + ";", depth)
        else:
            raise TypeError(f"cannot print {type(s).__name__}")

    def for_test(self, s: ir.For, v: str, stop: str, step: str) -> str:
        return f"({step} > 0 ? {v} < {stop} : {v} > {stop})"

    # --- expressions ----------------------------------------------------------------------------

    def expr(self, e: ir.Expr) -> str:
        return getattr(self, "e_" + type(e).__name__)(e)

    def e_Const(self, e: ir.Const) -> str:
        t = e.type
        v = e.value
        if t.is_bool:
            return "true" if v else "false"
        if t.is_float:
            if v != v:
                return self.nan_literal(t)
            if v in (float("inf"), float("-inf")):
                return ("-" if v < 0 else "") + self.inf_literal(t)
            text = repr(float(v))
            if "e" not in text and "." not in text:
                text += ".0"
            text = text if t.bits == 64 else text + "f"
            return f"({text})" if text.startswith("-") else text  # `-(-1.0f)` is not `--1.0f`
        if t.bits == 64:
            if t.is_signed and v == -(1 << 63):
                return f"(-9223372036854775807{self.int64_suffixes[0]} - 1)"
            return f"{v}{self.int64_suffixes[0] if t.is_signed else self.int64_suffixes[1]}"
        if t.is_signed and v == -(1 << 31):
            return "(-2147483647 - 1)"
        if not t.is_signed:
            return f"{v}u"
        return str(v) if v >= 0 else f"({v})"

    def nan_literal(self, t: T.ScalarType) -> str:
        return "NAN"

    def inf_literal(self, t: T.ScalarType) -> str:
        return "INFINITY"

    def e_Ref(self, e: ir.Ref) -> str:
        return self.name(e.var)

    _C_OPS = {"and": "&&", "or": "||"}

    def e_Binary(self, e: ir.Binary) -> str:
        op = self._C_OPS.get(e.op, e.op)
        return f"({self.expr(e.lhs)} {op} {self.expr(e.rhs)})"

    def e_Unary(self, e: ir.Unary) -> str:
        op = "!" if e.op == "not" else e.op
        return f"({op}{self.expr(e.operand)})"

    def e_Cast(self, e: ir.Cast) -> str:
        src, to = e.operand.type, e.to
        x = self.expr(e.operand)
        if to.is_float and to.bits == 16:
            if not src.is_float or src.bits != 32:
                x = f"(float)({x})"
            return f"{self.round_fn(to)}({x})"
        if src.is_float and src.bits == 16:
            return x if to == T.f32 else f"(({self.vtype(to)})({x}))"
        if to.is_bool:
            return f"({x} != 0)"
        return f"(({self.vtype(to)})({x}))"

    def round_fn(self, t: T.ScalarType) -> str:
        return self.need(f"tt_round_{t.name}")

    def e_Bitcast(self, e: ir.Bitcast) -> str:
        src, to = e.operand.type, e.to
        x = self.expr(e.operand)
        if src.is_float and src.bits == 16:  # 16-bit floats live in float registers: bits first
            x, src = f"{self.need(f'tt_{src.name}_bits')}({x})", T.u16
            if not (to.is_float and to.bits == 16):
                return f"(({self.vtype(to)}){x})"
        if to.is_float and to.bits == 16:
            return f"{self.need(f'tt_{to.name}_value')}(({self.value_types['u16']})({x}))"
        if src.is_float or to.is_float:
            return f"{self.bitcast_fns[src.name, to.name]}({x})"
        return f"(({self.vtype(to)})({x}))"

    def e_Select(self, e: ir.Select) -> str:
        return f"({self.expr(e.cond)} ? {self.expr(e.if_true)} : {self.expr(e.if_false)})"

    def e_Load(self, e: ir.Load) -> str:
        return self.load(e.var, self.expr(e.index))

    def load(self, var: ir.Var, index: str) -> str:
        t = var.type.elem
        ref = f"{self.name(var)}[{index}]"
        if t.is_float and t.bits == 16:
            return f"{self.need(f'tt_{t.name}_value')}({ref})"
        if t.is_bool:
            return f"({ref} != 0)"
        return ref

    @staticmethod
    def stored(var: ir.Var, value: ir.Expr) -> ir.Expr:
        """The value to store: a cast to a 16-bit float element type is dropped, since the
        store itself rounds to that format."""
        t = var.type.elem
        if isinstance(value, ir.Cast) and value.to == t and t.is_float and t.bits == 16 and \
                value.operand.type == T.f32:  # the store takes a float: other sources convert
            return value.operand
        return value

    def store(self, var: ir.Var, index: str, value: ir.Expr) -> str:
        t = var.type.elem
        v = self.expr(self.stored(var, value))
        ref = f"{self.name(var)}[{index}]"
        if t.is_float and t.bits == 16:
            return f"{ref} = {self.need(f'tt_{t.name}_bits')}({v})"
        if t.is_bool:
            return f"{ref} = ({self.value_types['u8']})({v})"
        return f"{ref} = {v}"

    def e_Lane(self, e: ir.Lane) -> str:
        return f"{self.expr(e.vec)}.{'xyzw'[e.lane]}"

    def e_Call(self, e: ir.Call) -> str:
        if e.dim is not None or e.name.startswith("subgroup_") or e.name.startswith("shuffle"):
            return self.builtin_call(e)
        args = [self.expr(a) for a in e.args]
        t = e.type
        if t.is_float:
            fn = (self.double_math if t.bits == 64 else self.float_math)[e.name]
            if fn.startswith("tt_"):
                self.need(fn)
            return f"{fn}({', '.join(args)})"
        return self.int_math(e.name, t, args)

    def int_math(self, name: str, t: T.ScalarType, args: list[str]) -> str:
        if name == "abs":
            return args[0] if not t.is_signed else f"(({self.vtype(t)})abs({args[0]}))"
        return f"{name}({', '.join(args)})"

    def builtin_call(self, e: ir.Call) -> str:
        if e.dim is not None:
            return self.id_exprs[e.name].format(d="xyz"[e.dim], n=e.dim)
        return self.subgroup(e.name, e.type, [self.expr(a) for a in e.args])

    # hooks the dialects implement
    def e_VecLoad(self, e: ir.VecLoad) -> str:
        raise NotImplementedError

    def vec_store(self, var: ir.Var, index: str, value: ir.Expr) -> str:
        raise NotImplementedError

    def e_MakeVec(self, e: ir.MakeVec) -> str:
        raise NotImplementedError

    def e_Atomic(self, e: ir.Atomic) -> str:
        raise NotImplementedError

    def subgroup(self, name: str, t: T.ScalarType, args: list[str]) -> str:
        raise NotImplementedError

