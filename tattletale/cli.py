"""The `tt` command line (also `python -m tattletale`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys


def _devices(args) -> int:
    import tattletale as tt

    found = tt.devices()
    if not found:
        print("no compute device found (install a GPU driver, or pocl-opencl-icd for the CPU)")
        return 1
    default = found[0]
    for backend, index, name in found:
        mark = "  (default)" if (backend, index) == default[:2] else ""
        print(f"{backend}:{index}  {name}{mark}")
    return 0


def _parse_spec(items: list[str]) -> dict:
    from tattletale.dsl.types import SCALARS

    spec = {}
    for item in items:
        key, _, value = item.partition("=")
        if value in SCALARS:
            spec[key] = SCALARS[value]
        else:
            try:
                spec[key] = int(value)
            except ValueError:
                try:
                    spec[key] = float(value)
                except ValueError:
                    raise SystemExit(f"tt: cannot read --spec {item!r} (use NAME=int|float|dtype)") \
                        from None
    return spec


def _source(args) -> int:
    import tattletale as tt

    spec = importlib.util.spec_from_file_location("_tt_user_module", args.file)
    if spec is None or spec.loader is None:
        print(f"tt: cannot load {args.file}", file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernel = getattr(module, args.kernel, None)
    if not isinstance(kernel, tt.dsl.kernel.Kernel):
        print(f"tt: {args.kernel!r} is not a @tt.kernel in {args.file}", file=sys.stderr)
        return 2
    values = _parse_spec(args.spec or [])
    try:
        if args.target == "ir":
            print(kernel.ir(**values))
        else:
            print(kernel.source(args.target, **values), end="")
    except tt.CompileError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from tattletale.codegen import TARGETS

    ap = argparse.ArgumentParser(prog="tt", description="tattletale: LLM inference on a Python kernel DSL")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("devices", help="list the compute devices tattletale can use")
    p.set_defaults(func=_devices)
    p = sub.add_parser("source", help="print a kernel's generated code for a target")
    p.add_argument("file", help="Python file defining the kernel")
    p.add_argument("kernel", help="name of the @tt.kernel")
    p.add_argument("--target", default="cuda", choices=[*TARGETS, "ir"])
    p.add_argument("--spec", nargs="*", metavar="NAME=VALUE",
                   help="constexpr values and generic buffer dtypes, e.g. BLOCK=128 x=f16")
    p.set_defaults(func=_source)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
