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


def _run(args) -> int:
    """`tt run`: one prompt, or an interactive chat when no prompt is given."""
    import tattletale as tt
    from tattletale.engine.llm import LLM, ContextOverflow
    from tattletale.models import ModelFileError, UnsupportedModel

    if args.backend:
        try:
            tt.device(args.backend)
        except Exception as exc:
            available = sorted({b for b, _, _ in tt.devices()})
            print(f"tt: backend {args.backend!r} is not available here ({exc}); available: "
                  f"{', '.join(available) or 'none'}", file=sys.stderr)
            return 2
    try:
        llm = LLM(args.model, backend=args.backend, max_context=args.context, progress=sys.stderr.isatty())
    except (ModelFileError, UnsupportedModel, OSError) as exc:
        print(f"tt: {exc}", file=sys.stderr)
        return 2
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, min_p=args.min_p, seed=args.seed)
    chat = args.chat if args.chat is not None else llm.template is not None

    def generate(prompt_ids) -> bool:
        try:
            for piece in llm.stream(prompt_ids, **sampling):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ContextOverflow as exc:
            print(f"\ntt: {exc}", file=sys.stderr)
            return False
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
        s = llm.stats
        reused = f", {s.reused_tokens} re-used from cache" if s.reused_tokens else ""
        print(f"\n[{s.prompt_tokens} prompt tokens{reused}, {s.prefill_tps:.1f} tok/s prefill; "
              f"{s.generated_tokens} generated, {s.decode_tps:.1f} tok/s decode; "
              f"{llm.device.backend} on {llm.device.name}]", file=sys.stderr)
        return True

    if args.prompt is not None:
        if chat:
            ids = llm.chat_prompt([{"role": "user", "content": args.prompt}])
        else:
            ids = llm.tokenizer.encode(args.prompt)
        return 0 if generate(ids) else 1
    messages: list[dict] = []
    print(f"tattletale chat with {llm.path.name} on {llm.device.backend} ({llm.device.name}). "
          f"Ctrl-D or Ctrl-C at the prompt quits; Ctrl-C while generating stops the answer.",
          file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        ids = llm.chat_prompt(messages) if chat else llm.tokenizer.encode(user)
        generate(ids)
        answer = llm.tokenizer.decode(llm.last_ids)
        messages.append({"role": "assistant", "content": answer})


def main(argv: list[str] | None = None) -> int:
    from tattletale.codegen import TARGETS
    from tattletale.runtimes import BACKENDS

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
    p = sub.add_parser("run", help="run a model: one prompt, or an interactive chat")
    p.add_argument("model", nargs="?", default=None,
                   help="HF model directory, .gguf file, or bundled name (default: smollm2, "
                        "SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("-p", "--prompt", help="the prompt (without it: interactive chat)")
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest present")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--context", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="wrap prompts in the model's chat template (default when it has one)")
    p.add_argument("--no-chat", dest="chat", action="store_false")
    p.set_defaults(func=_run)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
