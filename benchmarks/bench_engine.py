"""The engine end to end, in process (no HTTP): prefix-cache time to first token, and batched
throughput at a given concurrency, next to the peer in the same run.

* `--ttft`: a 2,000-token shared system prompt followed by 50 short user turns, each a request
  of its own (system prompt + its turn); time to first token with and without the prefix cache,
  for each page size. CPU: the bundled SmolLM2-135M Q4_1 GGUF; GPU (`--gpu`): a randomly
  initialised Llama-3.2-1B-shaped bf16 model.
* `--throughput`: N requests of fixed input/output lengths (ignore_eos) submitted at once at
  concurrency C (at most C running); output tok/s, TTFT and time per output token (median,
  p99). The peer on the GPU: HF transformers' batched `generate` on the same model shape.

    python benchmarks/bench_engine.py --ttft [--gpu] [--page-sizes 16 64 256]
    python benchmarks/bench_engine.py --throughput --gpu [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_model import SHAPES, hf_batch_generate
from common import header, torch_cuda

import tattletale as tt
from tattletale.engine.core import Engine
from tattletale.engine.request import Request
from tattletale.kernels.sampling import SamplingParams
from tattletale.models import open_model, resolve
from tattletale.models.llama import LlamaModel

GREEDY = SamplingParams(temperature=0.0)


def load(gpu: bool, backend: str | None, shape: str) -> tuple[LlamaModel, str]:
    dev = tt.device(backend) if backend else tt.device()
    if gpu:
        return LlamaModel(dev, None, config=SHAPES[shape], random_format="bf16"), f"{shape} bf16 (random)"
    return LlamaModel(dev, open_model(resolve(None))), "SmolLM2-135M-Instruct Q4_1"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_requests(engine: Engine, requests: list[Request], concurrency: int) -> dict:
    """Submit up to `concurrency` requests at a time (a new one when one finishes) and step the
    engine until all are done; per-request first-token and per-token times from output stamps."""
    stamps: dict[str, list[float]] = {}
    submitted: dict[str, float] = {}
    pending = list(requests)
    running = 0

    def submit_next() -> None:
        nonlocal running
        r = pending.pop(0)
        stamps[r.request_id] = []
        submitted[r.request_id] = time.perf_counter()
        engine.submit(r, sink(r.request_id))
        running += 1

    def sink(rid: str):
        def on_output(out) -> None:
            nonlocal running
            if out.token_ids:
                stamps[rid] += [time.perf_counter()] * len(out.token_ids)
            if out.finished:
                running -= 1
        return on_output

    t0 = time.perf_counter()
    while pending or running:
        while pending and running < concurrency:
            submit_next()
        engine.step()
    wall = time.perf_counter() - t0
    ttft = [stamps[r][0] - submitted[r] for r in stamps]
    tpot = [(s[-1] - s[0]) / (len(s) - 1) for s in stamps.values() if len(s) > 1]
    total = sum(len(s) for s in stamps.values())
    return dict(wall=wall, tokens=total, tps=total / wall, ttft=ttft, tpot=tpot)


def bench_ttft(args) -> None:
    model, what = load(args.gpu, args.backend, "llama-3.2-1b")
    dev = model.dev
    rng = np.random.default_rng(0)
    vocab = min(model.cfg.vocab, 32000)
    system = rng.integers(100, vocab, 2000).tolist()
    turns = [rng.integers(100, vocab, int(rng.integers(10, 30))).tolist() for _ in range(args.turns)]
    print(header(f"time to first token, 2000-token shared system prompt + {args.turns} turns, {what}, "
                 f"{dev.backend} on {dev.name}"))
    print("| page size | prefix cache | TTFT first (ms) | TTFT median of later turns (ms) | p99 (ms) | "
          "speed-up |")
    print("|---|---|---|---|---|---|")
    for page in args.page_sizes:
        medians = {}
        for cached in (False, True):
            engine = Engine(model, None, page_size=page, prefix_cache=cached, max_context=2100,
                            max_batch_tokens=args.batch_tokens, kv_memory=args.kv_memory)
            warm = run_requests(engine, [Request(system[:64] + turns[0], GREEDY, 2, ignore_eos=True)], 1)
            del warm
            if engine.prefix_cache is not None:
                engine.prefix_cache.evict(engine.pool.n_pages)
            ttfts = []
            for turn in turns:
                res = run_requests(engine, [Request(system + turn, GREEDY, 1, ignore_eos=True)], 1)
                ttfts += res["ttft"]
            dev.synchronize()
            rest = [t * 1e3 for t in ttfts[1:]]
            medians[cached] = statistics.median(rest)
            speed = f"{medians[False] / medians[True]:.1f}x" if cached else ""
            print(f"| {page} | {'on' if cached else 'off'} | {ttfts[0] * 1e3:.1f} | "
                  f"{medians[cached]:.1f} | {pct(rest, 99):.1f} | {speed} |", flush=True)
            del engine
            dev.empty_pool()


def bench_throughput(args) -> None:
    model, what = load(args.gpu, args.backend, args.shape)
    dev = model.dev
    rng = np.random.default_rng(1)
    vocab = min(model.cfg.vocab, 32000)
    print(header(f"engine throughput, {args.requests} requests, {args.input_len} in / "
                 f"{args.output_len} out (ignore_eos), {what}, {dev.backend} on {dev.name}"))
    print("| engine | concurrency | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | "
          "TPOT p99 (ms) |")
    print("|---|---|---|---|---|---|---|")
    torch = torch_cuda() if args.gpu else None
    for conc in args.concurrency:
        n = max(args.requests, conc)
        prompts = [rng.integers(100, vocab, args.input_len).tolist() for _ in range(n)]
        context = args.input_len + args.output_len + 16
        kv_memory = args.kv_memory or int(1.2 * conc * context * model.kv_layout(16).bytes_per_token)
        engine = Engine(model, None, page_size=args.page_sizes[0], max_seqs=max(conc, 1),
                        max_batch_tokens=args.batch_tokens, kv_memory=kv_memory, max_context=context)
        warm = [Request(p, GREEDY, 4, ignore_eos=True) for p in prompts[:conc]]
        run_requests(engine, warm, conc)  # compile and record the batch shapes
        engine.prefix_cache.evict(engine.pool.n_pages)
        reqs = [Request(p, GREEDY, args.output_len, ignore_eos=True) for p in prompts]
        res = run_requests(engine, reqs, conc)
        ms = lambda xs, q: pct([x * 1e3 for x in xs], q)  # noqa: E731
        print(f"| tattletale {dev.backend} | {conc} | {res['tps']:.0f} | {ms(res['ttft'], 50):.0f} | "
              f"{ms(res['ttft'], 99):.0f} | {ms(res['tpot'], 50):.1f} | {ms(res['tpot'], 99):.1f} |",
              flush=True)
        del engine
        dev.empty_pool()
        if torch is not None:
            tps = hf_batch_generate(torch, SHAPES[args.shape], prompts[:conc], args.output_len)
            print(f"| HF transformers {torch.__version__} generate, batch {conc} | {conc} | {tps:.0f} "
                  f"| | | | |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ttft", action="store_true")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="random-weight model of a real shape")
    ap.add_argument("--backend")
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--page-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--kv-memory", default=None)
    args = ap.parse_args()
    if args.ttft:
        bench_ttft(args)
    if args.throughput:
        bench_throughput(args)


if __name__ == "__main__":
    main()
