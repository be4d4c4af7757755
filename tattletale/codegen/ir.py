"""The typed intermediate representation every target is printed from.

Expressions are typed trees; statements form structured regions (if / for / while with
bodies) so that targets without goto (WGSL) or that demand structured control flow (SPIR-V)
can be emitted directly. Variables are mutable named locations, declared once per kernel
(the printers hoist declarations to the top), which matches Python's function scoping.

`and`/`or` short-circuit and `Select(lazy=True)` evaluates only the chosen operand (a Python
conditional expression); targets whose select is eager legalize them (see passes.py).
Every node carries `loc`, the Python source position it came from, for error messages and
for the line annotations in generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dsl.types import ArrayType, BufferType, FragmentType, ScalarType, Type, VectorType, f32


@dataclass(frozen=True)
class Loc:
    """A position in the kernel's Python source."""

    file: str
    line: int
    col: int
    text: str = ""  # the source line, for annotations and carets

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(eq=False)
class Var:
    """A named storage location: a parameter, a local, or a shared/private array."""

    name: str
    type: Type
    kind: str  # "param" | "local" | "shared" | "private"

    def __repr__(self) -> str:
        return f"%{self.name}"


# --- expressions --------------------------------------------------------------------------------


@dataclass(eq=False)
class Expr:
    type: Type = field(init=False, default=None)  # set by each node's constructor
    loc: Loc | None = field(init=False, default=None, repr=False)


@dataclass(eq=False)
class Const(Expr):
    value: Any
    ctype: ScalarType

    def __post_init__(self):
        self.type = self.ctype


@dataclass(eq=False)
class Ref(Expr):
    """The value of a scalar or vector variable."""

    var: Var

    def __post_init__(self):
        self.type = self.var.type


@dataclass(eq=False)
class Binary(Expr):
    """Arithmetic, bitwise, comparison (result bool) and short-circuit logical (`and`, `or`)."""

    op: str
    lhs: Expr
    rhs: Expr
    rtype: ScalarType

    def __post_init__(self):
        self.type = self.rtype


@dataclass(eq=False)
class Unary(Expr):
    op: str  # "-" | "~" | "not"
    operand: Expr

    def __post_init__(self):
        self.type = self.operand.type


@dataclass(eq=False)
class Cast(Expr):
    """Value conversion (float→int truncates toward zero, float→16-bit float rounds to nearest even)."""

    to: ScalarType
    operand: Expr

    def __post_init__(self):
        self.type = self.to


@dataclass(eq=False)
class Bitcast(Expr):
    to: ScalarType
    operand: Expr

    def __post_init__(self):
        self.type = self.to


@dataclass(eq=False)
class Select(Expr):
    cond: Expr
    if_true: Expr
    if_false: Expr
    lazy: bool = False

    def __post_init__(self):
        self.type = self.if_true.type


@dataclass(eq=False)
class Load(Expr):
    """Element `index` (a linear element index) of a buffer or array variable."""

    var: Var
    index: Expr

    def __post_init__(self):
        self.type = self.var.type.elem


@dataclass(eq=False)
class VecLoad(Expr):
    """Elements `index*lanes … index*lanes+lanes-1` of a buffer, as one vector."""

    var: Var
    index: Expr
    lanes: int

    def __post_init__(self):
        self.type = VectorType(self.var.type.elem, self.lanes)


@dataclass(eq=False)
class Lane(Expr):
    vec: Expr
    lane: int

    def __post_init__(self):
        self.type = self.vec.type.elem


@dataclass(eq=False)
class MakeVec(Expr):
    vtype: VectorType
    elems: list[Expr]

    def __post_init__(self):
        self.type = self.vtype


@dataclass(eq=False)
class Call(Expr):
    """A builtin: math (`exp`, `fma`, …), ids (`global_id`, …) and subgroup operations.

    `args` holds expressions; for ids the dimension is the constant `dim`.
    """

    name: str
    args: list[Expr]
    rtype: Type
    dim: int | None = None

    def __post_init__(self):
        self.type = self.rtype


@dataclass(eq=False)
class Atomic(Expr):
    """Atomic read-modify-write of element `index` of a buffer/shared array; yields the old value.

    op: "add" | "min" | "max" | "xchg" | "cas" (args: compare, value) | others take (value,).
    """

    op: str
    var: Var
    index: Expr
    args: list[Expr]

    def __post_init__(self):
        self.type = self.var.type.elem


@dataclass(eq=False)
class MmaLoad(Expr):
    """A 16×16 operand fragment read from a 2-D shared array by the lanes of a subgroup.

    use "a": A[m][k] = var[row + m, col + k]. use "b": B[k][n] = var[row + k, col + n], or with
    `trans` (B stored as its transpose, as the rows of a weight matrix are) var[row + n, col + k].
    """

    var: Var
    row: Expr
    col: Expr
    use: str
    trans: bool = False

    def __post_init__(self):
        self.type = FragmentType(self.use, self.var.type.elem)


@dataclass(eq=False)
class Mma(Expr):
    """c + a @ b on 16×16×16 fragments (f32 accumulate). Operands are `Ref`s of fragment
    variables or `Load`s from arrays of fragments (the front end names every fragment value)."""

    a: Expr
    b: Expr
    c: Expr

    def __post_init__(self):
        self.type = self.c.type


@dataclass(eq=False)
class FragElem(Expr):
    """Element `index` of this lane's share of an accumulator fragment (`Ref` or `Load` of one)."""

    frag: Expr
    index: Expr

    def __post_init__(self):
        self.type = self.frag.type.elem


@dataclass(eq=False)
class MmaZero(Expr):
    """An accumulator fragment of zeros: 16 × 16 ("acc") or a warpgroup's 64 × n ("wgacc")."""

    use: str = "acc"
    n: int = 16

    def __post_init__(self):
        self.type = FragmentType(self.use, f32, self.n)


# --- statements ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Stmt:
    loc: Loc | None = field(init=False, default=None, repr=False)


@dataclass(eq=False)
class Assign(Stmt):
    var: Var
    value: Expr


@dataclass(eq=False)
class Store(Stmt):
    var: Var
    index: Expr
    value: Expr


@dataclass(eq=False)
class VecStore(Stmt):
    var: Var
    index: Expr
    value: Expr


@dataclass(eq=False)
class If(Stmt):
    cond: Expr
    then: list[Stmt]
    orelse: list[Stmt]


@dataclass(eq=False)
class For(Stmt):
    """`for var in range(start, stop, step)`: stop and step are evaluated once, before the loop."""

    var: Var
    start: Expr
    stop: Expr
    step: Expr
    body: list[Stmt]


@dataclass(eq=False)
class While(Stmt):
    cond: Expr
    body: list[Stmt]


@dataclass(eq=False)
class Break(Stmt):
    pass


@dataclass(eq=False)
class Continue(Stmt):
    pass


@dataclass(eq=False)
class Return(Stmt):
    pass


@dataclass(eq=False)
class Barrier(Stmt):
    """Workgroup execution barrier with shared- and global-memory ordering."""


@dataclass(eq=False)
class ExprStmt(Stmt):
    expr: Expr


@dataclass(eq=False)
class AsyncCopy(Stmt):
    """Start copying `count` elements src[src_index …] to dst[dst_index …] (a shared array); where
    `pred` is false, zeros are written and src is not read. The copy is complete for the issuing
    thread after the `AsyncWait` that covers its group, and for other threads after a barrier."""

    dst: Var
    dst_index: Expr
    src: Var
    src_index: Expr
    count: int
    pred: Expr


@dataclass(eq=False)
class AsyncCommit(Stmt):
    """Close the group of asynchronous copies this thread started since the last commit."""


@dataclass(eq=False)
class AsyncWait(Stmt):
    """Wait until at most `pending` of this thread's committed copy groups are unfinished."""

    pending: int


@dataclass(eq=False)
class Wgmma(Stmt):
    """Start acc += A @ B by the warpgroup (four consecutive subgroups 4w … 4w+3) on its 64 × n
    accumulator `acc` (a `Ref` of a wgacc variable or a `Load` from an array of them):
    A[m][k] = a[a_row + m, a_col + k] (64 × 16), B[k][j] = b[b_row + j, b_col + k] (16 × n), `a`
    and `b` swizzled 2-D shared arrays of f16/bf16; with `accumulate` false, acc = A @ B. acc
    holds the result after the `WgmmaWait` that covers the group this product was committed in;
    until then neither acc nor the shared tiles may be touched."""

    acc: Expr
    a: Var
    a_row: Expr
    a_col: Expr
    b: Var
    b_row: Expr
    b_col: Expr
    accumulate: Expr


@dataclass(eq=False)
class WgmmaCommit(Stmt):
    """Close the group of `Wgmma`s this warpgroup started since the last commit."""


@dataclass(eq=False)
class WgmmaWait(Stmt):
    """Wait until at most `pending` of this warpgroup's committed `Wgmma` groups are unfinished."""

    pending: int


@dataclass(eq=False)
class Kernel:
    """One specialized kernel: what a target printer receives."""

    name: str
    params: list[Var]
    locals: list[Var]  # scalars/vectors, and shared/private arrays
    body: list[Stmt]
    features: set[str] = field(default_factory=set)  # e.g. "subgroup", "atomic_float", "i64"
    source_file: str = ""


# --- walking ------------------------------------------------------------------------------------


def children(node) -> list:
    """The direct sub-expressions and sub-statements of a node, in evaluation order."""
    if isinstance(node, (Const, Ref)):
        return []
    if isinstance(node, Binary):
        return [node.lhs, node.rhs]
    if isinstance(node, (Unary, Cast, Bitcast)):
        return [node.operand]
    if isinstance(node, Select):
        return [node.cond, node.if_true, node.if_false]
    if isinstance(node, (Load, VecLoad)):
        return [node.index]
    if isinstance(node, Lane):
        return [node.vec]
    if isinstance(node, MakeVec):
        return list(node.elems)
    if isinstance(node, Call):
        return list(node.args)
    if isinstance(node, Atomic):
        return [node.index, *node.args]
    if isinstance(node, MmaLoad):
        return [node.row, node.col]
    if isinstance(node, Mma):
        return [node.a, node.b, node.c]
    if isinstance(node, FragElem):
        return [node.frag, node.index]
    if isinstance(node, Assign):
        return [node.value]
    if isinstance(node, (Store, VecStore)):
        return [node.index, node.value]
    if isinstance(node, If):
        return [node.cond, *node.then, *node.orelse]
    if isinstance(node, For):
        return [node.start, node.stop, node.step, *node.body]
    if isinstance(node, While):
        return [node.cond, *node.body]
    if isinstance(node, ExprStmt):
        return [node.expr]
    if isinstance(node, AsyncCopy):
        return [node.dst_index, node.src_index, node.pred]
    if isinstance(node, Wgmma):
        return [node.acc, node.a_row, node.a_col, node.b_row, node.b_col, node.accumulate]
    return []


def walk(node):
    """Pre-order traversal of a node and everything under it."""
    yield node
    for c in children(node):
        yield from walk(c)


def walk_body(body: list[Stmt]):
    for s in body:
        yield from walk(s)


def is_pure(e: Expr) -> bool:
    """True when evaluating `e` has no side effects and cannot fault (no loads, atomics)."""
    return not any(isinstance(n, (Load, VecLoad, Atomic, MmaLoad)) for n in walk(e))


# --- text form ----------------------------------------------------------------------------------


def format_expr(e: Expr) -> str:
    if isinstance(e, Const):
        return f"{e.value!r}:{e.type}"
    if isinstance(e, Ref):
        return f"%{e.var.name}"
    if isinstance(e, Binary):
        return f"({format_expr(e.lhs)} {e.op} {format_expr(e.rhs)}):{e.type}"
    if isinstance(e, Unary):
        return f"({e.op} {format_expr(e.operand)})"
    if isinstance(e, Cast):
        return f"cast<{e.to}>({format_expr(e.operand)})"
    if isinstance(e, Bitcast):
        return f"bitcast<{e.to}>({format_expr(e.operand)})"
    if isinstance(e, Select):
        kw = "select.lazy" if e.lazy else "select"
        return f"{kw}({format_expr(e.cond)}, {format_expr(e.if_true)}, {format_expr(e.if_false)})"
    if isinstance(e, Load):
        return f"load %{e.var.name}[{format_expr(e.index)}]"
    if isinstance(e, VecLoad):
        return f"vload{e.lanes} %{e.var.name}[{format_expr(e.index)}]"
    if isinstance(e, Lane):
        return f"{format_expr(e.vec)}.{e.lane}"
    if isinstance(e, MakeVec):
        return f"{e.type}({', '.join(format_expr(x) for x in e.elems)})"
    if isinstance(e, Call):
        args = ([str(e.dim)] if e.dim is not None else []) + [format_expr(a) for a in e.args]
        return f"{e.name}({', '.join(args)}):{e.type}"
    if isinstance(e, Atomic):
        args = ", ".join(format_expr(a) for a in e.args)
        return f"atomic_{e.op} %{e.var.name}[{format_expr(e.index)}], {args}"
    if isinstance(e, MmaLoad):
        kind = f"{e.use}{'.trans' if e.trans else ''}"
        return f"mma_load.{kind} %{e.var.name}[{format_expr(e.row)}, {format_expr(e.col)}]"
    if isinstance(e, Mma):
        return f"mma({format_expr(e.a)}, {format_expr(e.b)}, {format_expr(e.c)})"
    if isinstance(e, MmaZero):
        return "mma_zero" if e.use == "acc" else f"wgmma_zero {e.n}"
    if isinstance(e, FragElem):
        return f"{format_expr(e.frag)}[{format_expr(e.index)}]"
    raise TypeError(type(e))


def format_kernel(k: Kernel) -> str:
    """A readable listing of a kernel's IR (`kernel.ir()`)."""
    out = [f"kernel {k.name}({', '.join(f'%{p.name}: {p.type}' for p in k.params)})"]
    for v in k.locals:
        out.append(f"  {v.kind} %{v.name}: {v.type}")
    _format_body(k.body, out, 1, [None])
    return "\n".join(out)


def _format_body(body: list[Stmt], out: list[str], depth: int, last: list) -> None:
    """Print statements; `last` holds the source line annotated last (a one-item list), so each
    new Python line gets one `// file.py:LINE: text` comment, as in generated code."""
    pad = "  " * depth
    for s in body:
        if s.loc is not None and (s.loc.file, s.loc.line) != last[0]:
            last[0] = (s.loc.file, s.loc.line)
            out.append(f"{pad}// {s.loc.file.rsplit('/', 1)[-1]}:{s.loc.line}: {s.loc.text.strip()}")
        if isinstance(s, Assign):
            out.append(f"{pad}%{s.var.name} = {format_expr(s.value)}")
        elif isinstance(s, Store):
            out.append(f"{pad}store %{s.var.name}[{format_expr(s.index)}] = {format_expr(s.value)}")
        elif isinstance(s, VecStore):
            out.append(f"{pad}vstore %{s.var.name}[{format_expr(s.index)}] = {format_expr(s.value)}")
        elif isinstance(s, If):
            out.append(f"{pad}if {format_expr(s.cond)}:")
            _format_body(s.then, out, depth + 1, last)
            if s.orelse:
                out.append(f"{pad}else:")
                _format_body(s.orelse, out, depth + 1, last)
        elif isinstance(s, For):
            rng = ", ".join(format_expr(x) for x in (s.start, s.stop, s.step))
            out.append(f"{pad}for %{s.var.name} in range({rng}):")
            _format_body(s.body, out, depth + 1, last)
        elif isinstance(s, While):
            out.append(f"{pad}while {format_expr(s.cond)}:")
            _format_body(s.body, out, depth + 1, last)
        elif isinstance(s, ExprStmt):
            out.append(f"{pad}{format_expr(s.expr)}")
        elif isinstance(s, AsyncCopy):
            out.append(f"{pad}async_copy %{s.dst.name}[{format_expr(s.dst_index)}] = "
                       f"%{s.src.name}[{format_expr(s.src_index)}] x{s.count} if {format_expr(s.pred)}")
        elif isinstance(s, AsyncWait):
            out.append(f"{pad}async_wait {s.pending}")
        elif isinstance(s, Wgmma):
            out.append(f"{pad}wgmma {format_expr(s.acc)} += %{s.a.name}[{format_expr(s.a_row)}, "
                       f"{format_expr(s.a_col)}] @ %{s.b.name}[{format_expr(s.b_row)}, "
                       f"{format_expr(s.b_col)}].T if {format_expr(s.accumulate)}")
        elif isinstance(s, WgmmaWait):
            out.append(f"{pad}wgmma_wait {s.pending}")
        else:
            out.append(f"{pad}{type(s).__name__.lower()}")


__all__ = [
    "ArrayType", "BufferType", "FragmentType", "ScalarType", "VectorType", "Loc", "Var", "Expr",
    "Const", "Ref", "Binary", "Unary", "Cast", "Bitcast", "Select", "Load", "VecLoad", "Lane",
    "MakeVec", "Call", "Atomic", "MmaLoad", "Mma", "MmaZero", "FragElem", "Stmt", "Assign", "Store",
    "VecStore", "If", "For", "While", "Break", "Continue", "Return", "Barrier", "ExprStmt", "AsyncCopy",
    "AsyncCommit", "AsyncWait", "Wgmma", "WgmmaCommit", "WgmmaWait", "Kernel", "walk", "walk_body",
    "children", "is_pure",
    "format_kernel", "format_expr",
]
