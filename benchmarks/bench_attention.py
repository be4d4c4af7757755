"""Decode attention through page tables vs contiguous K/V, and the peer (torch SDPA) in the same run.

Llama-3.1-8B heads (32 query heads, 8 KV heads, head_dim 128), a batch of B sequences of the
same context length, one query token each. Contiguous: each sequence's K/V in one block.
Paged: the same K/V scattered over a shuffled pool of pages of 16, 64 or 256 tokens, reached
through per-sequence page tables. Reported: device time (median) and bandwidth over the K/V
bytes read, and paged time relative to contiguous (target: within 10 %).

    python benchmarks/bench_attention.py [--backend cuda] [--contexts 4096 32768] [--batches 1 8 32]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import device_ms, header, torch_cuda

import tattletale as tt
from tattletale.dsl.types import as_type
from tattletale.kernels.attention import decode_attention, decode_plan
from tattletale.kernels.random import fill_uniform_

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend")
    ap.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--page-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--dtypes", nargs="+", default=["f32", "f16"])
    args = ap.parse_args()
    dev = tt.device(args.backend) if args.backend else tt.device()
    torch = torch_cuda() if dev.backend == "cuda" else None
    rng = np.random.default_rng(0)
    print(header(f"decode attention, {HEADS} heads / {KV_HEADS} KV heads / head_dim {HEAD_DIM}, "
                 f"{dev.backend} on {dev.name}"))
    print("| KV dtype | batch | context | layout | ms | GB/s over K/V | vs contiguous |")
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for ctx in args.contexts:
            for bsz in args.batches:
                bench_case(dev, torch, rng, dtype, ctx, bsz, args.page_sizes)
                dev.empty_pool()


def bench_case(dev, torch, rng, dtype: str, ctx: int, bsz: int, page_sizes: list[int]) -> None:
    kv_bytes = 2 * bsz * ctx * KV_HEADS * HEAD_DIM * as_type(dtype).itemsize
    if kv_bytes > 24e9:
        return
    shape = (bsz, ctx, KV_HEADS, HEAD_DIM)
    k = fill_uniform_(dev.empty(shape, dtype), 1)
    v = fill_uniform_(dev.empty(shape, dtype), 2)
    q = dev.tensor(rng.standard_normal((bsz, HEADS, HEAD_DIM)).astype(np.float32))
    lengths = dev.tensor(np.full(bsz, ctx, np.int32))
    out = dev.empty((bsz, HEADS, HEAD_DIM), tt.f32)
    splits, chunk = decode_plan(ctx)
    partials = (dev.empty((bsz * HEADS * splits, HEAD_DIM), tt.f32),
                dev.empty((bsz * HEADS * splits, 2), tt.f32))
    base = device_ms(dev, lambda: decode_attention(q, k, v, lengths, KV_HEADS, out=out, partials=partials,
                                                   chunk=chunk, longest=ctx))
    row = f"| {dtype} | {bsz} | {ctx} |"
    print(f"{row} contiguous | {base:.3f} | {kv_bytes / base / 1e6:.0f} | 1.00 |", flush=True)
    pool_k = k.reshape(bsz * ctx, KV_HEADS, HEAD_DIM)  # the same memory, addressed as pages
    pool_v = v.reshape(bsz * ctx, KV_HEADS, HEAD_DIM)
    for page in page_sizes:
        tables = dev.tensor(rng.permutation(bsz * ctx // page).astype(np.int32).reshape(bsz, ctx // page))
        ms = device_ms(dev, lambda: decode_attention(q, pool_k, pool_v, lengths, KV_HEADS, out=out,
                                                     partials=partials, chunk=chunk, longest=ctx,
                                                     tables=tables, page_size=page))
        print(f"{row} paged {page} (shuffled) | {ms:.3f} | {kv_bytes / ms / 1e6:.0f} | {ms / base:.2f} |",
              flush=True)
    if torch is not None and dtype == "f16":
        tq = torch.randn(bsz, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.float16)
        tk = torch.randn(bsz, KV_HEADS, ctx, HEAD_DIM, device="cuda", dtype=torch.float16)
        tv = torch.randn_like(tk)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for _ in range(3):
            sdpa(tq, tk, tv, enable_gqa=True)
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            sdpa(tq, tk, tv, enable_gqa=True)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        ms = float(np.median(times))
        print(f"{row} torch {torch.__version__} SDPA (contiguous) | {ms:.3f} | {kv_bytes / ms / 1e6:.0f} | "
              f"{ms / base:.2f} |", flush=True)

if __name__ == "__main__":
    main()
