"""`@tt.kernel` and `@tt.func`: parsing, specialization and the launch syntax `k[grid, block](...)`.

A kernel is specialized on its compile-time parameters (`tt.constexpr`) and on the element types
of its generic `tt.Buffer` parameters, both known at launch. Each specialization is lowered to IR
once per process and compiled once per device (and cached on disk by the runtime).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codegen import ir
from ..codegen.passes import optimize
from ..runtimes import device_of_args
from . import types as T
from .errors import CompileError
from .frontend import FunctionSource, KernelBuilder, Py, SourceInfo


def _parse(fn) -> FunctionSource:
    try:
        lines, first = inspect.getsourcelines(fn)
        file = inspect.getsourcefile(fn) or "<kernel>"
    except (OSError, TypeError) as exc:
        raise CompileError(f"cannot read the source of {fn.__qualname__}: {exc}") from None
    raw = "".join(lines)
    dedented = textwrap.dedent(raw)
    indent = len(lines[0]) - len(lines[0].lstrip())
    module = ast.parse(dedented)
    tree = module.body[0]
    if not isinstance(tree, ast.FunctionDef):
        raise CompileError("@tt.kernel / @tt.func decorate plain functions", file, first)
    closure = {}
    if fn.__closure__:
        closure = {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__)}
    src = SourceInfo(file, first, indent, [ln.rstrip("\n") for ln in lines])
    return FunctionSource(fn.__name__, tree, src, fn.__globals__, closure)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "scalar" | "buffer" | "constexpr"
    type: Any  # ScalarType, BufferType (elem None when generic) or None


class Func:
    """A device function (`@tt.func`), inlined where a kernel or another function calls it."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._source: FunctionSource | None = None

    def source(self) -> FunctionSource:
        if self._source is None:
            self._source = _parse(self.fn)
        return self._source

    def __call__(self, *args, **kwargs):
        raise TypeError(f"@tt.func {self.__name__} can only be called from kernel code")


class Kernel:
    """A compute kernel. Launch with `kernel[grid, block](*args)`; inspect with `.source(target)`."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._fsrc: FunctionSource | None = None
        self._params: list[Param] | None = None
        self._ir_cache: dict[tuple, ir.Kernel] = {}
        self._launchers: dict[tuple, _Launcher] = {}
        self._spec_slots: list[int] | None = None
        self.compiled: dict[tuple, Any] = {}  # (device, spec key) -> the runtime's compiled kernel

    # --- signature ------------------------------------------------------------------------------

    def _source(self) -> FunctionSource:
        if self._fsrc is None:
            self._fsrc = _parse(self.fn)
        return self._fsrc

    @property
    def params(self) -> list[Param]:
        if self._params is None:
            self._params = self._read_params()
        return self._params

    def _read_params(self) -> list[Param]:
        fsrc = self._source()
        args = fsrc.tree.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs or args.defaults:
            raise self._error("kernel parameters must be plain positional parameters", args)
        params = []
        for a in args.args:
            if a.annotation is None:
                raise self._error(f"parameter '{a.arg}' needs a type annotation (tt.f32, "
                                  f"tt.Buffer[tt.f32], tt.constexpr, …)", a)
            ann = self.fn.__annotations__.get(a.arg)
            if ann is None or isinstance(ann, str):
                # PEP 563 (`from __future__ import annotations`) left the text: evaluate it in
                # the kernel's globals and closure (locals of an enclosing factory are not
                # visible then; without the future import Python already evaluated them).
                try:
                    ann = eval(compile(ast.Expression(a.annotation), fsrc.src.file, "eval"),
                               fsrc.globals, dict(fsrc.closure))
                except Exception as exc:
                    raise self._error(f"cannot evaluate the annotation of '{a.arg}': {exc}",
                                      a) from None
            if isinstance(ann, T.ScalarType):
                params.append(Param(a.arg, "scalar", ann))
            elif isinstance(ann, T.BufferType):
                params.append(Param(a.arg, "buffer", ann))
            elif isinstance(ann, T._BufferFactory):
                params.append(Param(a.arg, "buffer", T.BufferType(None)))
            elif isinstance(ann, T.ConstExpr):
                params.append(Param(a.arg, "constexpr", None))
            else:
                raise self._error(f"unsupported annotation {ann!r} for '{a.arg}'", a)
        return params

    def _error(self, msg: str, node: ast.AST) -> CompileError:
        loc = self._source().src.loc(node)
        return CompileError(msg, loc.file, loc.line, loc.col, loc.text)

    # --- specialization -------------------------------------------------------------------------

    def spec_key(self, args: tuple) -> tuple:
        """The compile-time part of a launch: constexpr values and generic buffer dtypes.

        Also checks that typed buffer arguments have their declared element type: a mismatch
        would otherwise reinterpret memory silently.
        """
        slots = self._spec_slots
        if slots is None:
            params = self.params
            slots = self._spec_slots = [
                i for i, p in enumerate(params)
                if p.kind == "constexpr" or (p.kind == "buffer" and p.type.elem is None)]
            self._typed_slots = [(i, p.type.elem) for i, p in enumerate(params)
                                 if p.kind == "buffer" and p.type.elem is not None]
        for i, elem in self._typed_slots:
            if getattr(args[i], "dtype", None) is not elem:
                self.check_args(args)
        if not slots:
            return ()
        params = self.params
        try:
            # A constexpr's type is part of its key: 1, 1.0 and True are equal in Python but
            # lower to different kernels (`x // K` is an integer or a float division).
            return tuple((type(args[i]), args[i]) if params[i].kind == "constexpr" else args[i].dtype
                         for i in slots)
        except AttributeError:
            self.check_args(args)
            raise

    def check_args(self, args: tuple) -> None:
        """Raise a TypeError naming the first argument that does not fit its parameter."""
        from ..runtimes.base import Tensor

        for p, a in zip(self.params, args):
            where = f"{self.__name__}(): argument '{p.name}'"
            if p.kind == "buffer":
                if not isinstance(a, Tensor):
                    raise TypeError(f"{where} must be a device tensor, got {type(a).__name__}")
                if p.type.elem is not None and a.dtype is not p.type.elem:
                    raise TypeError(f"{where} is declared {p.type} but the tensor holds {a.dtype}")
            elif p.kind == "scalar":
                ok = isinstance(a, (int, float, bool, np.generic)) and not isinstance(a, Tensor)
                if ok and p.type.is_int and isinstance(a, (float, np.floating)):
                    ok = False
                if not ok:
                    raise TypeError(f"{where} expects a {p.type} value, got {a!r}")

    def _bindings(self, key: tuple) -> dict[str, Any]:
        it = iter(key)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "constexpr":
                out[p.name] = Py(next(it)[1])  # (type, value): see spec_key
            elif p.kind == "buffer" and p.type.elem is None:
                out[p.name] = T.BufferType(next(it))
            else:
                out[p.name] = p.type
        return out

    def lower(self, key: tuple, subgroup_size: int) -> ir.Kernel:
        """The optimized IR of one specialization (cached)."""
        ck = (key, subgroup_size)
        k = self._ir_cache.get(ck)
        if k is None:
            builder = KernelBuilder(self._source(), self._bindings(key), subgroup_size)
            k = optimize(builder.build())
            self._ir_cache[ck] = k
        return k

    def key_from_kwargs(self, spec: dict[str, Any]) -> tuple:
        """A specialization key from keyword values (`x=tt.f16, BLOCK=128`), for inspection."""
        key = []
        missing = []
        for p in self.params:
            if p.kind == "constexpr" or (p.kind == "buffer" and p.type.elem is None):
                if p.name not in spec:
                    missing.append(p.name)
                    continue
                v = spec.pop(p.name)
                key.append(T.as_type(v) if p.kind == "buffer" else (type(v), v))
        if missing:
            raise TypeError(f"{self.__name__}: give values for the compile-time parameters "
                            f"{missing} (constexprs, or element types of generic buffers)")
        if spec:
            raise TypeError(f"{self.__name__}: unknown parameters {sorted(spec)}")
        return tuple(key)

    # --- inspection -----------------------------------------------------------------------------

    def ir(self, subgroup_size: int = 32, **spec) -> str:
        """The IR listing of a specialization."""
        return ir.format_kernel(self.lower(self.key_from_kwargs(spec), subgroup_size))

    def source(self, target: str = "cuda", **spec) -> str:
        """Generated code for `target` ("cuda", "opencl", …) without needing a device."""
        from ..codegen import default_caps, render

        caps = default_caps(target)
        k = self.lower(self.key_from_kwargs(spec), caps.subgroup_size)
        return render(target, k, caps).text

    # --- launch ---------------------------------------------------------------------------------

    def __getitem__(self, config) -> _Launcher:
        try:
            launcher = self._launchers.get(config)
        except TypeError:  # unhashable (lists): validate and launch without the memo
            launcher = None
            config = tuple(tuple(c) if isinstance(c, list) else c for c in config)
        if launcher is None:
            if not isinstance(config, tuple) or len(config) != 2:
                raise TypeError("launch as kernel[grid, block](...), grid and block ints or tuples")
            launcher = _Launcher(self, _dims(config[0], "grid"), _dims(config[1], "block"))
            if len(self._launchers) < 4096:  # launch shapes repeat; bound the memo anyway
                self._launchers[config] = launcher
        return launcher

    def __call__(self, *args, **kwargs):
        raise TypeError(f"launch a kernel with a grid and a block: {self.__name__}[grid, block](...)")

    def __repr__(self) -> str:
        return f"<tt.kernel {self.__name__}>"


def _dims(v, what: str) -> tuple[int, int, int]:
    if isinstance(v, int):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not 1 <= len(v) <= 3 or \
            not all(isinstance(d, int) and d > 0 for d in v):
        raise TypeError(f"{what} must be a positive int or a tuple of 1-3 positive ints, got {v!r}")
    return tuple(v) + (1,) * (3 - len(v))


class _Launcher:
    __slots__ = ("kernel", "grid", "block")

    def __init__(self, kernel: Kernel, grid, block):
        self.kernel, self.grid, self.block = kernel, grid, block

    def __call__(self, *args, **kwargs):
        k = self.kernel
        params = k.params
        if kwargs:
            args = _bind(params, args, kwargs, k.__name__)
        elif len(args) != len(params):
            raise TypeError(f"{k.__name__}() takes {len(params)} arguments, got {len(args)}")
        device = device_of_args(args)
        device.launch(k, self.grid, self.block, args)


def _bind(params: list[Param], args: tuple, kwargs: dict, name: str) -> tuple:
    out = list(args)
    for p in params[len(args):]:
        if p.name not in kwargs:
            raise TypeError(f"{name}() missing argument '{p.name}'")
        out.append(kwargs.pop(p.name))
    if kwargs:
        raise TypeError(f"{name}() got unexpected arguments {sorted(kwargs)}")
    return tuple(out)


def kernel(fn) -> Kernel:
    """Decorate a Python function as a compute kernel."""
    return Kernel(fn)


def func(fn) -> Func:
    """Decorate a Python function as a device function callable from kernels."""
    return Func(fn)
