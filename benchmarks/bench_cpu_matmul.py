"""Matrix products on a CPU device (PoCL OpenCL by default) at SmolLM2-135M's shapes, for decode
(M = 1), batched decode (16) and prefill (64, 256) rows, every weight format, against numpy's f32
`x @ W.T` of the same shape in the same process. Device time per product is taken from a
recorded, replayed batch of products (what a decode step does), best of several rounds since the
machine is shared; GB/s counts the weight bytes as stored.

    python benchmarks/bench_cpu_matmul.py [--backend opencl] [--rows 1 16 64 256] [--formats q4_1 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_kernels import random_weight
from common import header

import tattletale as tt
from tattletale.kernels.matmul import linear
from tattletale.kernels.quant import FORMATS

SHAPES = [(960, 576, "q, k, v"), (576, 576, "o"), (3072, 576, "gate+up"), (576, 1536, "down"),
          (49152, 576, "lm_head")]


def best_seconds(fn, reps: int, rounds: int = 5, sync=None) -> float:
    """Best time of `reps` calls of fn over `rounds` rounds, per call."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="opencl")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = ap.parse_args()
    dev = tt.device(args.backend)
    rng = np.random.default_rng(0)
    print(header(f"CPU matrix products, SmolLM2-135M shapes, {dev}"))
    print("| N×K (what) | M | format | tattletale | GB/s of W | numpy f32 | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n, k, what in SHAPES:
        wn = rng.standard_normal((n, k), dtype=np.float32)
        for m in args.rows:
            if what == "lm_head" and m > 1:
                continue  # logits are computed for the last token of each sequence only
            x = rng.standard_normal((m, k), dtype=np.float32)
            reps = max(2, 64 // m)
            peer = best_seconds(lambda: [x @ wn.T for _ in range(reps)], reps)
            xd = dev.tensor(x)
            out = dev.empty((m, n), tt.f32)
            for fmt in args.formats:
                w = random_weight(dev, n, k, fmt, rng)
                with dev.record() as rec:
                    for _ in range(reps):
                        linear(xd, w, out=out)
                rec.replay()
                dev.synchronize()
                s = best_seconds(rec.replay, reps, sync=dev.synchronize)
                gflops = 2 * m * n * k / s / 1e9
                print(f"| {n}×{k} ({what}) | {m} | {fmt} | {s * 1e6:.0f} µs, {gflops:.1f} GFLOP/s | "
                      f"{w.nbytes / s / 1e9:.1f} | {peer * 1e6:.0f} µs, {2 * m * n * k / peer / 1e9:.1f} "
                      f"GFLOP/s | {peer / s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
