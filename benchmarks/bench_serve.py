"""A load generator for OpenAI-compatible servers, in the style of `vllm bench serve`.

N streaming completion requests with a fixed input length (random words) and a fixed output
length (end-of-sequence suppressed), at a given concurrency or Poisson request rate. Reports
output throughput, time to first token (TTFT) and inter-token latency (ITL), median and p99.

It can start the servers itself, on the same GGUF and the same thread count:
  tattletale (`tt serve`) and llama.cpp (`python -m llama_cpp.server` from llama-cpp-python,
  with `use_extra_bufts=False`, since its AMX buffer types crash with SIGILL on these CPUs).

    python benchmarks/bench_serve.py --launch tt llama.cpp [--backend opencl] [--concurrency 1 4 16]
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 [--rate 2.0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import header

import tattletale as tt
from tattletale.models import open_model, resolve

WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
         "case point government company number group problem fact river mountain window garden "
         "music story idea city light water house paper table market letter science").split()

# llama-cpp-python's server, started without its AMX buffer types (see common.py)
LLAMA_CPP_LAUNCHER = f"""
import runpy, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from common import avoid_llama_cpp_extra_bufts
avoid_llama_cpp_extra_bufts()
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, model: str, backend: str | None, threads: int, context: int,
           extra_args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "tt":
        cmd = [sys.executable, "-m", "tattletale", "serve", model, "--port", str(port),
               "--context", str(context)]
        if backend:
            cmd += ["--backend", backend]
    else:
        cmd = [sys.executable, "-c", LLAMA_CPP_LAUNCHER, "--model", model, "--port", str(port),
               "--n_threads", str(threads), "--n_ctx", str(context), *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            return proc, url
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def make_prompt(rng: random.Random, n_tokens: int, tokenizer) -> str:
    """Random words cut to n_tokens tokens of the model's tokenizer."""
    text = " ".join(rng.choice(WORDS) for _ in range(n_tokens * 2))
    return tokenizer.decode(tokenizer.encode(text, add_special=False)[:n_tokens])


def one_request(url: str, body: dict, delay: float) -> dict:
    """Stream one completion; times of every content chunk."""
    import http.client
    from urllib.parse import urlparse

    time.sleep(delay)
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    stamps: list[float] = []
    tokens = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            stamps.append(time.perf_counter())
    conn.close()
    return dict(start=t0, stamps=stamps, tokens=tokens or len(stamps))


def run_load(url: str, prompts: list[str], output_len: int, concurrency: int, rate: float | None,
             extra: dict) -> dict:
    """All prompts through `concurrency` client threads (Poisson arrivals at `rate`, if given)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    delays = np.cumsum(rng.exponential(1 / rate, len(prompts))) if rate else np.zeros(len(prompts))
    bodies = [{"prompt": p, "max_tokens": output_len, "temperature": 0.0, "stream": True,
               "stream_options": {"include_usage": True}, **extra} for p in prompts]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        # arrival delays count from the start, not from when a thread frees up
        futures = [pool.submit(lambda b, d: one_request(url, b, max(0.0, t0 + d - time.perf_counter())),
                               b, float(d)) for b, d in zip(bodies, delays)]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    ttft = [(r["stamps"][0] - r["start"]) * 1e3 for r in results if r["stamps"]]
    itl = [(b - a) * 1e3 for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    tokens = sum(r["tokens"] for r in results)
    return dict(tps=tokens / wall, tokens=tokens, wall=wall, ttft=ttft, itl=itl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="an already running server")
    ap.add_argument("--launch", nargs="*", choices=["tt", "llama.cpp"], default=[])
    ap.add_argument("--model", default=None, help="GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--backend")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rate", type=float, help="Poisson request rate (requests/s) instead of all at once")
    ap.add_argument("--requests", type=int, default=None, help="default: 2 x concurrency, at least 8")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048, help="each request's context window")
    ap.add_argument("--llama-cpp-queue", action="store_true",
                    help="start llama_cpp.server with --interrupt_requests False: requests wait their "
                         "turn (by default a new request interrupts the one being generated)")
    args = ap.parse_args()
    args.llama_cpp_args = ["--interrupt_requests", "False"] if args.llama_cpp_queue else []
    model = str(resolve(args.model))
    tokenizer = open_model(model).tokenizer()
    eos = tokenizer.token_id(tokenizer.eos_token)
    threads = os.cpu_count() or 1
    rng = random.Random(0)
    targets = [("server", args.url, None)] if args.url else []
    load = f"rate {args.rate}/s" if args.rate else "closed loop"
    print(header(f"serving benchmark, {os.path.basename(model)}, {args.input_len} in / {args.output_len} "
                 f"out, {threads} threads, {load}"))
    print("| server | concurrency | requests | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) "
          "| ITL p99 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.launch:
        proc, url = launch(kind, model, args.backend, threads, args.context,
                           args.llama_cpp_args if kind == "llama.cpp" else [])
        targets.append((kind, url, proc))
    try:
        for name, url, _ in targets:
            # tt takes ignore_eos; llama.cpp's server takes a logit bias against the end token
            extra = {"ignore_eos": True} if name == "tt" else {"logit_bias": {str(eos): -100}}
            label = f"tattletale ({args.backend or tt.device().backend})" if name == "tt" else \
                " ".join([name, *args.llama_cpp_args])
            run_load(url, [make_prompt(rng, 16, tokenizer)] * 2, 4, 2, None, extra)  # warm up
            for conc in args.concurrency:
                n = args.requests or max(8, 2 * conc)
                prompts = [make_prompt(rng, args.input_len, tokenizer) for _ in range(n)]
                r = run_load(url, prompts, args.output_len, conc, args.rate, extra)
                p = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
                print(f"| {label} | {conc} | {n} | {r['tps']:.1f} | {p(r['ttft'], 50):.0f} | "
                      f"{p(r['ttft'], 99):.0f} | {p(r['itl'], 50):.1f} | {p(r['itl'], 99):.1f} |", flush=True)
    finally:
        for _, _, proc in targets:
            if proc is not None:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
