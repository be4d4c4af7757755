"""What every text-emitting printer shares (C-family and WGSL): indented lines annotated with the
Python line they came from, the generated-line → Python map, and the structured statements whose
syntax is the same in C and WGSL (if/else, for, while, break, continue, return)."""

from __future__ import annotations

from . import ir


class TextPrinter:
    """Subclasses provide `expr`, `name`, `simple_stmt` (assignments, stores, barriers, expression
    statements) and `for_test` (a loop condition for a runtime step sign)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line_map: dict[int, ir.Loc] = {}
        self._last_loc: tuple | None = None

    def line(self, text: str, depth: int) -> None:
        self.lines.append("    " * depth + text)

    def annotate(self, s: ir.Stmt, depth: int) -> None:
        loc = s.loc
        if loc is None or (loc.file, loc.line) == self._last_loc:
            return
        self._last_loc = (loc.file, loc.line)
        # A trailing backslash would splice the next generated line into the comment.
        text = loc.text.strip().rstrip("\\").rstrip()
        self.line(f"// {loc.file.rsplit('/', 1)[-1]}:{loc.line}: {text}", depth)
        self.line_map[len(self.lines) + 1] = loc

    def block(self, body: list[ir.Stmt], depth: int) -> None:
        for s in body:
            self.stmt(s, depth)

    def stmt(self, s: ir.Stmt, depth: int) -> None:
        self.annotate(s, depth)
        if isinstance(s, ir.If):
            self.line(f"if ({self.cond(s.cond)}) {{", depth)
            self.block(s.then, depth + 1)
            if s.orelse:
                self.line("} else {", depth)
                self.block(s.orelse, depth + 1)
            self.line("}", depth)
        elif isinstance(s, ir.For):
            v, stop, step = self.name(s.var), self.expr(s.stop), self.expr(s.step)
            if isinstance(s.step, ir.Const):
                test = f"{v} {'<' if s.step.value > 0 else '>'} {stop}"
            else:
                test = self.for_test(s, v, stop, step)
            self.line(f"for ({v} = {self.expr(s.start)}; {test}; {v} += {step}) {{", depth)
            self.block(s.body, depth + 1)
            self.line("}", depth)
        elif isinstance(s, ir.While):
            self.line(f"while ({self.cond(s.cond)}) {{", depth)
            self.block(s.body, depth + 1)
            self.line("}", depth)
        elif isinstance(s, ir.Break):
            self.line("break;", depth)
        elif isinstance(s, ir.Continue):
            self.line("continue;", depth)
        elif isinstance(s, ir.Return):
            self.line("return;", depth)
        else:
            self.simple_stmt(s, depth)

    def cond(self, e: ir.Expr) -> str:
        """A condition without its outermost parentheses (the statement supplies them)."""
        text = self.expr(e)
        if text.startswith("(") and text.endswith(")") and balanced(text[1:-1]):
            return text[1:-1]
        return text

    # hooks
    def expr(self, e: ir.Expr) -> str:
        raise NotImplementedError

    def name(self, v: ir.Var) -> str:
        raise NotImplementedError

    def simple_stmt(self, s: ir.Stmt, depth: int) -> None:
        raise NotImplementedError

    def for_test(self, s: ir.For, v: str, stop: str, step: str) -> str:
        raise NotImplementedError


def balanced(s: str) -> bool:
    """True when the parentheses of s pair up (so "(a) + (b)" is not one parenthesized group)."""
    depth = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0
