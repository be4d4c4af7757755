"""Where a decode step's time goes: device time per kernel over a few steps, kernel by kernel
(each launch synchronized, so totals exceed a replayed step's time).

    python benchmarks/profile_step.py [--backend cuda] [--shape llama-3.1-8b|llama-3.2-1b|smollm2]
"""

from __future__ import annotations

import argparse
import collections

from bench_model import SHAPES
from common import header

import tattletale as tt
from tattletale.models import open_model, resolve
from tattletale.models.llama import LlamaModel
from tattletale.runtimes.base import Device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend")
    ap.add_argument("--shape", default="smollm2")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    dev = tt.device(args.backend) if args.backend else tt.device()
    if args.shape == "smollm2":
        model = LlamaModel(dev, open_model(resolve(None)))
    else:
        model = LlamaModel(dev, None, config=SHAPES[args.shape], random_format="bf16")
    cache = model.new_cache(256)
    model.forward(list(range(100, 132)), cache)
    model.forward([5], cache)  # compile
    times: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    launch = Device.launch

    def timed(self, kernel, grid, block, args):
        start = self.event()
        launch(self, kernel, grid, block, args)
        end = self.event()
        times[kernel.__name__] += start.elapsed_ms(end)
        counts[kernel.__name__] += 1

    Device.launch = timed
    for _ in range(args.steps):
        model.forward([7], cache)
    Device.launch = launch
    print(header(f"decode step profile, {args.shape}, {dev}"))
    print("| kernel | ms per step | launches per step | µs per launch |")
    print("|---|---|---|---|")
    total = sum(times.values())
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1]):
        n = counts[name] / args.steps
        print(f"| {name} | {ms / args.steps:.3f} | {n:.0f} | {ms / counts[name] * 1e3:.1f} |")
    print(f"| total | {total / args.steps:.3f} | {sum(counts.values()) / args.steps:.0f} | |")


if __name__ == "__main__":
    main()
