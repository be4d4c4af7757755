"""The `tt` command line (also `python -m tattletale`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings


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
    """`tt run`: one prompt, or an interactive chat when no prompt is given. Problems with the
    model, the device or the prompt end in one `tt: ...` line and a non-zero exit code."""
    from jinja2 import TemplateError

    import tattletale as tt
    from tattletale.engine.llm import LLM, ContextOverflow
    from tattletale.models import ModelFileError, UnsupportedModel

    try:
        tt.device(args.backend) if args.backend else tt.device()
    except Exception as exc:  # no driver, no device, package missing
        reason = str(exc).splitlines()[0]
        if not args.backend:
            print(f"tt: no compute device found ({reason})", file=sys.stderr)
            return 2
        available = sorted({b for b, _, _ in tt.devices()})
        print(f"tt: backend {args.backend!r} is not available here ({reason}); available: "
              f"{', '.join(available) or 'none'}", file=sys.stderr)
        return 2
    try:
        options = {k: v for k, v in (("kv_memory", args.kv_memory), ("page_size", args.page_size),
                                     ("kv_dtype", args.kv_dtype)) if v is not None}
        llm = LLM(args.model, backend=args.backend, max_context=args.context,
                  progress=sys.stderr.isatty(), **options)
    except (ModelFileError, UnsupportedModel, ValueError) as exc:
        print(f"tt: {exc}", file=sys.stderr)
        return 2
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, min_p=args.min_p, seed=args.seed)
    chat = args.chat if args.chat is not None else llm.template is not None

    def prompt_ids(messages: list[dict]) -> list[int]:
        if chat:
            return llm.chat_prompt(messages)
        return llm.tokenizer.encode(messages[-1]["content"])

    def generate(ids: list[int]) -> bool:
        """Stream one answer and its summary; False when Ctrl-C stopped it."""
        pieces = llm.stream(ids, **sampling)
        interrupted = False
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pieces.close()  # runs stream()'s cleanup now, so stats and last_ids are final
        print("\n[interrupted]" if interrupted else "", file=sys.stderr)  # ends the answer's line
        s = llm.stats
        reused = f", {s.reused_tokens} re-used from cache" if s.reused_tokens else ""
        print(f"[{s.prompt_tokens} prompt tokens{reused}, {s.prefill_tps:.1f} tok/s prefill; "
              f"{s.generated_tokens} generated, {s.decode_tps:.1f} tok/s decode; "
              f"{llm.device.backend} on {llm.device.name}]", file=sys.stderr)
        return not interrupted

    if args.prompt is not None:
        try:
            ids = prompt_ids([{"role": "user", "content": args.prompt}])
            llm.check_fits(ids)  # before any computation
        except (ContextOverflow, TemplateError) as exc:
            print(f"tt: {_describe(exc)}", file=sys.stderr)
            return 2
        return 0 if generate(ids) else 130
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
        try:
            ids = _fit(llm, messages, prompt_ids) if chat else prompt_ids(messages)
            llm.check_fits(ids)
        except (ContextOverflow, TemplateError) as exc:
            print(f"tt: {_describe(exc)}", file=sys.stderr)
            messages.pop()
            continue
        generate(ids)
        messages.append({"role": "assistant", "content": llm.tokenizer.decode(llm.last_ids)})


def _fit(llm, messages: list[dict], prompt_ids) -> list[int]:
    """The conversation's prompt ids, dropping its oldest turns (a system message stays) while it
    does not fit in the context; ContextOverflow when the newest message alone does not."""
    from tattletale.engine.llm import ContextOverflow

    while True:
        ids = prompt_ids(messages)
        try:
            llm.check_fits(ids)
            return ids
        except ContextOverflow:
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:
                raise
            del messages[first: first + 2 if len(messages) - first > 2 else first + 1]
            print("[the oldest turn was dropped to fit the context]", file=sys.stderr)


def _describe(exc: Exception) -> str:
    """One line for an exception shown to the user."""
    from jinja2 import TemplateError

    if isinstance(exc, TemplateError):
        return f"the model's chat template failed: {exc}"
    return str(exc)


def _serve(args) -> int:
    """`tt serve`: the OpenAI-compatible HTTP server. It listens at once (/health answers 503) and
    loads the model in the background; a model that fails to load ends it with one `tt: ...` line."""
    from tattletale.models import ModelFileError, resolve
    from tattletale.server.serve import ServeError, serve

    try:
        path = resolve(args.model)
    except ModelFileError as exc:
        print(f"tt: {exc}", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"tt: no model file or directory at {path}", file=sys.stderr)
        return 2

    options = dict(kv_memory=args.kv_memory, page_size=args.page_size, kv_dtype=args.kv_dtype,
                   max_batch_tokens=args.max_batch_tokens, max_context=args.context)

    def load():
        from tattletale.engine.core import load_engine

        return load_engine(args.model, args.backend, progress=sys.stderr.isatty(),
                           **{k: v for k, v in options.items() if v is not None})

    print(f"tt: serving {path.name} on http://{args.host}:{args.port}/v1 (loading the model; /health "
          f"answers 200 once it is ready)", file=sys.stderr)
    if not args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tt: warning: {args.host} may be reachable from other machines and no --api-key is set",
              file=sys.stderr)
    try:
        serve(load, host=args.host, port=args.port, api_key=args.api_key,
              shutdown_timeout=args.shutdown_timeout)
    except ServeError as exc:
        print(f"tt: {exc}", file=sys.stderr)
        return 2
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one `tt: warning: ...` line (not Python's file:line and source echo)."""
    print(f"tt: warning: {message}", file=sys.stderr)


def _count(least: int):
    """An argparse type: an integer ≥ least."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}")
        return value
    return parse


def _kv_memory(text: str) -> str:
    """An argparse type: a --kv-memory value the engine will accept (checked here, parsed there)."""
    from tattletale.cache.pages import kv_budget

    try:
        kv_budget(text, 2**40)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    p.add_argument("--max-tokens", type=_count(0), default=256)
    p.add_argument("--context", type=_count(2), default=None,
                   help="context length in tokens, prompt and answer (default: the model's)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="wrap prompts in the model's chat template (default when it has one)")
    p.add_argument("--no-chat", dest="chat", action="store_false")
    p.add_argument("--kv-memory", type=_kv_memory, default=None,
                   help="memory for the KV cache: a size (8GiB, 512MB) or a fraction of the free "
                        "memory (0.5); default: two full contexts, at most half the free memory")
    p.add_argument("--page-size", type=_count(1), default=None,
                   help="tokens per KV cache page (default: 16); prefixes are re-used in whole pages")
    p.add_argument("--kv-dtype", choices=["f16", "f32"], default=None,
                   help="how K and V are stored (default: f16, half the memory of f32)")
    p.set_defaults(func=_run)
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("model", nargs="?", default=None,
                   help="HF model directory, .gguf file, or bundled name (default: smollm2)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, "
                   "this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_count(1), default=8000)
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest present")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--kv-memory", type=_kv_memory, default=None,
                   help="device memory for the KV cache: a size (8GiB, 512MB) or a fraction of the "
                        "memory free after loading the weights (0.9); default: the engine's choice")
    p.add_argument("--page-size", type=_count(1), default=None, help="tokens per KV cache page")
    p.add_argument("--kv-dtype", choices=["f16", "f32"], default=None,
                   help="how K and V are stored (default: f16, half the memory of f32)")
    p.add_argument("--max-batch-tokens", type=_count(1), default=None,
                   help="most tokens one engine step computes (prefill chunks and decodes)")
    p.add_argument("--context", type=_count(2), default=None,
                   help="context length in tokens per request, prompt and answer (default: the model's)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests may finish after SIGTERM/SIGINT (default: 10)")
    p.set_defaults(func=_serve)
    args = ap.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C while loading: no traceback
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tt run ... | head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("TT_TRACEBACK"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"tt: internal error: {type(exc).__name__}: {first} (set TT_TRACEBACK=1 for the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
