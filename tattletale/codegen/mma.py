"""Matrix multiply-accumulate on 16×16×16 tiles: accumulator layouts and the portable lowering.

A fragment is a 16×16 tile held by the S lanes of a subgroup together. Operand fragments (A, B)
are opaque, so each target holds them as its matrix instructions want; the accumulator's per-lane
share is the one layout kernels see (`tt.mma_coord`, `len(acc)`), and it depends only on S:

* S = 32 is the layout of PTX's `mma.m16n8k16` accumulators, two of them side by side: lane
  l = 4g + t holds rows g, g + 8 and columns 2t, 2t + 1, 2t + 8, 2t + 9. CUDA keeps fragments in
  the registers `ldmatrix`/`mma.sync` use; other targets with 32-lane subgroups use the layout
  with the portable lowering below.
* Other S (1 on CPU OpenCL, 8 on lavapipe, 64, …): the lanes form an SR × SC grid (SC ≥ SR, both
  powers of two) and lane l holds rows l // SC + SR·i and columns l % SC + SC·j.

Element e of a lane's share is (row offset e // len(cols), column offset e % len(cols)).

A warpgroup accumulator (`tt.wgmma`, 64 × n, held by the four subgroups 4w … 4w+3 together) is,
for subgroup q of the warpgroup, the n / 16 accumulators of rows 16q … 16q+15 side by side:
element e is element e % C of the 16 × 16 tile at column 16 · (e // C), C = len of one tile.

Targets without matrix instructions get `lower`: fragment variables become private f32 arrays;
an operand fragment holds the whole rows of A (and columns of B) that the lane's accumulator
elements need, read straight from shared memory, so the product needs no cross-lane traffic and
is correct for any S; `tt.wgmma` is the same loop over each lane's elements of its warpgroup
accumulator, reading the swizzled tiles through their layout; asynchronous copies become
ordinary copies and the asynchronous products ordinary ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..dsl import types as T
from . import ir

TILE = 16  # M = N = K of one fragment product


@dataclass(frozen=True)
class Offsets:
    """count offsets, the i-th being (i // period) * big + (i % period) * small."""

    count: int
    period: int
    big: int
    small: int = 0

    def __getitem__(self, i: int) -> int:
        return (i // self.period) * self.big + (i % self.period) * self.small

    def values(self) -> tuple[int, ...]:
        return tuple(self[i] for i in range(self.count))


@dataclass(frozen=True)
class AccLayout:
    """Which elements of a 16×16 accumulator lane l holds: rows l // row_div + rows[i], columns
    (l % col_mod) * col_mul + cols[j]; element e = i * cols.count + j."""

    lanes: int
    row_div: int
    col_mod: int
    col_mul: int
    rows: Offsets
    cols: Offsets

    @property
    def count(self) -> int:
        return self.rows.count * self.cols.count

    def coord(self, lane: int, e: int) -> tuple[int, int]:
        """(row, column) of element e of lane `lane`, on the host."""
        i, j = divmod(e, self.cols.count)
        return (lane // self.row_div + self.rows[i],
                lane % self.col_mod * self.col_mul + self.cols[j])


def layout(subgroup_size: int) -> AccLayout:
    """The accumulator layout for subgroups of `subgroup_size` lanes (a power of two ≤ 256)."""
    s = subgroup_size
    if s & (s - 1) or not 1 <= s <= TILE * TILE:
        raise ValueError(f"no mma layout for subgroups of {s} lanes (a power of two up to 256)")
    if s == 32:
        return AccLayout(32, 4, 4, 2, Offsets(2, 1, 8), Offsets(4, 2, 8, 1))
    sc = 1 << ((s.bit_length()) // 2)  # SC ≥ SR, SC · SR = S
    sr = s // sc
    return AccLayout(s, sc, sc, 1, Offsets(TILE // sr, 1, sr), Offsets(TILE // sc, 1, sc))


def fragment_size(t: T.FragmentType, lay: AccLayout) -> int:
    """f32 elements per lane of a fragment in the portable lowering."""
    if t.use == "acc":
        return lay.count
    if t.use == "wgacc":
        return lay.count * (t.n // TILE)
    return (lay.rows.count if t.use == "a" else lay.cols.count) * TILE


# --- the portable lowering ------------------------------------------------------------------------


def lower(kernel: ir.Kernel, subgroup_size: int) -> ir.Kernel:
    """A copy of `kernel` with fragments as private arrays and mma as loops of f32 arithmetic
    (the shared IR is cached and shared by every target, so it is not modified)."""
    return _Lowering(kernel, layout(subgroup_size)).run()


def _at(node, loc):
    node.loc = loc
    return node


class _Lowering:
    def __init__(self, kernel: ir.Kernel, lay: AccLayout):
        self.k = kernel
        self.lay = lay
        self.taken = {v.name for v in kernel.params + kernel.locals}
        self.arrays: dict[int, tuple[ir.Var, int]] = {}  # fragment var → (f32 array, fragment size)
        self.locals: list[ir.Var] = []
        for v in kernel.locals:
            t = v.type
            frag = t if isinstance(t, T.FragmentType) else getattr(t, "elem", None)
            if isinstance(frag, T.FragmentType):
                n = fragment_size(frag, lay)
                count = t.size if isinstance(t, T.ArrayType) else 1
                arr = ir.Var(v.name, T.ArrayType(T.f32, (count * n,), "private"), "private")
                self.arrays[id(v)] = (arr, n)
                self.locals.append(arr)
            else:
                self.locals.append(v)
        self.lane: ir.Var | None = None
        self.subgroups = False  # subgroup ids used (tt.wgmma)

    def run(self) -> ir.Kernel:
        body = self.body(self.k.body)
        if self.lane is not None:
            lane = ir.Call("subgroup_local_id", [], T.i32)
            body.insert(0, ir.Assign(self.lane, lane))
        features = self.k.features - {"mma", "async_copy", "wgmma"}
        if self.lane is not None or self.subgroups:
            features |= {"subgroup"}
        return replace(self.k, locals=self.locals, body=body, features=features)

    # --- helpers ----------------------------------------------------------------------------------

    def temp(self, base: str, t: T.Type) -> ir.Var:
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        var = ir.Var(name, t, "private" if isinstance(t, T.ArrayType) else "local")
        self.locals.append(var)
        return var

    def lane_id(self) -> ir.Expr:
        if self.lay.lanes == 1:
            return ir.Const(0, T.i32)
        if self.lane is None:
            self.lane = self.temp("mma_lane", T.i32)
        return ir.Ref(self.lane)

    @staticmethod
    def c(v: int) -> ir.Const:
        return ir.Const(v, T.i32)

    def bin(self, op: str, a: ir.Expr, b: ir.Expr) -> ir.Expr:
        """a op b in i32, folding constants (index arithmetic stays readable)."""
        if isinstance(a, ir.Const) and isinstance(b, ir.Const):
            x, y = a.value, b.value  # non-negative: Python's // and % agree with C's
            return self.c({"+": x + y, "*": x * y, "&": x & y, "^": x ^ y, ">>": x >> y}[op]
                          if op not in "/%" else x // y if op == "/" else x % y)
        if op == "*" and isinstance(b, ir.Const) and b.value == 1 or \
                op == "+" and isinstance(b, ir.Const) and b.value == 0:
            return a
        if op == "+" and isinstance(a, ir.Const) and a.value == 0:
            return b
        if op == "*" and isinstance(b, ir.Const) and b.value == 0:
            return self.c(0)
        a = a if a.type == T.i32 else ir.Cast(T.i32, a)
        b = b if b.type == T.i32 else ir.Cast(T.i32, b)
        return ir.Binary(op, a, b, T.i32)

    def offset(self, offs: Offsets, i: ir.Expr) -> ir.Expr:
        if offs.period == 1:
            return self.bin("*", i, self.c(offs.big))
        return self.bin("+", self.bin("*", self.bin("/", i, self.c(offs.period)), self.c(offs.big)),
                        self.bin("*", self.bin("%", i, self.c(offs.period)), self.c(offs.small)))

    def loop(self, name: str, count: int, body) -> ir.For:
        """for v in range(count): body(Ref(v)) — a runtime loop (fragments are long on CPUs)."""
        v = self.temp(name, T.i32)
        return ir.For(v, self.c(0), self.c(count), self.c(1), body(ir.Ref(v)))

    def place(self, e: ir.Expr) -> tuple[ir.Var, ir.Expr]:
        """The f32 array and first element holding fragment value `e` (a Ref, or a Load from an
        array of fragments, whose index may be evaluated more than once)."""
        if isinstance(e, ir.Ref):
            return self.arrays[id(e.var)][0], self.c(0)
        arr, n = self.arrays[id(e.var)]
        return arr, self.bin("*", self.expr(e.index), self.c(n))

    # --- statements ---------------------------------------------------------------------------

    def body(self, stmts: list[ir.Stmt]) -> list[ir.Stmt]:
        out: list[ir.Stmt] = []
        for s in stmts:
            for new in self.stmt(s):
                out.append(new if new.loc is not None else _at(new, s.loc))
        return out

    def stmt(self, s: ir.Stmt) -> list[ir.Stmt]:
        if isinstance(s, ir.Assign) and isinstance(s.var.type, T.FragmentType):
            return self.define(self.arrays[id(s.var)][0], self.c(0), s.value)
        if isinstance(s, ir.Store) and s.var.kind == "private" and id(s.var) in self.arrays:
            arr, base = self.place(ir.Load(s.var, s.index))
            return self.define(arr, base, s.value)
        if isinstance(s, ir.ExprStmt) and isinstance(s.expr.type, T.FragmentType):
            return []  # a fragment computed and dropped: nothing observable
        if isinstance(s, ir.AsyncCopy):
            return self.copy(s)
        if isinstance(s, (ir.AsyncCommit, ir.AsyncWait, ir.WgmmaCommit, ir.WgmmaWait)):
            return []  # copies and products are synchronous here
        if isinstance(s, ir.Wgmma):
            return self.wgmma(s)
        if isinstance(s, ir.Assign):
            return [ir.Assign(s.var, self.expr(s.value))]
        if isinstance(s, (ir.Store, ir.VecStore)):
            return [type(s)(s.var, self.expr(s.index), self.expr(s.value))]
        if isinstance(s, ir.ExprStmt):
            return [ir.ExprStmt(self.expr(s.expr))]
        if isinstance(s, ir.If):
            return [ir.If(self.expr(s.cond), self.body(s.then), self.body(s.orelse))]
        if isinstance(s, ir.For):
            return [ir.For(s.var, self.expr(s.start), self.expr(s.stop), self.expr(s.step),
                           self.body(s.body))]
        if isinstance(s, ir.While):
            return [ir.While(self.expr(s.cond), self.body(s.body))]
        return [s]

    def define(self, arr: ir.Var, base: ir.Expr, value: ir.Expr) -> list[ir.Stmt]:
        """Statements writing fragment `value` into arr[base …]."""
        if isinstance(value, ir.MmaZero):
            zero = ir.Const(0.0, T.f32)
            return [self.loop("mma_e", fragment_size(value.type, self.lay),
                              lambda e: [ir.Store(arr, self.bin("+", base, e), zero)])]
        if isinstance(value, ir.MmaLoad):
            return self.load(arr, base, value)
        if isinstance(value, ir.Mma):
            return self.product(arr, base, value)
        src, sbase = self.place(value)  # a copy of another fragment
        n = fragment_size(value.type, self.lay)
        return [self.loop("mma_e", n, lambda e: [ir.Store(
            arr, self.bin("+", base, e), ir.Load(src, self.bin("+", sbase, e)))])]

    def load(self, arr: ir.Var, base: ir.Expr, e: ir.MmaLoad) -> list[ir.Stmt]:
        """Each lane reads the rows of A (columns of B) its accumulator elements need."""
        lay, s, cols = self.lay, e.var, e.var.type.shape[1]
        pre: list[ir.Stmt] = []
        corner = []
        for name, v in (("row", self.expr(e.row)), ("col", self.expr(e.col))):
            if not isinstance(v, (ir.Const, ir.Ref)):  # evaluated once, not in the loops
                tmp = self.temp(f"mma_{name}", v.type)
                pre.append(ir.Assign(tmp, v))
                v = ir.Ref(tmp)
            corner.append(v)
        row, col = corner
        lane = self.lane_id()
        if e.use == "a":
            offs, first = lay.rows, self.bin("/", lane, self.c(lay.row_div))
        else:
            offs = lay.cols
            first = self.bin("*", self.bin("%", lane, self.c(lay.col_mod)), self.c(lay.col_mul))

        def element(i: ir.Expr, k: ir.Expr) -> ir.Expr:
            own = self.bin("+", first, self.offset(offs, i))  # the lane's row of A / column of B
            r, c = (own, k) if e.use == "a" or e.trans else (k, own)
            index = self.bin("+", self.bin("*", self.bin("+", row, r), self.c(cols)),
                             self.bin("+", col, c))
            return ir.Cast(T.f32, ir.Load(s, index))

        return pre + [self.loop("mma_i", offs.count, lambda i: [self.loop("mma_k", TILE, lambda k: [
            ir.Store(arr, self.bin("+", base, self.bin("+", self.bin("*", i, self.c(TILE)), k)),
                     element(i, k))])])]

    def product(self, arr: ir.Var, base: ir.Expr, e: ir.Mma) -> list[ir.Stmt]:
        """arr[base + i·nc + j] = c[i·nc + j] + Σ_k a[i·16 + k] · b[j·16 + k]."""
        nc = self.lay.cols.count
        (a, ab), (b, bb), (c, cb) = (self.place(x) for x in (e.a, e.b, e.c))
        acc = self.temp("mma_sum", T.f32)

        def cell(i: ir.Expr, j: ir.Expr) -> list[ir.Stmt]:
            ij = self.bin("+", self.bin("*", i, self.c(nc)), j)

            def step(k: ir.Expr) -> list[ir.Stmt]:
                x = ir.Load(a, self.bin("+", ab, self.bin("+", self.bin("*", i, self.c(TILE)), k)))
                y = ir.Load(b, self.bin("+", bb, self.bin("+", self.bin("*", j, self.c(TILE)), k)))
                return [ir.Assign(acc, ir.Binary("+", ir.Ref(acc), ir.Binary("*", x, y, T.f32), T.f32))]

            return [ir.Assign(acc, ir.Load(c, self.bin("+", cb, ij))),
                    self.loop("mma_k", TILE, step),
                    ir.Store(arr, self.bin("+", base, ij), ir.Ref(acc))]

        return [self.loop("mma_i", self.lay.rows.count, lambda i: [
            self.loop("mma_j", nc, lambda j: cell(i, j))])]

    def element(self, s: ir.Var, row: ir.Expr, col: ir.Expr) -> ir.Expr:
        """s[row, col] as f32, through the swizzle of a swizzled array (types.swizzle_terms)."""
        if s.type.swizzle:
            shift, mask, chunk = T.swizzle_terms(s.type)
            sel = self.bin("&", self.bin(">>", row, self.c(shift)), self.c(mask))
            col = self.bin("^", col, self.bin("*", sel, self.c(chunk)))
        index = self.bin("+", self.bin("*", row, self.c(s.type.shape[1])), col)
        return ir.Cast(T.f32, ir.Load(s, index))

    def wgmma(self, s: ir.Wgmma) -> list[ir.Stmt]:
        """Each lane's accumulator elements += their rows of A times their columns of B: element
        e = j · C + f of subgroup q of the warpgroup is (16q + row(f), 16j + column(f))."""
        lay = self.lay
        arr, base = self.place(s.acc)
        pre: list[ir.Stmt] = []
        corner = []
        for name, v in (("ar", s.a_row), ("ac", s.a_col), ("br", s.b_row), ("bc", s.b_col)):
            v = self.expr(v)
            if not isinstance(v, (ir.Const, ir.Ref)):  # evaluated once, not in the loops
                tmp = self.temp(f"wgmma_{name}", T.i32)
                pre.append(ir.Assign(tmp, v))
                v = ir.Ref(tmp)
            corner.append(v)
        ar, ac, br, bc = corner
        accumulate = self.expr(s.accumulate)
        quarter = self.temp("wgmma_q", T.i32)
        pre.append(ir.Assign(quarter, self.bin("%", ir.Call("subgroup_id", [], T.i32), self.c(4))))
        self.subgroups = True
        lane = self.lane_id()
        acc = self.temp("mma_sum", T.f32)
        nc = lay.cols.count

        def cell(j: ir.Expr, f: ir.Expr) -> list[ir.Stmt]:
            row = self.bin("+", self.bin("+", self.bin("*", ir.Ref(quarter), self.c(TILE)),
                                         self.bin("/", lane, self.c(lay.row_div))),
                           self.offset(lay.rows, self.bin("/", f, self.c(nc))))
            col = self.bin("+", self.bin("+", self.bin("*", j, self.c(TILE)), self.bin(
                "*", self.bin("%", lane, self.c(lay.col_mod)), self.c(lay.col_mul))),
                self.offset(lay.cols, self.bin("%", f, self.c(nc))))
            at = self.bin("+", base, self.bin("+", self.bin("*", j, self.c(lay.count)), f))
            r = self.temp("wgmma_r", T.i32)
            c = self.temp("wgmma_c", T.i32)

            def step(k: ir.Expr) -> list[ir.Stmt]:
                x = self.element(s.a, self.bin("+", ar, ir.Ref(r)), self.bin("+", ac, k))
                y = self.element(s.b, self.bin("+", br, ir.Ref(c)), self.bin("+", bc, k))
                return [ir.Assign(acc, ir.Binary("+", ir.Ref(acc), ir.Binary("*", x, y, T.f32), T.f32))]

            start = ir.Load(arr, at)
            if not (isinstance(accumulate, ir.Const) and accumulate.value):
                start = ir.Select(accumulate, start, ir.Const(0.0, T.f32))
            return [ir.Assign(r, row), ir.Assign(c, col), ir.Assign(acc, start),
                    self.loop("mma_k", TILE, step), ir.Store(arr, at, ir.Ref(acc))]

        return pre + [self.loop("mma_j", s.acc.type.n // TILE, lambda j: [
            self.loop("mma_f", lay.count, lambda f: cell(j, f))])]

    def copy(self, s: ir.AsyncCopy) -> list[ir.Stmt]:
        """A synchronous copy (zeros where the predicate is false)."""
        elem = s.dst.type.elem
        di, si, pred = self.expr(s.dst_index), self.expr(s.src_index), self.expr(s.pred)
        copies = [self.loop("copy_i", s.count, lambda i: [ir.Store(
            s.dst, self.bin("+", di, i), ir.Load(s.src, self.bin("+", si, i)))])]
        zero = ir.Const(0.0 if elem.is_float else 0, elem)
        zeros = [self.loop("copy_i", s.count, lambda i: [ir.Store(s.dst, self.bin("+", di, i), zero)])]
        if isinstance(pred, ir.Const):
            return copies if pred.value else zeros
        return [ir.If(pred, copies, zeros)]

    # --- expressions --------------------------------------------------------------------------

    def expr(self, e: ir.Expr) -> ir.Expr:
        """`e` with accumulator element reads as loads of the fragment's array."""
        if not any(isinstance(n, ir.FragElem) for n in ir.walk(e)):
            return e
        if isinstance(e, ir.FragElem):
            arr, base = self.place(e.frag)
            return _at(ir.Load(arr, self.bin("+", base, self.expr(e.index))), e.loc)
        from .passes import _with_children

        return _with_children(e, [self.expr(x) for x in ir.children(e)])
