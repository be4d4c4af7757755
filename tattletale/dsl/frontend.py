"""Python AST → typed IR.

The front end walks the kernel's AST once per specialization. It resolves names (locals, then the
kernel's globals and closure), evaluates compile-time values (constexpr parameters, Python
constants, `tt.static_range` loops, `if` on constants) in Python, infers a type for every runtime
expression, inserts explicit casts for promotions, and inlines `@tt.func` calls. Anything it
cannot lower raises `CompileError` pointing at the offending Python line.
"""

from __future__ import annotations

import ast
import builtins
import math
from dataclasses import dataclass, field
from typing import Any

from ..codegen import ir
from . import types as T
from .errors import CompileError
from .language import BUILTINS, Builtin


@dataclass
class Py:
    """A compile-time Python value (constant, constexpr, type, module, function, tuple…)."""

    value: Any


@dataclass
class SourceInfo:
    """Where a kernel or function came from, for error locations."""

    file: str
    first_line: int  # file line of the source's first line
    col_offset: int  # indentation removed by dedent
    lines: list[str]  # the file's lines for the function (un-dedented)

    def loc(self, node: ast.AST) -> ir.Loc:
        line = getattr(node, "lineno", 1)
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        # ast columns count UTF-8 bytes; carets count characters
        col = getattr(node, "col_offset", 0) + self.col_offset
        col = len(text.encode()[:col].decode(errors="ignore"))
        return ir.Loc(self.file, line + self.first_line - 1, col, text)


@dataclass
class FunctionSource:
    """A parsed `@tt.kernel` or `@tt.func` body and the namespaces its names resolve in."""

    name: str
    tree: ast.FunctionDef
    src: SourceInfo
    globals: dict
    closure: dict


@dataclass
class _InlineFrame:
    """State of a `@tt.func` being inlined: where its return value goes."""

    result: ir.Var | None = None
    done: ir.Var | None = None  # set when `return` happens inside a loop of the function
    loop_depth: int = 0
    needs_exit: bool = False  # a `return` before the end: the body is wrapped in a one-shot loop
    branch_depth: int = 0  # runtime `if`s around the statement being lowered
    # While every return so far gave a Python number: those assignments and their values, so a
    # later typed return can retype them (`return 0` ... `return x` returns x's type).
    literal_returns: list[tuple[ir.Assign, Any]] | None = field(default_factory=list)


@dataclass
class _Scope:
    fn: FunctionSource
    names: dict[str, Any] = field(default_factory=dict)  # name -> ir.Var | Py
    assign_counts: dict[str, int] = field(default_factory=dict)
    inline: _InlineFrame | None = None
    runtime_depth: int = 0  # runtime if/loop bodies around the statement being lowered


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|",
           ast.BitXor: "^", ast.Pow: "**"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_LANE_NAMES = {"x": 0, "y": 1, "z": 2, "w": 3}
# Python callables that have effects outside the kernel, never run at compile time.
_HOST_ONLY = {builtins.print, builtins.input, builtins.open, builtins.exec, builtins.eval,
              builtins.compile, builtins.breakpoint, builtins.__import__}
_FLOAT_ONLY_MATH = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin", "cos", "tanh", "floor",
                    "ceil", "erf"}


def _c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _fold_py(op: str, a, b):
    """Compile-time arithmetic with the DSL's (C) semantics for integer // and %."""
    if op == "//" and isinstance(a, int) and isinstance(b, int):
        return _c_div(a, b)
    if op == "%" and isinstance(a, int) and isinstance(b, int):
        return a - _c_div(a, b) * b
    return {
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
        "//": lambda: math.floor(a / b), "%": lambda: math.fmod(a, b), "<<": lambda: a << b,
        ">>": lambda: a >> b, "&": lambda: a & b, "|": lambda: a | b, "^": lambda: a ^ b,
        "**": lambda: a ** b, "<": lambda: a < b, "<=": lambda: a <= b, ">": lambda: a > b,
        ">=": lambda: a >= b, "==": lambda: a == b, "!=": lambda: a != b,
    }[op]()


class KernelBuilder:
    """Lowers one kernel specialization. `bindings` maps each parameter to its IR type or,
    for constexpr parameters, its compile-time value."""

    def __init__(self, fn: FunctionSource, bindings: dict[str, Any], subgroup_size: int):
        self.fn = fn
        self.subgroup_size = subgroup_size
        self.locals: list[ir.Var] = []
        self.features: set[str] = set()
        self._used_names: set[str] = set()
        self._bindings = bindings
        self._scope = _Scope(fn)
        self._loc: ir.Loc | None = None
        self._out: list[ir.Stmt] = []
        self._terminated = False  # the current block has reached an unconditional exit
        self._inlining: list = []  # the @tt.func calls being inlined, innermost last
        self._kernel_assigns: dict[str, int] = {}  # assignments per name in the kernel body

    # --- entry ----------------------------------------------------------------------------------

    def build(self) -> ir.Kernel:
        params: list[ir.Var] = []
        for name, binding in self._bindings.items():
            if isinstance(binding, Py):
                self._scope.names[name] = binding
            else:
                var = ir.Var(self._unique(name), binding, "param")
                params.append(var)
                self._scope.names[name] = var
        self._scope.assign_counts = _count_assignments(self.fn.tree)
        self._kernel_assigns = self._scope.assign_counts
        body = self._block(self.fn.tree.body)
        return ir.Kernel(self.fn.name, params, self.locals, body, self.features, self.fn.src.file)

    # --- helpers --------------------------------------------------------------------------------

    def error(self, msg: str, node: ast.AST | None = None) -> CompileError:
        loc = self._scope.fn.src.loc(node) if node is not None else self._loc
        if loc is None:
            return CompileError(msg, self.fn.src.file)
        return CompileError(msg, loc.file, loc.line, loc.col, loc.text)

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self._used_names:
            name = f"{base}_{n}"
            n += 1
        self._used_names.add(name)
        return name

    def new_var(self, name: str, type_: T.Type, kind: str = "local") -> ir.Var:
        var = ir.Var(self._unique(name), type_, kind)
        self.locals.append(var)
        return var

    def emit(self, stmt: ir.Stmt) -> None:
        stmt.loc = self._loc
        self._out.append(stmt)

    def _mk(self, expr: ir.Expr) -> ir.Expr:
        expr.loc = self._loc
        return expr

    def _block(self, stmts: list[ast.stmt]) -> list[ir.Stmt]:
        """Lower statements into a new list; lowering stops after an unconditional
        return/break/continue, as the code after it never runs (and may not even type-check,
        e.g. after `if FMT == "f32": return ...`)."""
        saved, self._out = self._out, []
        saved_terminated, self._terminated = self._terminated, False
        try:
            for s in stmts:
                self._stmt(s)
                if self._terminated:
                    break
            return self._out
        finally:
            self._out = saved
            self._terminated = saved_terminated

    # --- values ---------------------------------------------------------------------------------

    def const(self, value, type_: T.ScalarType) -> ir.Const:
        if type_.is_bool:
            value = bool(value)
        elif type_.is_float:
            value = T.round_float(value, type_)  # a constant holds a value of its type
        else:
            if isinstance(value, float):
                raise self.error(f"float constant {value} used where {type_} is needed")
            value = int(value)
            lo, hi = ((-(1 << (type_.bits - 1)), (1 << (type_.bits - 1)) - 1) if type_.is_signed
                      else (0, (1 << type_.bits) - 1))
            if not lo <= value <= hi:
                raise self.error(f"constant {value} does not fit in {type_}")
        return self._mk(ir.Const(value, type_))

    def to_expr(self, v, like: T.ScalarType | None = None, node: ast.AST | None = None) -> ir.Expr:
        """A runtime expression from a value; Python numbers take the type `like` (weak typing)."""
        if isinstance(v, ir.Expr):
            return v
        val = v.value if isinstance(v, Py) else v
        if isinstance(val, bool):
            return self.const(val, T.bool_)
        if isinstance(val, int):
            if like is not None and like.is_float:
                return self.const(float(val), like)
            if like is not None and like.is_int:
                return self.const(val, like)
            return self.const(val, T.i32 if -(1 << 31) <= val < (1 << 31) else T.i64)
        if isinstance(val, float):
            return self.const(val, like if like is not None and like.is_float else T.f32)
        raise self.error(f"{val!r} is not a value a kernel can compute with", node)

    def cast(self, e: ir.Expr, to: T.ScalarType) -> ir.Expr:
        if e.type == to:
            return e
        if isinstance(e, ir.Const):
            folded = self._convert_const(e.value, to)
            if folded is not None:
                return folded
        return self._mk(ir.Cast(to, e))

    def _convert_const(self, value, to: T.ScalarType) -> ir.Const | None:
        """A constant converted as a runtime cast would (C semantics: integers wrap, floats
        truncate toward zero, floats round to nearest even); None where C leaves it undefined."""
        if to.is_bool:
            return self.const(bool(value), to)
        if to.is_float:
            return self.const(float(value), to)
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            value = int(value)  # truncation toward zero
            lo, hi = ((-(1 << (to.bits - 1)), (1 << (to.bits - 1)) - 1) if to.is_signed
                      else (0, (1 << to.bits) - 1))
            if not lo <= value <= hi:
                return None
        return self.const(T.wrap_int(int(value), to), to)

    def to_bool(self, e: ir.Expr) -> ir.Expr:
        if not isinstance(e.type, T.ScalarType):
            raise self.error(f"a {e.type} cannot be used as a condition")
        if e.type.is_bool:
            return e
        zero = self.const(0, T.arith_type(e.type))
        return self._mk(ir.Binary("!=", self.cast(e, T.arith_type(e.type)), zero, T.bool_))

    def scalar_type(self, e: ir.Expr, what: str) -> T.ScalarType:
        if not isinstance(e.type, T.ScalarType):
            raise self.error(f"{what} needs a scalar, got {e.type}")
        return e.type

    # --- expressions ----------------------------------------------------------------------------

    def expr(self, node: ast.expr):
        saved, self._loc = self._loc, self._scope.fn.src.loc(node)
        method = getattr(self, "_e_" + type(node).__name__, None)
        if method is None:
            raise self.error(f"unsupported expression: {type(node).__name__}", node)
        result = method(node)
        # Back to the enclosing node's location: what the caller builds next (the statement
        # around an inlined @tt.func call, say) must not carry a sub-expression's line.
        self._loc = saved
        return result

    def rexpr(self, node: ast.expr, like: T.ScalarType | None = None) -> ir.Expr:
        """A runtime expression (compile-time values become constants)."""
        return self.to_expr(self.expr(node), like, node)

    def _e_Constant(self, node: ast.Constant):
        if isinstance(node.value, (bool, int, float, str)) or node.value is None:
            return Py(node.value)
        raise self.error(f"unsupported constant {node.value!r}", node)

    def _e_Name(self, node: ast.Name):
        v = self.lookup(node.id, node)
        if isinstance(v, ir.Var) and isinstance(v.type, (T.ScalarType, T.VectorType, T.FragmentType)):
            return self._mk(ir.Ref(v))
        return v

    def lookup(self, name: str, node: ast.AST):
        scope = self._scope
        if name in scope.names:
            return scope.names[name]
        if name in scope.fn.closure:
            return Py(scope.fn.closure[name])
        if name in scope.fn.globals:
            return Py(scope.fn.globals[name])
        if hasattr(builtins, name):
            return Py(getattr(builtins, name))
        raise self.error(f"name '{name}' is not defined", node)

    def _e_Attribute(self, node: ast.Attribute):
        base = self.expr(node.value)
        if isinstance(base, Py):
            try:
                return Py(getattr(base.value, node.attr))
            except AttributeError:
                raise self.error(f"{base.value!r} has no attribute '{node.attr}'", node) from None
        if isinstance(base, ir.Expr) and isinstance(base.type, T.VectorType):
            lane = _LANE_NAMES.get(node.attr)
            if lane is None or lane >= base.type.lanes:
                raise self.error(f"{base.type} has no lane '{node.attr}'", node)
            return self._mk(ir.Lane(base, lane))
        raise self.error(f"attribute '{node.attr}' is not supported here", node)

    def _e_Tuple(self, node: ast.Tuple):
        items = [self.expr(e) for e in node.elts]
        if all(isinstance(i, Py) for i in items):
            return Py(tuple(i.value for i in items))
        return Py(tuple(items))

    _e_List = _e_Tuple

    def _e_UnaryOp(self, node: ast.UnaryOp):
        v = self.expr(node.operand)
        if isinstance(v, Py):
            op = {ast.USub: lambda x: -x, ast.UAdd: lambda x: +x, ast.Not: lambda x: not x,
                  ast.Invert: lambda x: ~x}[type(node.op)]
            return Py(op(v.value))
        if isinstance(node.op, ast.Not):
            return self._mk(ir.Unary("not", self.to_bool(v)))
        t = self.scalar_type(v, "a unary operator")
        if isinstance(node.op, ast.UAdd):
            return v
        if isinstance(node.op, ast.Invert):
            if not t.is_int:
                raise self.error(f"'~' needs an integer, got {t}", node)
            return self._mk(ir.Unary("~", self.cast(v, T.arith_type(t))))
        if t.is_bool:
            raise self.error("cannot negate a bool", node)
        return self._mk(ir.Unary("-", self.cast(v, T.arith_type(t))))

    def _e_BinOp(self, node: ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.error(f"unsupported operator {type(node.op).__name__}", node)
        lhs, rhs = self.expr(node.left), self.expr(node.right)
        return self.binary(op, lhs, rhs, node)

    def binary(self, op: str, lhs, rhs, node: ast.AST):
        if isinstance(lhs, Py) and isinstance(rhs, Py):
            try:
                return Py(_fold_py(op, lhs.value, rhs.value))
            except Exception as exc:
                raise self.error(f"cannot evaluate {op} on {lhs.value!r}, {rhs.value!r}: {exc}",
                                 node) from None
        if op == "**":
            return self._power(lhs, rhs, node)
        a, b = self._unify(lhs, rhs, node)
        t = a.type
        if op in ("<<", ">>"):
            if not (t.is_int and b.type.is_int):
                raise self.error(f"shift needs integers, got {a.type} {op} {b.type}", node)
            a = self.cast(a, T.arith_type(lhs.type if isinstance(lhs, ir.Expr) else a.type))
            return self._mk(ir.Binary(op, a, self.cast(b, a.type), a.type))
        if op in ("&", "|", "^"):
            if t.is_float:
                raise self.error(f"bitwise '{op}' needs integers or bools, got {t}", node)
            if t.is_bool:
                return self._mk(ir.Binary(op, a, b, T.bool_))
        if op == "/" and not t.is_float:
            a, b, t = self.cast(a, T.f32), self.cast(b, T.f32), T.f32
        ct = T.arith_type(t)
        a, b = self.cast(a, ct), self.cast(b, ct)
        if op == "//" and ct.is_float:
            q = self._mk(ir.Binary("/", a, b, ct))
            return self._mk(ir.Call("floor", [q], ct))
        if op == "%" and ct.is_float:
            return self._mk(ir.Call("fmod", [a, b], ct))
        if op == "//":
            op = "/"
        return self._mk(ir.Binary(op, a, b, ct))

    def _power(self, lhs, rhs, node):
        base = self.to_expr(lhs, node=node)
        if isinstance(rhs, Py) and isinstance(rhs.value, int) and 1 <= rhs.value <= 4:
            t = T.arith_type(self.scalar_type(base, "'**'"))
            base = self.cast(base, t)
            acc = base
            for _ in range(rhs.value - 1):
                acc = self._mk(ir.Binary("*", acc, base, t))
            return acc
        b = self.cast(base, T.f32)
        e = self.cast(self.to_expr(rhs, T.f32, node), T.f32)
        return self._mk(ir.Call("pow", [b, e], T.f32))

    def _unify(self, lhs, rhs, node) -> tuple[ir.Expr, ir.Expr]:
        """Bring two operands to one scalar type; Python numbers adopt the other side's type."""
        if isinstance(lhs, Py) and isinstance(rhs, ir.Expr):
            like = self._weak_type(lhs, rhs, node)
            lhs = self.to_expr(lhs, like, node)
        elif isinstance(rhs, Py) and isinstance(lhs, ir.Expr):
            like = self._weak_type(rhs, lhs, node)
            rhs = self.to_expr(rhs, like, node)
        elif isinstance(lhs, Py) and isinstance(rhs, Py):  # `7 if c else 8`: each its own type
            if isinstance(lhs.value, (int, float, bool)) and isinstance(rhs.value, (int, float, bool)):
                lhs, rhs = self.to_expr(lhs, node=node), self.to_expr(rhs, node=node)
        for e in (lhs, rhs):
            if not isinstance(e, ir.Expr) or not isinstance(e.type, T.ScalarType):
                what = e.type if isinstance(e, (ir.Expr, ir.Var)) else repr(e.value)
                raise self.error(f"operator needs scalar operands, got {what}", node)
        t = T.promote(lhs.type, rhs.type)
        return self.cast(lhs, t), self.cast(rhs, t)

    def _weak_type(self, py: Py, other: ir.Expr, node) -> T.ScalarType:
        t = self.scalar_type(other, "an operator")
        if isinstance(py.value, float) and not t.is_float:
            return T.f32
        if isinstance(py.value, bool):
            return T.bool_ if t.is_bool else T.arith_type(t)
        return T.arith_type(t) if not t.is_bool else T.i32

    def _capture(self, node: ast.expr) -> tuple[Any, list[ir.Stmt]]:
        """Lower an expression that may not be evaluated (a branch of `x if c else y`, the right
        side of `and`/`or`): its value, and the statements it emitted (an inlined @tt.func),
        which the caller must run only when the value is needed."""
        saved, self._out = self._out, []
        try:
            return self.expr(node), self._out
        finally:
            self._out = saved

    def _e_BoolOp(self, node: ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        acc = self.expr(node.values[0])
        for vnode in node.values[1:]:
            if isinstance(acc, Py):
                if bool(acc.value) != (op == "and"):  # decided at compile time
                    return acc
                acc = self.expr(vnode)
                continue
            v, pre = self._capture(vnode)
            if isinstance(v, Py) and not pre and bool(v.value) == (op == "and"):
                continue  # `x and True`, `x or False`
            if not pre:
                acc = self._mk(ir.Binary(op, self.to_bool(acc), self.to_bool(self.to_expr(v)),
                                         T.bool_))
                continue
            # The right side runs code (an inlined function): only when it decides the result.
            tmp = self.new_var("cond", T.bool_)
            self.emit(ir.Assign(tmp, self.to_bool(acc)))
            test = self._mk(ir.Ref(tmp))
            if op == "or":
                test = self._mk(ir.Unary("not", test))
            then = [*pre, self._at(ir.Assign(tmp, self.to_bool(self.to_expr(v, node=vnode))))]
            self.emit(ir.If(test, then, []))
            acc = self._mk(ir.Ref(tmp))
        return acc if isinstance(acc, Py) else self.to_bool(acc)

    def _at(self, stmt: ir.Stmt) -> ir.Stmt:
        """A statement built outside `emit`, located at the current source line."""
        stmt.loc = self._loc
        return stmt

    def _e_Compare(self, node: ast.Compare):
        left = self.expr(node.left)
        result = None
        for op_node, right_node in zip(node.ops, node.comparators):
            op = _CMPOPS.get(type(op_node))
            if op is None:
                raise self.error(f"unsupported comparison {type(op_node).__name__}", node)
            right = self.expr(right_node)
            if right_node is not node.comparators[-1] and isinstance(right, ir.Expr) and \
                    not ir.is_pure(right):  # `a < f() < b` evaluates f() once
                tmp = self.new_var("cmp", right.type)
                self.emit(ir.Assign(tmp, right))
                right = self._mk(ir.Ref(tmp))
            if isinstance(left, Py) and isinstance(right, Py):
                cmp = Py(_fold_py(op, left.value, right.value))
            else:
                a, b = self._unify(left, right, node)
                ct = a.type if a.type.is_bool else T.arith_type(a.type)
                cmp = self._mk(ir.Binary(op, self.cast(a, ct), self.cast(b, ct), T.bool_))
            result = cmp if result is None else self._e_and(result, cmp)
            left = right
        return result

    def _e_and(self, a, b):
        if isinstance(a, Py):
            return b if a.value else a
        if isinstance(b, Py):
            return a if b.value else b
        return self._mk(ir.Binary("and", a, b, T.bool_))

    def _e_IfExp(self, node: ast.IfExp):
        cond = self.expr(node.test)
        if isinstance(cond, Py):
            return self.expr(node.body if cond.value else node.orelse)
        c = self.to_bool(self.to_expr(cond, node=node))
        (a, pre_a), (b, pre_b) = self._capture(node.body), self._capture(node.orelse)
        a, b = self._unify(a, b, node)
        if not pre_a and not pre_b:
            return self._mk(ir.Select(c, a, b, lazy=True))
        # A branch runs code (an inlined function): only the chosen one may run.
        tmp = self.new_var("choice", a.type)
        self.emit(ir.If(c, [*pre_a, self._at(ir.Assign(tmp, a))],
                        [*pre_b, self._at(ir.Assign(tmp, b))]))
        return self._mk(ir.Ref(tmp))

    def _e_Subscript(self, node: ast.Subscript):
        base = self.expr(node.value)
        if isinstance(base, Py):
            if isinstance(base.value, T._BufferFactory):  # Buffer[...] inside a kernel body
                raise self.error("Buffer[...] is only valid as a parameter annotation", node)
            idx = self.expr(node.slice)
            if isinstance(idx, Py):
                return Py(base.value[idx.value])
            raise self.error("cannot index a compile-time value with a runtime index", node)
        if isinstance(base, ir.Var):
            return self._mk(ir.Load(base, self.index(base, node.slice)))
        if isinstance(base, ir.Expr) and isinstance(base.type, T.VectorType):
            k = self.expr(node.slice)
            if not isinstance(k, Py) or not isinstance(k.value, int) or not \
                    0 <= k.value < base.type.lanes:
                raise self.error("vector lanes are selected by a constant index", node)
            return self._mk(ir.Lane(base, k.value))
        if isinstance(base, ir.Expr) and isinstance(base.type, T.FragmentType):
            return self._acc_element(base, self.expr(node.slice), node)
        raise self.error("only buffers, arrays and vectors can be indexed", node)

    def index(self, var: ir.Var, node: ast.expr) -> ir.Expr:
        """The linear element index of `var[node]` (multi-dimensional for shaped arrays)."""
        t = var.type
        parts = node.elts if isinstance(node, ast.Tuple) else [node]
        if isinstance(t, T.BufferType):
            if len(parts) != 1:
                raise self.error("buffers are one-dimensional: index with a single integer", node)
            return self._int_index(parts[0])
        shape = t.shape
        if len(parts) != len(shape):
            raise self.error(f"'{var.name}' has {len(shape)} dimension(s), indexed with "
                             f"{len(parts)}", node)
        acc = None
        for dim, part in zip(shape, parts):
            i = self._int_index(part)
            if acc is None:
                acc = i
            else:
                if t.swizzle:  # the row's 16-byte chunks are permuted (types.swizzle_terms)
                    shift, mask, chunk = T.swizzle_terms(t)
                    sel = self.binary("&", self.binary(">>", acc, Py(shift), node), Py(mask), node)
                    i = self.binary("^", i, self.binary("*", sel, Py(chunk), node), node)
                acc = self.binary("+", self.binary("*", acc, Py(dim), node), i, node)
        return acc

    def _int_index(self, node: ast.expr) -> ir.Expr:
        v = self.expr(node)
        e = self.to_expr(v, node=node)
        if not isinstance(e.type, T.ScalarType) or not e.type.is_int:
            raise self.error(f"an index must be an integer, got {e.type}", node)
        return self.cast(e, T.arith_type(e.type))

    def _e_Call(self, node: ast.Call):
        fn = self.expr(node.func)
        if not isinstance(fn, Py):
            raise self.error("only builtins, types and @tt.func functions can be called", node)
        f = fn.value
        if isinstance(f, T.ScalarType):
            self._no_kwargs(node)
            if len(node.args) != 1:
                raise self.error(f"tt.{f.name}(x) takes one argument", node)
            return self.convert(self.expr(node.args[0]), f, node)
        if isinstance(f, Builtin):
            return self._builtin(f, node)
        from .kernel import Func  # a @tt.func

        if isinstance(f, Func):
            return self._inline(f, node)
        if f is builtins.range:
            raise self.error("range(...) is only valid as a for-loop iterable", node)
        if f is builtins.len and len(node.args) == 1 and not node.keywords:
            v = self.expr(node.args[0])
            if isinstance(v, ir.Expr):
                return Py(self._length(v, node))
            try:
                return Py(len(v.value if isinstance(v, Py) else v))
            except TypeError as exc:
                raise self.error(f"compile-time call of 'len' failed: {exc}", node) from None
        if f in (builtins.min, builtins.max, builtins.abs):
            return self._builtin(BUILTINS[f.__name__], node)
        if f in (builtins.float, builtins.int, builtins.bool):
            self._no_kwargs(node)
            if len(node.args) != 1:
                raise self.error(f"{f.__name__}() takes one argument here", node)
            v = self.expr(node.args[0])
            if isinstance(v, Py):
                return Py(f(v.value))
            if f is builtins.bool:
                return self.to_bool(v)
            return self.convert(v, T.f32 if f is builtins.float else T.i32, node)
        if callable(f) and f not in _HOST_ONLY:
            # Any other Python function runs at compile time on compile-time arguments
            # (math.log2(BLOCK), helper functions computing tile shapes, …).
            args = [self.expr(a) for a in node.args]
            kwargs = {k.arg: self.expr(k.value) for k in node.keywords}
            if all(isinstance(a, Py) for a in [*args, *kwargs.values()]):
                try:
                    return Py(f(*(a.value for a in args), **{k: v.value for k, v in kwargs.items()}))
                except Exception as exc:
                    raise self.error(f"compile-time call of {getattr(f, '__name__', f)!r} failed: "
                                     f"{exc}", node) from None
            raise self.error(f"{getattr(f, '__name__', f)!r} is a Python function: inside a kernel it "
                             f"can only run at compile time, on compile-time arguments", node)
        raise self.error(f"cannot call {f!r} inside a kernel", node)

    def _no_kwargs(self, node: ast.Call):
        if node.keywords:
            raise self.error("keyword arguments are not supported here", node)

    def convert(self, v, to: T.ScalarType, node) -> ir.Expr | Py:
        if isinstance(v, Py):
            if isinstance(v.value, (int, float, bool)):
                c = self._convert_const(v.value, to)
                if c is None:
                    raise self.error(f"cannot convert {v.value!r} to {to}", node)
                return c
            raise self.error(f"cannot convert {v.value!r} to {to}", node)
        if not isinstance(v.type, T.ScalarType):
            raise self.error(f"cannot convert {v.type} to {to}", node)
        return self.cast(v, to)

    # --- builtins -------------------------------------------------------------------------------

    def _builtin(self, b: Builtin, node: ast.Call):
        name, kind = b.name, b.kind
        handler = getattr(self, "_b_" + kind)
        if kind not in ("atomic", "shared", "array", "static_assert") and node.keywords:
            self._no_kwargs(node)
        return handler(name, node)

    def _args(self, node: ast.Call, n: int | tuple[int, ...], name: str) -> list:
        counts = (n,) if isinstance(n, int) else n
        if len(node.args) not in counts:
            raise self.error(f"tt.{name}() takes {' or '.join(map(str, counts))} argument(s), "
                             f"got {len(node.args)}", node)
        return [self.expr(a) for a in node.args]

    def _const_int(self, v, node, what: str) -> int:
        if not isinstance(v, Py) or not isinstance(v.value, int):
            raise self.error(f"{what} must be a compile-time integer", node)
        return v.value

    def _b_id(self, name, node):
        (dim,) = self._args(node, 1, name)
        d = self._const_int(dim, node, "the dimension")
        if d not in (0, 1, 2):
            raise self.error("the dimension must be 0, 1 or 2", node)
        return self._mk(ir.Call(name, [], T.i32, dim=d))

    def _float_args(self, vals, node, name) -> list[ir.Expr]:
        exprs = [self.to_expr(v, T.f32, node) for v in vals]
        for e in exprs:
            t = self.scalar_type(e, f"tt.{name}")
            if not t.is_float:
                raise self.error(f"tt.{name} needs a float argument, got {t} (cast with "
                                 f"tt.f32(...))", node)
        ct = T.f64 if any(e.type == T.f64 for e in exprs) else T.f32
        return [self.cast(e, ct) for e in exprs]

    def _b_math1(self, name, node):
        (x,) = self._args(node, 1, name)
        if isinstance(x, Py) and name in ("sqrt", "exp", "log", "floor", "ceil", "log2", "sin",
                                          "cos", "tanh", "exp2"):
            f = {"exp2": lambda v: 2.0 ** v}.get(name, getattr(math, name, None))
            try:
                return Py(float(f(x.value)))
            except (ValueError, OverflowError, TypeError):
                pass  # log(0), sqrt(-1), exp(1000): the device's answer (inf, nan) at run time
        (a,) = self._float_args([x], node, name)
        return self._mk(ir.Call(name, [a], a.type))

    def _b_pow(self, name, node):
        x, y = self._args(node, 2, name)
        a, b = self._float_args([x, y], node, name)
        return self._mk(ir.Call("pow", [a, b], a.type))

    def _b_mul_rn(self, name, node):
        a, b = self._float_args(self._args(node, 2, name), node, name)
        return self._mk(ir.Call("mul_rn", [a, b], a.type))

    def _b_fma(self, name, node):
        args = self._float_args(self._args(node, 3, name), node, name)
        return self._mk(ir.Call("fma", args, args[0].type))

    def _b_absfn(self, name, node):
        (x,) = self._args(node, 1, name)
        if isinstance(x, Py):
            return Py(abs(x.value))
        t = T.arith_type(self.scalar_type(x, "abs"))
        return self._mk(ir.Call("abs", [self.cast(x, t)], t))

    def _b_minmax(self, name, node):
        vals = self._args(node, (2, 3, 4), name)
        if all(isinstance(v, Py) for v in vals):
            return Py(getattr(builtins, name)(v.value for v in vals))
        acc = vals[0]
        for v in vals[1:]:
            a, b = self._unify(acc, v, node)
            t = T.arith_type(a.type)
            acc = self._mk(ir.Call(name, [self.cast(a, t), self.cast(b, t)], t))
        return acc

    def _b_clamp(self, name, node):
        x, lo, hi = self._args(node, 3, name)
        a, b = self._unify(x, lo, node)
        a, c = self._unify(a, hi, node)
        t = T.arith_type(a.type)
        low = self._mk(ir.Call("max", [self.cast(a, t), self.cast(b, t)], t))
        return self._mk(ir.Call("min", [low, self.cast(c, t)], t))

    def _b_select(self, name, node):
        c, a, b = self._args(node, 3, name)
        if isinstance(c, Py):
            return a if c.value else b
        a, b = self._unify(a, b, node)
        return self._mk(ir.Select(self.to_bool(self.to_expr(c)), a, b, lazy=False))

    def _b_barrier(self, name, node):
        self._args(node, 0, name)
        self.emit(ir.Barrier())
        return Py(None)

    def _memory_target(self, v, node, what: str) -> ir.Var:
        if not isinstance(v, ir.Var) or not isinstance(v.type, (T.BufferType, T.ArrayType)):
            raise self.error(f"{what} needs a buffer or array as its first argument", node)
        return v

    def _b_atomic(self, name, node):
        op = name[len("atomic_"):]
        nargs = 4 if op == "cas" else 3
        if len(node.args) != nargs:
            raise self.error(f"tt.{name}(buf, index, {'compare, ' if op == 'cas' else ''}value) "
                             f"takes {nargs} arguments", node)
        var = self._memory_target(self.expr(node.args[0]), node, f"tt.{name}")
        if isinstance(var.type, T.ArrayType) and var.type.space != "shared":
            raise self.error("atomics work on buffers and shared arrays", node)
        elem = var.type.elem
        ok = elem in (T.i32, T.u32) or (elem == T.f32 and op in ("add", "xchg"))
        if not ok:
            raise self.error(f"tt.{name} is not available for {elem} (32-bit integers; f32 for "
                             f"add and xchg)", node)
        if elem == T.f32 and op == "add":
            self.features.add("atomic_float_add")
        index = self.index(var, node.args[1])
        vals = [self.cast(self._assignable(self.expr(a), elem, a), elem) for a in node.args[2:]]
        return self._mk(ir.Atomic(op, var, index, vals))

    def _b_vload(self, name, node):
        buf, i, n = self._args(node, 3, name)
        var = self._memory_target(buf, node, "tt.vload")
        lanes = self._const_int(n, node, "the lane count")
        if lanes not in (2, 4) or not isinstance(var.type, T.BufferType):
            raise self.error("tt.vload(buffer, i, n) loads 2 or 4 lanes from a buffer", node)
        return self._mk(ir.VecLoad(var, self._vec_index(i, node.args[1]), lanes))

    def _vec_index(self, i, node: ast.expr) -> ir.Expr:
        """The vector index of tt.vload/tt.vstore: an integer, computed in its arithmetic type."""
        index = self.to_expr(i, node=node)
        if not isinstance(index.type, T.ScalarType) or not index.type.is_int:
            raise self.error(f"an index must be an integer, got {index.type}", node)
        return self.cast(index, T.arith_type(index.type))

    def _b_vstore(self, name, node):
        buf, i, v = self._args(node, 3, name)
        var = self._memory_target(buf, node, "tt.vstore")
        if not isinstance(var.type, T.BufferType) or not isinstance(v, ir.Expr) or \
                not isinstance(v.type, T.VectorType):
            raise self.error("tt.vstore(buffer, i, vector) stores a vector into a buffer", node)
        index = self._vec_index(i, node.args[1])
        if v.type.elem != var.type.elem:
            v = self._vec_convert(v, var.type.elem, node)
        self.emit(ir.VecStore(var, index, v))
        return Py(None)

    def _vec_convert(self, v: ir.Expr, elem: T.ScalarType, node) -> ir.Expr:
        if elem.is_float != v.type.elem.is_float:
            raise self.error(f"cannot store a {v.type} into a Buffer[{elem}]", node)
        if not isinstance(v, ir.Ref):  # each lane reads the vector: evaluate it once
            tmp = self.new_var("vec", v.type)
            self.emit(ir.Assign(tmp, v))
            v = self._mk(ir.Ref(tmp))
        lanes = [self.cast(self._mk(ir.Lane(v, k)), elem) for k in range(v.type.lanes)]
        return self._mk(ir.MakeVec(T.VectorType(elem, v.type.lanes), lanes))

    def _b_vec(self, name, node):
        vals = self._args(node, (2, 4), name)
        exprs = [v for v in vals if isinstance(v, ir.Expr)]
        if not exprs:
            raise self.error("tt.vec needs at least one runtime value", node)
        t = exprs[0].type
        for e in exprs[1:]:
            t = T.promote(t, e.type) if t != e.type else t
        if t.is_bool:
            raise self.error("vectors of bool are not supported", node)
        elems = [self.cast(self.to_expr(v, t, node), t) for v in vals]
        return self._mk(ir.MakeVec(T.VectorType(t, len(elems)), elems))

    def _b_shared(self, name, node):
        return self._array(name, node, "shared")

    def _b_array(self, name, node):
        return self._array(name, node, "private")

    def _array(self, name, node, space):
        swizzle = False
        for kw in node.keywords:
            v = self.expr(kw.value)
            if kw.arg != "swizzle" or space != "shared" or not isinstance(v, Py):
                raise self.error("the one keyword argument here is tt.shared(..., swizzle=True) (a "
                                 "compile-time bool)", node)
            swizzle = bool(v.value)
        shape, dtype = self._args(node, 2, name)
        shp = shape.value if isinstance(shape, Py) else None
        if isinstance(shp, int):
            shp = (shp,)
        if not isinstance(shp, tuple) or not all(isinstance(d, int) and d > 0 for d in shp):
            raise self.error(f"tt.{name} needs a compile-time shape of positive integers", node)
        if isinstance(dtype, Py) and isinstance(dtype.value, T.FragmentType):
            if space == "shared":
                raise self.error("fragments live in registers: use tt.array, not tt.shared", node)
            return Py(_PendingArray(T.ArrayType(dtype.value, shp, space)))
        if not isinstance(dtype, Py) or not isinstance(dtype.value, T.ScalarType):
            raise self.error(f"tt.{name} needs a scalar dtype such as tt.f32", node)
        if swizzle:
            row = shp[-1] * dtype.value.itemsize
            if len(shp) != 2 or row not in (32, 64, 128) or shp[0] % 8 or dtype.value.is_bool:
                raise self.error(f"a swizzled array is 2-D, its rows 32, 64 or 128 bytes and their "
                                 f"count a multiple of 8, not {shp} of {dtype.value}", node)
            return Py(_PendingArray(T.ArrayType(dtype.value, shp, space, row)))
        return Py(_PendingArray(T.ArrayType(dtype.value, shp, space)))

    def _b_bitcast(self, name, node):
        x, to = self._args(node, 2, name)
        if not isinstance(to, Py) or not isinstance(to.value, T.ScalarType):
            raise self.error("tt.bitcast(x, dtype) needs a scalar dtype", node)
        e = self.to_expr(x, node=node)
        t = self.scalar_type(e, "tt.bitcast")
        if t.bits != to.value.bits or t.is_bool or to.value.is_bool:
            raise self.error(f"tt.bitcast needs types of one width, got {t} → {to.value}", node)
        if t == to.value:
            return e
        return self._mk(ir.Bitcast(to.value, e))

    def _b_cast(self, name, node):
        x, to = self._args(node, 2, name)
        if not isinstance(to, Py) or not isinstance(to.value, T.ScalarType):
            raise self.error("tt.cast(x, dtype) needs a scalar dtype", node)
        return self.convert(x, to.value, node)

    def _b_subgroup_info(self, name, node):
        self._args(node, 0, name)
        if name == "subgroup_size":
            return Py(self.subgroup_size)
        self.features.add("subgroup")
        return self._mk(ir.Call(name, [], T.i32))

    def _subgroup_value(self, v, node, name) -> ir.Expr:
        e = self.to_expr(v, node=node)
        t = T.arith_type(self.scalar_type(e, f"tt.{name}"))
        if t not in (T.f32, T.i32, T.u32):
            raise self.error(f"tt.{name} works on f32, i32 and u32 values, got {t}", node)
        return self.cast(e, t)

    def _b_subgroup_shuffle(self, name, node):
        x, lane = self._args(node, 2, name)
        v = self._subgroup_value(x, node, name)
        idx = self.cast(self.to_expr(lane, T.i32, node), T.i32)
        self.features.add("subgroup")
        return self._mk(ir.Call(name, [v, idx], v.type))

    def _b_subgroup_reduce(self, name, node):
        (x,) = self._args(node, 1, name)
        v = self._subgroup_value(x, node, name)
        self.features.add("subgroup")
        return self._mk(ir.Call(name, [v], v.type))

    # --- matrix multiply-accumulate (see codegen/mma.py) ----------------------------------------

    def _mma_layout(self, node):
        from ..codegen.mma import layout

        try:
            return layout(self.subgroup_size)
        except ValueError as exc:
            raise self.error(str(exc), node) from None

    def _b_mma_load(self, name, node):
        s, row, col = self._args(node, 3, name)
        var = s if isinstance(s, ir.Var) else None
        if var is None or not isinstance(var.type, T.ArrayType) or var.type.space != "shared" or \
                len(var.type.shape) != 2:
            raise self.error(f"tt.{name}(s, row, col) reads a 2-D shared array, e.g. "
                             f"tt.shared((64, 40), tt.f16)", node)
        if var.type.elem not in (T.f16, T.bf16):
            raise self.error(f"tt.{name} reads f16 or bf16 elements, not {var.type.elem}", node)
        if var.type.swizzle:
            raise self.error(f"tt.{name} reads unswizzled arrays ('{var.name}' is swizzled: "
                             f"tt.wgmma reads those)", node)
        rows, cols = var.type.shape
        if cols % 8:
            raise self.error(f"rows of '{var.name}' must be a multiple of 8 elements (16 bytes) for "
                             f"tt.{name}, not {cols}", node)
        r, c = self._vec_index(row, node.args[1]), self._vec_index(col, node.args[2])
        for what, e, limit in (("row", r, rows), ("column", c, cols)):
            if isinstance(e, ir.Const) and not 0 <= e.value <= limit - 16:
                raise self.error(f"the 16×16 tile at {what} {e.value} does not fit in '{var.name}' "
                                 f"({limit} {what}s)", node)
        if isinstance(c, ir.Const) and c.value % 8:
            raise self.error(f"the tile's first column must be a multiple of 8 (16-byte aligned rows), "
                             f"not {c.value}", node)
        self.features.add("mma")
        return self._mk(ir.MmaLoad(var, r, c, "a" if name == "mma_load_a" else "b",
                                   name == "mma_load_bt"))

    def _b_mma_zeros(self, name, node):
        self._args(node, 0, name)
        self.features.add("mma")
        return self._mk(ir.MmaZero())

    def _named_fragment(self, e: ir.Expr) -> ir.Expr:
        """A fragment value as a variable or an element of an array of fragments (what mma
        operands and element reads take), assigning other expressions to a temporary."""
        if isinstance(e, (ir.Ref, ir.Load)):
            return e
        tmp = self.new_var("frag", e.type)
        self.emit(ir.Assign(tmp, e))
        return self._mk(ir.Ref(tmp))

    def _b_mma(self, name, node):
        vals = self._args(node, 3, name)
        ops = []
        for v, use, what in zip(vals, ("a", "b", "acc"), ("first", "second", "third")):
            if not isinstance(v, ir.Expr) or not isinstance(v.type, T.FragmentType) or v.type.use != use:
                got = v.type if isinstance(v, (ir.Expr, ir.Var)) else repr(v.value)
                src = {"a": "tt.mma_load_a", "b": "tt.mma_load_b/bt", "acc": "tt.mma_zeros or tt.mma"}
                raise self.error(f"the {what} argument of tt.mma must be an '{use}' fragment (from "
                                 f"{src[use]}), got {got}", node)
            ops.append(self._named_fragment(v))
        a, b, c = ops
        if a.type.elem != b.type.elem:
            raise self.error(f"tt.mma needs A and B of one type, got {a.type.elem} and {b.type.elem}",
                             node)
        self.features.add("mma")
        return self._mk(ir.Mma(a, b, c))

    def _length(self, e: ir.Expr, node) -> int:
        t = e.type
        if isinstance(t, T.VectorType):
            return t.lanes
        if isinstance(t, T.FragmentType) and t.use == "acc":
            return self._mma_layout(node).count
        if isinstance(t, T.FragmentType) and t.use == "wgacc":
            return self._mma_layout(node).count * (t.n // 16)
        if isinstance(t, T.FragmentType):
            raise self.error("operand fragments are opaque: only accumulators have elements", node)
        raise self.error(f"len() of a runtime {t} value", node)

    def _acc_element(self, frag: ir.Expr, k, node) -> ir.Expr:
        count = self._length(frag, node)
        if isinstance(k, Py) and (not isinstance(k.value, int) or not 0 <= k.value < count):
            raise self.error(f"accumulator element {k.value!r} does not exist: a lane holds "
                             f"{count} (len(acc))", node)
        return self._mk(ir.FragElem(self._named_fragment(frag), self._element_index(k, node)))

    def _element_index(self, k, node) -> ir.Expr:
        e = self.to_expr(k, node=node)
        if not isinstance(e.type, T.ScalarType) or not e.type.is_int:
            raise self.error(f"an accumulator element index must be an integer, got {e.type}", node)
        return self.cast(e, T.i32)

    def _b_mma_coord(self, name, node):
        (e,) = self._args(node, 1, name)
        lay = self._mma_layout(node)
        if isinstance(e, Py) and (not isinstance(e.value, int) or not 0 <= e.value < lay.count):
            raise self.error(f"accumulator element {e.value!r} does not exist: a lane holds "
                             f"{lay.count} (len(acc))", node)
        if not isinstance(e, Py):
            e = self._element_index(e, node)
        row, col = self._mma_coord_of(e, lay, node)
        # runtime values even where they fold (one-lane subgroups): names bound to them may be
        # reassigned under runtime control flow, as in any unrolled loop
        return Py((self.to_expr(row, T.i32, node), self.to_expr(col, T.i32, node)))

    def _mma_coord_of(self, e, lay, node):
        """(row, column) of element e of this lane's share of a 16 × 16 accumulator."""
        lane = Py(0)
        if lay.lanes > 1:
            self.features.add("subgroup")
            lane = self._mk(ir.Call("subgroup_local_id", [], T.i32))
        b = self.binary

        def offset(o, i):  # (i // period) * big + (i % period) * small
            if o.period == 1:
                return b("*", i, Py(o.big), node)
            return b("+", b("*", b("//", i, Py(o.period), node), Py(o.big), node),
                     b("*", b("%", i, Py(o.period), node), Py(o.small), node), node)

        nc = Py(lay.cols.count)
        row = b("+", b("//", lane, Py(lay.row_div), node), offset(lay.rows, b("//", e, nc, node)), node)
        col = b("*", b("%", lane, Py(lay.col_mod), node), Py(lay.col_mul), node)
        col = b("+", col, offset(lay.cols, b("%", e, nc, node)), node)
        return row, col

    # --- warpgroup matrix multiply-accumulate (tt.wgmma) -----------------------------------------

    def _b_wgmma_zeros(self, name, node):
        (n,) = self._args(node, 1, name)
        n = self._const_int(n, node, "the accumulator's column count")
        try:
            T.fragment("wgacc", n=n)
        except TypeError as exc:
            raise self.error(str(exc), node) from None
        self._mma_layout(node)
        self.features.add("wgmma")
        return self._mk(ir.MmaZero("wgacc", n))

    def _wgmma_tile(self, arr, at, node, what: str, rows: int):
        """(array, row, col) of one operand tile of tt.wgmma, checked."""
        var = arr if isinstance(arr, ir.Var) else None
        if var is None or not isinstance(var.type, T.ArrayType) or not var.type.swizzle:
            raise self.error(f"tt.wgmma reads {what} from a swizzled shared array (tt.shared(shape, "
                             f"tt.f16, swizzle=True))", node)
        if var.type.elem not in (T.f16, T.bf16):
            raise self.error(f"tt.wgmma reads f16 or bf16 elements, not {var.type.elem}", node)
        if not isinstance(at, Py) or not isinstance(at.value, tuple) or len(at.value) != 2:
            raise self.error(f"the corner of {what} is a (row, column) pair", node)
        r, c = (self._vec_index(v if isinstance(v, (Py, ir.Expr)) else Py(v), node) for v in at.value)
        total, cols = var.type.shape
        if isinstance(r, ir.Const) and (r.value % 8 or not 0 <= r.value <= total - rows):
            raise self.error(f"the {rows}-row tile of {what} at row {r.value} must start at a multiple "
                             f"of 8 inside '{var.name}' ({total} rows)", node)
        if isinstance(c, ir.Const) and (c.value % 16 or not 0 <= c.value <= cols - 16):
            raise self.error(f"the 16 columns of {what} at column {c.value} must start at a multiple "
                             f"of 16 inside '{var.name}' ({cols} columns)", node)
        return var, r, c

    def _b_wgmma(self, name, node):
        if len(node.args) not in (5, 6):
            raise self.error("tt.wgmma(acc, a, (row, col), b, (row, col)[, accumulate]) takes 5 or 6 "
                             "arguments", node)
        acc, a, at, b, bt = (self.expr(x) for x in node.args[:5])
        accumulate = self.const(True, T.bool_)
        if len(node.args) == 6:
            accumulate = self.to_bool(self.to_expr(self.expr(node.args[5]), node=node.args[5]))
            if not isinstance(accumulate, (ir.Const, ir.Ref)):
                tmp = self.new_var("accumulate", T.bool_)
                self.emit(ir.Assign(tmp, accumulate))
                accumulate = self._mk(ir.Ref(tmp))
        if not isinstance(acc, ir.Expr) or not isinstance(acc.type, T.FragmentType) or \
                acc.type.use != "wgacc":
            got = acc.type if isinstance(acc, (ir.Expr, ir.Var)) else repr(acc.value)
            raise self.error(f"the first argument of tt.wgmma is a warpgroup accumulator (from "
                             f"tt.wgmma_zeros), got {got}", node)
        if not isinstance(acc, (ir.Ref, ir.Load)):
            raise self.error("tt.wgmma updates a named accumulator (a variable or an array "
                             "element)", node)
        a, ar, ac = self._wgmma_tile(a, at, node, "A", 64)
        b, br, bc = self._wgmma_tile(b, bt, node, "B", acc.type.n)
        if a.type.elem != b.type.elem:
            raise self.error(f"tt.wgmma needs A and B of one type, got {a.type.elem} and "
                             f"{b.type.elem}", node)
        self._mma_layout(node)
        self.features.add("wgmma")
        self.emit(ir.Wgmma(acc, a, ar, ac, b, br, bc, accumulate))
        return Py(None)

    def _b_wgmma_commit(self, name, node):
        self._args(node, 0, name)
        self.features.add("wgmma")
        self.emit(ir.WgmmaCommit())
        return Py(None)

    def _b_wgmma_wait(self, name, node):
        (n,) = self._args(node, 1, name)
        pending = self._const_int(n, node, "the number of wgmma groups left in flight")
        if pending < 0:
            raise self.error("tt.wgmma_wait(n) needs n ≥ 0", node)
        self.features.add("wgmma")
        self.emit(ir.WgmmaWait(pending))
        return Py(None)

    def _b_wgmma_coord(self, name, node):
        """Element e = 16-column block j · C + f (C = len of a 16 × 16 accumulator): row
        16 · (subgroup % 4) + row(f), column 16 · j + column(f) by the mma layout."""
        (e,) = self._args(node, 1, name)
        lay = self._mma_layout(node)
        if isinstance(e, Py) and (not isinstance(e.value, int) or e.value < 0):
            raise self.error(f"accumulator element {e.value!r} does not exist", node)
        if not isinstance(e, Py):
            e = self._element_index(e, node)
        b = self.binary
        count = Py(lay.count)
        r, c = self._mma_coord_of(b("%", e, count, node), lay, node)
        self.features.add("subgroup")
        quarter = b("%", self._mk(ir.Call("subgroup_id", [], T.i32)), Py(4), node)
        row = b("+", b("*", quarter, Py(16), node), r, node)
        col = b("+", b("*", b("//", e, count, node), Py(16), node), c, node)
        return Py((self.to_expr(row, T.i32, node), self.to_expr(col, T.i32, node)))

    def _b_async_copy(self, name, node):
        if len(node.args) not in (5, 6):
            raise self.error("tt.async_copy(dst, dst_index, src, src_index, n[, pred]) takes 5 or 6 "
                             "arguments", node)
        dst = self.expr(node.args[0])
        if not isinstance(dst, ir.Var) or not isinstance(dst.type, T.ArrayType) or \
                dst.type.space != "shared":
            raise self.error("tt.async_copy copies into a shared array (its first argument)", node)
        di = self.index(dst, node.args[1])
        src = self.expr(node.args[2])
        if not isinstance(src, ir.Var) or not isinstance(src.type, T.BufferType):
            raise self.error("tt.async_copy copies from a buffer (its third argument)", node)
        elem = dst.type.elem
        if src.type.elem != elem:
            raise self.error(f"tt.async_copy needs one element type, got {src.type.elem} → {elem}",
                             node)
        si = self._vec_index(self.expr(node.args[3]), node.args[3])
        n = self._const_int(self.expr(node.args[4]), node, "the element count")
        if n <= 0 or n * elem.itemsize not in (4, 8, 16):
            raise self.error(f"tt.async_copy moves 4, 8 or 16 bytes, not {n} × {elem}", node)
        if isinstance(di, ir.Const) and di.value % n:
            raise self.error(f"the shared destination must be aligned to the copy: its element index "
                             f"{di.value} is not a multiple of {n}", node)
        pred = self.const(True, T.bool_)
        if len(node.args) == 6:
            pred = self.to_bool(self.to_expr(self.expr(node.args[5]), node=node.args[5]))
            if not isinstance(pred, (ir.Const, ir.Ref)):
                tmp = self.new_var("pred", T.bool_)
                self.emit(ir.Assign(tmp, pred))
                pred = self._mk(ir.Ref(tmp))
        self.features.add("async_copy")
        self.emit(ir.AsyncCopy(dst, di, src, si, n, pred))
        return Py(None)

    def _b_async_commit(self, name, node):
        self._args(node, 0, name)
        self.features.add("async_copy")
        self.emit(ir.AsyncCommit())
        return Py(None)

    def _b_async_wait(self, name, node):
        (n,) = self._args(node, 1, name)
        pending = self._const_int(n, node, "the number of copy groups left in flight")
        if pending < 0:
            raise self.error("tt.async_wait(n) needs n ≥ 0", node)
        self.features.add("async_copy")
        self.emit(ir.AsyncWait(pending))
        return Py(None)

    def _b_static_range(self, name, node):
        raise self.error("tt.static_range(...) is only valid as a for-loop iterable", node)

    def _b_static_assert(self, name, node):
        vals = [self.expr(a) for a in node.args]
        if not vals or not isinstance(vals[0], Py):
            raise self.error("tt.static_assert needs a compile-time condition", node)
        if not vals[0].value:
            msg = vals[1].value if len(vals) > 1 and isinstance(vals[1], Py) else "static assertion"
            raise self.error(f"static assertion failed: {msg}", node)
        return Py(None)

    # --- @tt.func inlining ----------------------------------------------------------------------

    def _inline(self, f, node: ast.Call):
        if f in self._inlining:
            raise self.error(f"recursive call of @tt.func {f.__name__}: device functions are "
                             f"inlined and cannot recurse", node)
        src = f.source()
        params = [a.arg for a in src.tree.args.args]
        if len(node.args) > len(params):
            raise self.error(f"{src.name}() takes {len(params)} arguments", node)
        args = [self.expr(a) for a in node.args]
        kw = {k.arg: self.expr(k.value) for k in node.keywords}
        defaults = src.tree.args.defaults
        scope = _Scope(src, inline=_InlineFrame())
        scope.assign_counts = _count_assignments(src.tree)
        for i, pname in enumerate(params):
            if i < len(args):
                v = args[i]
            elif pname in kw:
                v = kw.pop(pname)
            elif i >= len(params) - len(defaults):
                # Python evaluates defaults where the function is defined: in its own module.
                saved, self._scope = self._scope, scope
                try:
                    v = self.expr(defaults[i - (len(params) - len(defaults))])
                finally:
                    self._scope = saved
            else:
                raise self.error(f"{src.name}() missing argument '{pname}'", node)
            scope.names[pname] = self._bind_param(v, src.tree.args.args[i], scope, node)
        if kw:
            raise self.error(f"{src.name}() got unexpected arguments {sorted(kw)}", node)
        saved, self._scope = self._scope, scope
        self._inlining.append(f)
        try:
            body = self._block(src.tree.body)
        finally:
            self._scope = saved
            self._inlining.pop()
        frame = scope.inline
        if frame.needs_exit:
            body = [ir.While(self.const(True, T.bool_), body + [ir.Break()])]
        if frame.done is not None:
            body.insert(0, ir.Assign(frame.done, self.const(False, T.bool_)))
        self._out.extend(body)
        if frame.result is None:
            return Py(None)
        return self._mk(ir.Ref(frame.result))

    def _bind_param(self, v, arg: ast.arg, scope: _Scope, node):
        """Arguments of an inlined function: memory and compile-time values alias, scalars copy."""
        assigned = scope.assign_counts.get(arg.arg, 0) > 0
        if isinstance(v, Py) and assigned and isinstance(v.value, (bool, int, float)):
            v = self.to_expr(v, node=node)  # a number the body reassigns: a variable, as for locals
        if isinstance(v, (Py, ir.Var)):
            return v
        if not assigned and ir.is_pure(v) and isinstance(v, (ir.Ref, ir.Const)):
            return v
        if not assigned and isinstance(v, ir.Load) and isinstance(v.type, T.FragmentType) and \
                ir.is_pure(v.index):
            return v  # an element of an array of fragments: aliased, not copied
        t = v.type
        if isinstance(t, T.ScalarType) and t.is_float and t.bits == 16:
            t, v = T.f32, self.cast(v, T.f32)  # 16-bit values compute in f32, as in kernels
        var = self.new_var(arg.arg, t)
        self.emit(ir.Assign(var, v))
        return var

    # --- statements -----------------------------------------------------------------------------

    def _stmt(self, node: ast.stmt) -> None:
        saved, self._loc = self._loc, self._scope.fn.src.loc(node)
        method = getattr(self, "_s_" + type(node).__name__, None)
        if method is None:
            raise self.error(f"unsupported statement: {type(node).__name__}", node)
        method(node)
        self._loc = saved

    def _s_Pass(self, node):
        pass

    def _s_Expr(self, node: ast.Expr):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # docstring
        v = self.expr(node.value)
        if isinstance(v, ir.Expr) and not ir.is_pure(v) or isinstance(v, ir.Atomic):
            self.emit(ir.ExprStmt(v))

    def _s_Assign(self, node: ast.Assign):
        value = self.expr(node.value)
        if len(node.targets) > 1 and isinstance(value, ir.Expr) and \
                not isinstance(value, (ir.Const, ir.Ref)):
            tmp = self.new_var("tmp", value.type)  # `a = b = f()` evaluates f() once
            self.emit(ir.Assign(tmp, value))
            value = self._mk(ir.Ref(tmp))
        for target in node.targets:
            self.assign(target, value, node)

    def _s_AnnAssign(self, node: ast.AnnAssign):
        ann = self.expr(node.annotation)
        if not isinstance(ann, Py) or not isinstance(ann.value, T.ScalarType):
            raise self.error("a variable annotation must be a scalar type such as tt.f32", node)
        if not isinstance(node.target, ast.Name):
            raise self.error("annotated assignment needs a plain name", node)
        name = node.target.id
        if name in self._scope.names:
            raise self.error(f"'{name}' is already defined", node)
        var = self.new_var(name, ann.value)
        self._scope.names[name] = var
        if node.value is not None:
            self.assign(node.target, self.expr(node.value), node)

    def _s_AugAssign(self, node: ast.AugAssign):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.error(f"unsupported operator {type(node.op).__name__}", node)
        target = node.target
        if isinstance(target, ast.Name):
            cur = self._e_Name(target)
            self.assign(target, self.binary(op, cur, self.expr(node.value), node), node)
        elif isinstance(target, ast.Subscript):
            var = self.expr(target.value)
            if not isinstance(var, ir.Var):
                raise self.error("only buffers and arrays can be updated in place", node)
            idx = self.index(var, target.slice)
            if not ir.is_pure(idx):  # `x[f()] += 1` evaluates f() once
                tmp = self.new_var("idx", idx.type)
                self.emit(ir.Assign(tmp, idx))
                idx = self._mk(ir.Ref(tmp))
            cur = self._mk(ir.Load(var, idx))
            new = self.binary(op, cur, self.expr(node.value), node)
            self._store(var, idx, new, node)
        else:
            raise self.error("unsupported augmented assignment target", node)

    def assign(self, target: ast.expr, value, node) -> None:
        if isinstance(target, ast.Tuple):
            vals = value.value if isinstance(value, Py) and isinstance(value.value, tuple) else None
            if vals is None or len(vals) != len(target.elts):
                raise self.error("tuple assignment needs a tuple of the same length", node)
            temps = []
            for v in vals:  # evaluate every right-hand side before assigning (a, b = b, a)
                if isinstance(v, ir.Expr) and not isinstance(v, ir.Const):
                    tmp = self.new_var("tmp", v.type)
                    self.emit(ir.Assign(tmp, v))
                    v = self._mk(ir.Ref(tmp))
                temps.append(v)
            for t, v in zip(target.elts, temps):
                self.assign(t, v if isinstance(v, (ir.Expr, Py, ir.Var)) else Py(v), node)
            return
        if isinstance(target, ast.Subscript):
            var = self.expr(target.value)
            if not isinstance(var, ir.Var) or not isinstance(var.type, (T.BufferType, T.ArrayType)):
                raise self.error("only buffers and arrays can be assigned by index", target)
            self._store(var, self.index(var, target.slice), value, node)
            return
        if not isinstance(target, ast.Name):
            raise self.error(f"unsupported assignment target {type(target).__name__}", target)
        name = target.id
        if isinstance(value, Py) and isinstance(value.value, _PendingArray):
            if name in self._scope.names:
                raise self.error(f"'{name}' is already defined; arrays are declared once", node)
            self._scope.names[name] = self.new_var(name, value.value.type, value.value.type.space)
            return
        cur = self._scope.names.get(name)
        if cur is None:
            if isinstance(value, Py) and (self._scope.assign_counts.get(name, 0) <= 1 or not
                                          isinstance(value.value, (int, float, bool))):
                self._scope.names[name] = value  # a compile-time constant
                return
            if isinstance(value, ir.Var):
                self._scope.names[name] = value  # an alias of a buffer/array
                return
            e = self.to_expr(value, node=node)
            if isinstance(e.type, (T.ScalarType, T.VectorType, T.FragmentType)) and not (
                    isinstance(e.type, T.ScalarType) and e.type.bits == 16 and e.type.is_float):
                var = self.new_var(name, e.type)
            else:  # 16-bit float values live in f32 variables: arithmetic is in f32 anyway
                var = self.new_var(name, T.f32)
                e = self.cast(e, T.f32)
            self._scope.names[name] = var
            self.emit(ir.Assign(var, e))
            return
        if isinstance(cur, Py) and isinstance(value, Py) and self._scope.runtime_depth == 0:
            # Rebinding in straight-line code (e.g. once per unrolled copy) happens at compile
            # time in program order; under a runtime `if` or loop it would ignore the condition.
            self._scope.names[name] = value
            return
        if isinstance(cur, Py):
            raise self.error(f"'{name}' is a compile-time constant and cannot be reassigned "
                             f"(assign it a runtime value first, e.g. with tt.i32(...))", node)
        if not (cur.kind == "local" or (cur.kind == "param" and isinstance(cur.type, T.ScalarType))):
            raise self.error(f"cannot assign to '{name}' (a {cur.kind} of type {cur.type})", node)
        e = self.cast(self._assignable(value, cur.type, node, name), cur.type) \
            if isinstance(cur.type, T.ScalarType) else self.to_expr(value, node=node)
        if e.type != cur.type:
            raise self.error(f"cannot assign {e.type} to '{name}' of type {cur.type}", node)
        self.emit(ir.Assign(cur, e))

    def _assignable(self, value, to: T.ScalarType, node, name: str | None = None) -> ir.Expr:
        """Check an implicit conversion for assignment: numbers of one family convert freely
        (f32 → f16 rounds), float ↔ integer needs an explicit cast."""
        e = self.to_expr(value, to, node)
        t = e.type
        if not isinstance(t, T.ScalarType):
            raise self.error(f"cannot assign {t} to a {to}", node)
        if t == to or isinstance(value, Py):
            return e
        if t.is_float != to.is_float and not t.is_bool and not (to.is_bool and t.is_int):
            where = f"'{name}' of type {to}" if name else f"a {to} location"
            raise self.error(f"cannot assign {t} to {where}; convert explicitly, e.g. "
                             f"tt.{to.name}(...)", node)
        return e

    def _store(self, var: ir.Var, index: ir.Expr, value, node) -> None:
        elem = var.type.elem
        if isinstance(elem, T.FragmentType):
            if not isinstance(value, ir.Expr) or value.type != elem:
                got = value.type if isinstance(value, ir.Expr) else repr(value.value)
                raise self.error(f"cannot store {got} into an array of {elem}", node)
            self.emit(ir.Store(var, index, value))
            return
        if isinstance(var.type, T.BufferType) or var.kind in ("shared", "private"):
            e = self.cast(self._assignable(value, elem, node), elem)
            self.emit(ir.Store(var, index, e))
            return
        raise self.error(f"cannot store into '{var.name}'", node)

    def _s_If(self, node: ast.If):
        cond = self.expr(node.test)
        if isinstance(cond, Py):
            for s in (node.body if cond.value else node.orelse):
                self._stmt(s)
                if self._terminated:
                    break
            return
        c = self.to_bool(self.to_expr(cond, node=node))
        loc = self._loc
        frame = self._scope.inline
        if frame:
            frame.branch_depth += 1
        self._scope.runtime_depth += 1
        then = self._block(node.body)
        orelse = self._block(node.orelse)
        self._scope.runtime_depth -= 1
        if frame:
            frame.branch_depth -= 1
        self._loc = loc
        self.emit(ir.If(c, then, orelse))

    def _s_While(self, node: ast.While):
        if node.orelse:
            raise self.error("while/else is not supported", node)
        cond, pre = self._capture(node.test)
        loc = self._loc
        c = self.to_bool(self.to_expr(cond, node=node))
        body = self._loop_body(node.body)
        self._loc = loc
        if pre:  # the condition runs code (an inlined function): before every iteration
            body = [*pre, self._at(ir.If(self._mk(ir.Unary("not", c)), [self._at(ir.Break())],
                                         [])), *body]
            c = self.const(True, T.bool_)
        self.emit(ir.While(c, body))
        self._after_loop()

    def _loop_body(self, stmts) -> list[ir.Stmt]:
        frame = self._scope.inline
        if frame:
            frame.loop_depth += 1
        self._scope.runtime_depth += 1
        try:
            return self._block(stmts)
        finally:
            self._scope.runtime_depth -= 1
            if frame:
                frame.loop_depth -= 1

    def _after_loop(self) -> None:
        """Inside an inlined function, a `return` in a loop must also leave the enclosing loops."""
        frame = self._scope.inline
        if frame and frame.done is not None:
            self.emit(ir.If(self._mk(ir.Ref(frame.done)), [ir.Break()], []))

    def _s_For(self, node: ast.For):
        if node.orelse:
            raise self.error("for/else is not supported", node)
        it = node.iter
        fn = self.expr(it.func) if isinstance(it, ast.Call) else None
        if isinstance(fn, Py) and fn.value is BUILTINS["static_range"]:
            self._static_for(node, [self.expr(a) for a in it.args], node)
            return
        if not (isinstance(fn, Py) and fn.value is builtins.range):
            seq = self.expr(it)
            if isinstance(seq, Py) and isinstance(seq.value, tuple):
                self._unrolled(node, list(seq.value))
                return
            raise self.error("for loops iterate over range(...), tt.static_range(...) or a "
                             "compile-time tuple", it)
        if not isinstance(node.target, ast.Name):
            raise self.error("the loop variable must be a plain name", node.target)
        args = [self.expr(a) for a in it.args]
        if not 1 <= len(args) <= 3:
            raise self.error("range() takes 1 to 3 arguments", it)
        if len(args) == 1:
            args = [Py(0), args[0], Py(1)]
        elif len(args) == 2:
            args = [args[0], args[1], Py(1)]
        runtime = [a for a in args if isinstance(a, ir.Expr)]
        t = T.i32
        for a in runtime:
            at = self.scalar_type(a, "range()")
            if not at.is_int:
                raise self.error(f"range() needs integers, got {at}", it)
            t = T.promote(t, at)
        if not t.is_signed and any(isinstance(a, Py) and isinstance(a.value, int) and a.value < 0
                                   for a in args) and t.bits < 64:
            t = T.i64  # range(n - 1, -1, -1) with an unsigned n counts down past zero
        start, stop, step = (self.cast(self.to_expr(a, t, it), t) for a in args)
        if isinstance(step, ir.Const) and step.value == 0:
            raise self.error("range() step must not be zero", it)
        stop, step = self._hoist(stop, "stop"), self._hoist(step, "step")
        name = node.target.id
        cur = self._scope.names.get(name)
        if isinstance(cur, ir.Var) and cur.kind == "local" and cur.type == t:
            var = cur
        else:
            var = self.new_var(name, t)
            self._scope.names[name] = var
        counter = var
        if _assigns_name(node.body, name) or _read_outside(self._scope.fn.tree, node, name):
            # Python's range() hands out the next value whatever the body did to the loop
            # variable, and leaves it at the last value handed out (C's loop variable ends one
            # step past it): iterate a hidden counter and copy it into the variable.
            counter = self.new_var(f"{name}_iter", t)
        loc = self._loc
        body = self._loop_body(node.body)
        self._loc = loc
        if counter is not var:
            copy = ir.Assign(var, self._mk(ir.Ref(counter)))
            copy.loc = loc
            body.insert(0, copy)
        self.emit(ir.For(counter, start, stop, step, body))
        self._after_loop()

    def _hoist(self, e: ir.Expr, name: str) -> ir.Expr:
        """Evaluate a loop bound once, as Python does."""
        if isinstance(e, ir.Const) or (isinstance(e, ir.Ref) and e.var.kind == "param" and
                                       self._kernel_assigns.get(e.var.name, 0) == 0):
            return e
        var = self.new_var(name, e.type)
        self.emit(ir.Assign(var, e))
        return self._mk(ir.Ref(var))

    def _static_for(self, node: ast.For, args: list, at) -> None:
        vals = []
        for a in args:
            if not isinstance(a, Py) or not isinstance(a.value, int):
                raise self.error("tt.static_range bounds must be compile-time integers", at)
            vals.append(a.value)
        if not 1 <= len(vals) <= 3:
            raise self.error("tt.static_range takes 1 to 3 arguments", at)
        if len(vals) == 3 and vals[2] == 0:
            raise self.error("tt.static_range() step must not be zero", at)
        items = range(*vals)
        if len(items) > _MAX_UNROLL:
            raise self.error(f"tt.static_range would unroll {len(items)} copies (at most "
                             f"{_MAX_UNROLL}); use range()", at)
        self._unrolled(node, list(items))

    def _unrolled(self, node: ast.For, items: list) -> None:
        for n in _outside_loops(node.body):
            if isinstance(n, (ast.Break, ast.Continue)):
                raise self.error("break/continue are not supported in unrolled loops", n)
        for item in items:
            self._bind_unrolled(node.target, item, node)
            for s in node.body:
                self._stmt(s)
                if self._terminated:
                    return

    def _bind_unrolled(self, target: ast.expr, item, node) -> None:
        """Bind the target of one unrolled iteration: compile-time values and buffers are bound
        to the name in each copy (so `k` can select a vector lane); runtime values are assigned."""
        if isinstance(target, ast.Tuple):
            vals = item.value if isinstance(item, Py) else item
            if not isinstance(vals, tuple) or len(vals) != len(target.elts):
                raise self.error("the loop target does not match the items' shape", node)
            for t, v in zip(target.elts, vals):
                self._bind_unrolled(t, v, node)
        elif isinstance(target, ast.Name) and not isinstance(item, ir.Expr):
            self._scope.names[target.id] = item if isinstance(item, (Py, ir.Var)) else Py(item)
        else:
            self.assign(target, item, node)

    def _s_Break(self, node):
        self.emit(ir.Break())
        self._terminated = True

    def _s_Continue(self, node):
        self.emit(ir.Continue())
        self._terminated = True

    def _s_Return(self, node: ast.Return):
        frame = self._scope.inline
        if frame is None:
            if node.value is not None:
                raise self.error("a kernel cannot return a value; write results to a buffer", node)
            self.emit(ir.Return())
            self._terminated = True
            return
        if node.value is not None:
            self._return_value(frame, self.expr(node.value), node)
        self._terminated = True
        if frame.loop_depth > 0:
            if frame.done is None:
                frame.done = self.new_var("returned", T.bool_)
            self.emit(ir.Assign(frame.done, self.const(True, T.bool_)))
        elif frame.branch_depth == 0:
            return  # nothing after it is lowered: the value is simply the function's result
        frame.needs_exit = True
        self.emit(ir.Break())

    def _return_value(self, frame: _InlineFrame, v, node: ast.Return) -> None:
        """Assign a returned value to the function's result variable. Python numbers are weakly
        typed, as in arithmetic: the result has the type of the typed returns."""
        literal = isinstance(v, Py) and isinstance(v.value, (bool, int, float))
        e = self.to_expr(v, node=node)
        result = frame.result
        if result is None:
            result = frame.result = self.new_var("ret", e.type)
        elif frame.literal_returns and isinstance(e.type, T.ScalarType) and e.type != result.type:
            new = T.promote(result.type, e.type)  # two literals: int and float → f32
            if not literal and (e.type.is_float or not result.type.is_float):
                new = e.type  # the typed return decides
            result.type = new
            for assign, value in frame.literal_returns:
                assign.value = self._convert_const(value, new)
        elif literal and isinstance(result.type, T.ScalarType):
            e = self.to_expr(v, result.type, node)
        if isinstance(e.type, T.ScalarType):
            e = self.cast(self._assignable(e, result.type, node), result.type)
        assign = ir.Assign(result, e)
        self.emit(assign)
        if frame.literal_returns is not None:
            if literal:
                frame.literal_returns.append((assign, v.value))
            else:
                frame.literal_returns = None

    def _s_Assert(self, node: ast.Assert):
        cond = self.expr(node.test)
        if not isinstance(cond, Py):
            raise self.error("assert needs a compile-time condition (runtime asserts are not "
                             "supported in kernels)", node)
        if not cond.value:
            raise self.error("assertion failed at compile time", node)


@dataclass
class _PendingArray:
    type: T.ArrayType


_MAX_UNROLL = 4096


def _outside_loops(body: list[ast.stmt]):
    """The AST nodes of `body` that are not inside a nested loop."""
    todo = list(body)
    while todo:
        n = todo.pop()
        yield n
        if not isinstance(n, (ast.For, ast.While)):
            todo.extend(ast.iter_child_nodes(n))
        else:
            todo.extend(n.orelse)


def _assigns_name(body: list[ast.stmt], name: str) -> bool:
    """Whether statements assign to `name` (plain, augmented, annotated or as a loop target)."""
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
               for s in body for n in ast.walk(s))


def _read_outside(tree: ast.AST, loop: ast.For, name: str) -> bool:
    """Whether `name` is read anywhere in the function outside `loop`."""
    todo = [tree]
    while todo:
        n = todo.pop()
        if n is loop:
            continue
        if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load):
            return True
        todo.extend(ast.iter_child_nodes(n))
    return False


def _count_assignments(tree: ast.FunctionDef) -> dict[str, int]:
    counts: dict[str, int] = {}

    def bump(t):
        if isinstance(t, ast.Name):
            counts[t.id] = counts.get(t.id, 0) + 1
        elif isinstance(t, ast.Tuple):
            for e in t.elts:
                bump(e)

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                bump(t)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            bump(node.target)
            bump(node.target)
        elif isinstance(node, ast.For):
            bump(node.target)
            bump(node.target)
    return counts
