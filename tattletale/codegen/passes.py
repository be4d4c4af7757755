"""IR passes that every target shares: constant folding and dead-code removal.

Type inference and specialization happen in the front end (every IR node is born typed and
compile-time values are already Python values there); what remains foldable here comes from
inlining and unrolling. Target-specific legalization lives with each target's printer.
"""

from __future__ import annotations

import math
from copy import copy
from dataclasses import replace

from ..dsl import types as T
from . import ir


def optimize(kernel: ir.Kernel) -> ir.Kernel:
    kernel.body = _fold_body(kernel.body)
    return kernel


def _wrap(value: int, t: T.ScalarType) -> int:
    mask = (1 << t.bits) - 1
    value &= mask
    if t.is_signed and value >> (t.bits - 1):
        value -= 1 << t.bits
    return value


def _c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_INT_OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
}
_CMP_OPS = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def _fold_binary(e: ir.Binary) -> ir.Expr:
    a, b = e.lhs, e.rhs
    if not (isinstance(a, ir.Const) and isinstance(b, ir.Const)):
        if e.op == "and" and isinstance(a, ir.Const):
            return b if a.value else a
        if e.op == "or" and isinstance(a, ir.Const):
            return a if a.value else b
        return e
    x, y, t = a.value, b.value, e.type
    if e.op in _CMP_OPS:
        return _const(_CMP_OPS[e.op](x, y), T.bool_, e)
    if e.op in ("and", "or"):
        return _const((x and y) if e.op == "and" else (x or y), T.bool_, e)
    if t.is_float:
        if t.bits != 32 and t.bits != 64:
            return e
        if e.op in "+-*":
            return _const(_INT_OPS[e.op](x, y), t, e) if t.bits == 64 else e
        return e  # f32 rounding of host arithmetic would differ: leave to the device
    if e.op in _INT_OPS:
        return _const(_wrap(_INT_OPS[e.op](x, y), t), t, e)
    if e.op in ("/", "%") and y != 0:
        q = _c_div(x, y)
        return _const(_wrap(q if e.op == "/" else x - q * y, t), t, e)
    if e.op == "<<" and 0 <= y < t.bits:
        return _const(_wrap(x << y, t), t, e)
    if e.op == ">>" and 0 <= y < t.bits:
        return _const(x >> y, t, e)
    return e


def _const(value, t: T.ScalarType, like: ir.Expr) -> ir.Const:
    c = ir.Const(value, t)
    c.loc = like.loc
    return c


def _fold_expr(e: ir.Expr) -> ir.Expr:
    if isinstance(e, ir.Binary):
        e.lhs, e.rhs = _fold_expr(e.lhs), _fold_expr(e.rhs)
        return _fold_binary(e)
    if isinstance(e, ir.Unary):
        e.operand = _fold_expr(e.operand)
        c = e.operand
        if isinstance(c, ir.Const):
            if e.op == "not":
                return _const(not c.value, T.bool_, e)
            if e.op == "-" and c.type.is_int:
                return _const(_wrap(-c.value, c.type), c.type, e)
            if e.op == "-" and c.type.is_float:
                return _const(-c.value, c.type, e)
            if e.op == "~":
                return _const(_wrap(~c.value, c.type), c.type, e)
        return e
    if isinstance(e, ir.Cast):
        e.operand = _fold_expr(e.operand)
        c = e.operand
        if isinstance(c, ir.Const) and _plain(e.to) and _plain(c.type):
            if e.to.is_int and c.type.is_int:
                return _const(_wrap(c.value, e.to), e.to, e)
            if e.to.is_float and e.to.bits == 64:
                return _const(float(c.value), e.to, e)
            if e.to.is_float and c.type.is_int and abs(c.value) < (1 << 24):
                return _const(float(c.value), e.to, e)
            if e.to.is_int and c.type.is_float and math.isfinite(c.value):
                return _const(_wrap(int(c.value), e.to), e.to, e)
        return e
    if isinstance(e, ir.Select):
        e.cond = _fold_expr(e.cond)
        e.if_true, e.if_false = _fold_expr(e.if_true), _fold_expr(e.if_false)
        if isinstance(e.cond, ir.Const):
            return e.if_true if e.cond.value else e.if_false
        return e
    if isinstance(e, (ir.Load, ir.VecLoad)):
        e.index = _fold_expr(e.index)
    elif isinstance(e, ir.Lane):
        e.vec = _fold_expr(e.vec)
    elif isinstance(e, ir.MakeVec):
        e.elems = [_fold_expr(x) for x in e.elems]
    elif isinstance(e, ir.Call):
        e.args = [_fold_expr(x) for x in e.args]
    elif isinstance(e, ir.Atomic):
        e.index = _fold_expr(e.index)
        e.args = [_fold_expr(x) for x in e.args]
    elif isinstance(e, ir.MmaLoad):
        e.row, e.col = _fold_expr(e.row), _fold_expr(e.col)
    elif isinstance(e, ir.Mma):
        e.a, e.b, e.c = _fold_expr(e.a), _fold_expr(e.b), _fold_expr(e.c)
    elif isinstance(e, ir.FragElem):
        e.frag, e.index = _fold_expr(e.frag), _fold_expr(e.index)
    return e


def _plain(t: T.ScalarType) -> bool:
    """Types whose constant conversions fold exactly on the host."""
    return not t.is_bool and not (t.is_float and t.bits == 16)


def _fold_body(body: list[ir.Stmt]) -> list[ir.Stmt]:
    out: list[ir.Stmt] = []
    for s in body:
        if isinstance(s, ir.Assign):
            s.value = _fold_expr(s.value)
        elif isinstance(s, (ir.Store, ir.VecStore)):
            s.index, s.value = _fold_expr(s.index), _fold_expr(s.value)
        elif isinstance(s, ir.ExprStmt):
            s.expr = _fold_expr(s.expr)
        elif isinstance(s, ir.AsyncCopy):
            s.dst_index, s.src_index = _fold_expr(s.dst_index), _fold_expr(s.src_index)
            s.pred = _fold_expr(s.pred)
        elif isinstance(s, ir.Wgmma):
            s.acc = _fold_expr(s.acc)
            s.a_row, s.a_col = _fold_expr(s.a_row), _fold_expr(s.a_col)
            s.b_row, s.b_col = _fold_expr(s.b_row), _fold_expr(s.b_col)
            s.accumulate = _fold_expr(s.accumulate)
        elif isinstance(s, ir.If):
            s.cond = _fold_expr(s.cond)
            s.then, s.orelse = _fold_body(s.then), _fold_body(s.orelse)
            if isinstance(s.cond, ir.Const):
                out.extend(s.then if s.cond.value else s.orelse)
                if _terminates(out):
                    break
                continue
        elif isinstance(s, ir.For):
            s.start, s.stop, s.step = (_fold_expr(x) for x in (s.start, s.stop, s.step))
            s.body = _fold_body(s.body)
        elif isinstance(s, ir.While):
            s.cond = _fold_expr(s.cond)
            s.body = _fold_body(s.body)
            if isinstance(s.cond, ir.Const) and not s.cond.value:
                continue
        out.append(s)
        if isinstance(s, (ir.Return, ir.Break, ir.Continue)):
            break  # the rest of the block is unreachable
    return out


def _terminates(body: list[ir.Stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ir.Return, ir.Break, ir.Continue))


# --- lowering of lazy operators (for targets whose select is eager) -----------------------------


def lower_lazy(kernel: ir.Kernel, must_defer=lambda e: not ir.is_pure(e)) -> ir.Kernel:
    """A copy of `kernel` where lazy selects and `and`/`or` whose deferred operand must not run
    unconditionally become `If` statements that assign a temporary.

    For targets whose `select` is eager and whose `&&`/`||` may not short-circuit (WGSL through
    naga, SPIR-V's OpSelect/OpLogicalAnd). `must_defer(e)` says whether an operand has to stay
    conditional (default: it loads or has side effects). Impure operands evaluated before a
    lowered one are moved into temporaries too, so side effects keep their order. The kernel is
    not modified: its IR is cached and shared by every target.
    """
    lowering = _LazyLowering(kernel, must_defer)
    body = lowering.body(kernel.body)
    if not lowering.temps:
        return kernel
    return replace(kernel, locals=kernel.locals + lowering.temps, body=body)


class _LazyLowering:
    def __init__(self, kernel: ir.Kernel, must_defer):
        self.must_defer = must_defer
        self.temps: list[ir.Var] = []
        self.taken = {v.name for v in kernel.params + kernel.locals}

    def lazy(self, e: ir.Expr) -> bool:
        """Whether `e` holds a lazy operator that must become control flow."""
        for n in ir.walk(e):
            if isinstance(n, ir.Select) and n.lazy and (
                    self.must_defer(n.if_true) or self.must_defer(n.if_false)):
                return True
            if isinstance(n, ir.Binary) and n.op in ("and", "or") and self.must_defer(n.rhs):
                return True
        return False

    def temp(self, base: str, t, loc) -> ir.Var:
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        var = ir.Var(name, t, "local")
        self.temps.append(var)
        return var

    def assign(self, var: ir.Var, value: ir.Expr, loc) -> ir.Assign:
        s = ir.Assign(var, value)
        s.loc = loc
        return s

    def ref(self, var: ir.Var, loc) -> ir.Ref:
        r = ir.Ref(var)
        r.loc = loc
        return r

    def expr(self, e: ir.Expr, pre: list[ir.Stmt]) -> ir.Expr:
        """`e` with its lazy operators lowered into statements appended to `pre`."""
        if not self.lazy(e):
            return e
        loc = e.loc
        if isinstance(e, ir.Select) and e.lazy and (
                self.must_defer(e.if_true) or self.must_defer(e.if_false)):
            cond = self.expr(e.cond, pre)
            var = self.temp("sel", e.type, loc)
            arms = []
            for arm in (e.if_true, e.if_false):
                stmts: list[ir.Stmt] = []
                stmts.append(self.assign(var, self.expr(arm, stmts), loc))
                arms.append(stmts)
            pre.append(_at(ir.If(cond, arms[0], arms[1]), loc))
            return self.ref(var, loc)
        if isinstance(e, ir.Binary) and e.op in ("and", "or") and self.must_defer(e.rhs):
            var = self.temp("cond", T.bool_, loc)
            pre.append(self.assign(var, self.expr(e.lhs, pre), loc))
            stmts: list[ir.Stmt] = []
            stmts.append(self.assign(var, self.expr(e.rhs, stmts), loc))
            test = self.ref(var, loc)
            if e.op == "or":
                test = _at(ir.Unary("not", test), loc)
            pre.append(_at(ir.If(test, stmts, []), loc))
            return self.ref(var, loc)
        return _with_children(e, self.operands(ir.children(e), pre, loc))

    def operands(self, kids: list[ir.Expr], pre: list[ir.Stmt], loc) -> list[ir.Expr]:
        """Lower sibling operands in evaluation order, moving impure ones that run before a
        lowered sibling into temporaries."""
        lazy = [self.lazy(k) for k in kids]
        last = max((i for i, f in enumerate(lazy) if f), default=-1)
        out = []
        for i, k in enumerate(kids):
            if lazy[i]:
                out.append(self.expr(k, pre))
            elif i < last and not ir.is_pure(k):
                var = self.temp("tmp", k.type, loc)
                pre.append(self.assign(var, k, loc))
                out.append(self.ref(var, loc))
            else:
                out.append(k)
        return out

    def body(self, stmts: list[ir.Stmt]) -> list[ir.Stmt]:
        out: list[ir.Stmt] = []
        for s in stmts:
            self.stmt(s, out)
        return out

    def stmt(self, s: ir.Stmt, out: list[ir.Stmt]) -> None:
        pre: list[ir.Stmt] = []
        loc = s.loc
        if isinstance(s, ir.Assign):
            s = _at(ir.Assign(s.var, self.expr(s.value, pre)), loc) if self.lazy(s.value) else s
        elif isinstance(s, (ir.Store, ir.VecStore)):
            if self.lazy(s.index) or self.lazy(s.value):
                index, value = self.operands([s.index, s.value], pre, loc)
                s = _at(type(s)(s.var, index, value), loc)
        elif isinstance(s, ir.ExprStmt):
            if self.lazy(s.expr):
                e = self.expr(s.expr, pre)
                s = None if ir.is_pure(e) else _at(ir.ExprStmt(e), loc)
        elif isinstance(s, ir.If):
            s = _at(ir.If(self.expr(s.cond, pre), self.body(s.then), self.body(s.orelse)), loc)
        elif isinstance(s, ir.For):
            start, stop, step = self.operands([s.start, s.stop, s.step], pre, loc)
            s = _at(ir.For(s.var, start, stop, step, self.body(s.body)), loc)
        elif isinstance(s, ir.While):
            body = self.body(s.body)
            if self.lazy(s.cond):  # re-evaluated each iteration: test at the top of the body
                test: list[ir.Stmt] = []
                cond = self.expr(s.cond, test)
                exit_ = _at(ir.If(_at(ir.Unary("not", cond), loc), [_at(ir.Break(), loc)], []), loc)
                true = _at(ir.Const(True, T.bool_), loc)
                s = _at(ir.While(true, test + [exit_] + body), loc)
            else:
                s = _at(ir.While(s.cond, body), loc)
        out.extend(pre)
        if s is not None:
            out.append(s)


def _at(node, loc):
    node.loc = loc
    return node


def _with_children(e: ir.Expr, kids: list[ir.Expr]) -> ir.Expr:
    """A shallow copy of `e` with its operands replaced (in `ir.children` order)."""
    if all(a is b for a, b in zip(kids, ir.children(e))):
        return e
    e = copy(e)
    if isinstance(e, ir.Binary):
        e.lhs, e.rhs = kids
    elif isinstance(e, (ir.Unary, ir.Cast, ir.Bitcast)):
        (e.operand,) = kids
    elif isinstance(e, ir.Select):
        e.cond, e.if_true, e.if_false = kids
    elif isinstance(e, (ir.Load, ir.VecLoad)):
        (e.index,) = kids
    elif isinstance(e, ir.Lane):
        (e.vec,) = kids
    elif isinstance(e, ir.MakeVec):
        e.elems = list(kids)
    elif isinstance(e, ir.Call):
        e.args = list(kids)
    elif isinstance(e, ir.Atomic):
        e.index, *rest = kids
        e.args = rest
    elif isinstance(e, ir.MmaLoad):
        e.row, e.col = kids
    elif isinstance(e, ir.Mma):
        e.a, e.b, e.c = kids
    elif isinstance(e, ir.FragElem):
        e.frag, e.index = kids
    return e
