"""Errors that point at the kernel's Python source with a caret."""

from __future__ import annotations


class CompileError(Exception):
    """A construct the DSL does not support, or a type error, located in the kernel's source.

    Printed as::

        kernels.py:12:8: error: cannot assign f32 to 'n' of type i32; cast explicitly
            n = x[i]
                ^
    """

    def __init__(self, message: str, file: str = "<kernel>", line: int = 0, col: int = 0,
                 source_line: str = ""):
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.source_line = source_line
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"{self.file}:{self.line}:{self.col + 1}: error: {self.message}"
        if not self.source_line:
            return head
        stripped = self.source_line.rstrip()
        return f"{head}\n    {stripped}\n    {' ' * self.col}^"


class BackendCompileError(Exception):
    """A backend compiler (NVRTC, an OpenCL driver, …) rejected generated code.

    The message holds the compiler's log with each generated line it mentions followed by the
    Python line that produced it.
    """
