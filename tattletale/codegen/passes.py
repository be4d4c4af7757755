"""IR passes that every target shares: constant folding and dead-code removal.

Type inference and specialization happen in the front end (every IR node is born typed and
compile-time values are already Python values there); what remains foldable here comes from
inlining and unrolling. Target-specific legalization lives with each target's printer.
"""

from __future__ import annotations

import math

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
