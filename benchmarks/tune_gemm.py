"""Tensor-core GEMM tile sweep on CUDA, against torch.matmul (cuBLAS) in the same process, to set the
configurations in tattletale/kernels/gemm.py.

Part 1: y = x @ W.T at 4096³ for each tile shape, x and W f16 or bf16, y in their type (as torch
returns it); the relative error against an f32 product is checked for every shape. The warpgroup
kernel's shapes (wgmma, Hopper) are swept where the device has it, the mma.sync kernel's with
--tiles mma or all.
Part 2: small M (batched decode), f32 activations and bf16 weights at N = K = 4096: small tile shapes
× split-K counts, to set CUDA_SMALL_M_CONFIG and the split heuristic.
Part 3: the model's path, linear() with f32 activations (split into 16-bit parts) and bf16 weights,
for the decode shapes (4096², gate|up 28672×4096, down 4096×14336) at M = 1 … 64 and larger M,
through the tensor cores and through the GEMV (M ≤ 16), next to torch's bf16 product: sets
MMA_MIN_ROWS and MAX_GEMV_ROWS in tattletale/kernels/matmul.py.

    python benchmarks/tune_gemm.py [--quick] [--small-only] [--sweep-only] [--tiles mma|wgmma|all]
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_kernels import torch_ms
from common import device_ms, header, torch_cuda

import tattletale as tt
from tattletale.codegen import native_wgmma
from tattletale.kernels.gemm import (
    CUDA_CONFIG,
    CUDA_SMALL_M_CONFIG,
    SMALL_M,
    GemmConfig,
    default_config,
    gemm,
)
from tattletale.kernels.matmul import linear
from tattletale.kernels.quant import Weight

CONFIGS = [GemmConfig(*c) for c in [
    (128, 128, 32, 2, 2, 4), (128, 128, 64, 2, 2, 3), (128, 256, 32, 2, 4, 3), (128, 256, 32, 2, 4, 4),
    (128, 256, 64, 2, 4, 3), (256, 128, 32, 4, 2, 3), (128, 128, 32, 2, 4, 4), (128, 128, 32, 4, 2, 4)]]
# warpgroup tiles: BM × BN × 64 (128-byte swizzled rows), WM × WN warpgroups, stages
WGMMA_CONFIGS = [GemmConfig(*c, wgmma=True) for c in [
    (128, 256, 64, 2, 1, 4), (128, 256, 64, 2, 1, 3), (256, 128, 64, 2, 1, 4), (256, 128, 64, 4, 1, 4),
    (128, 128, 64, 2, 1, 4), (128, 128, 64, 2, 1, 6)]] + [
    GemmConfig(128, 256, 64, 2, 1, 4, wgmma=True, persistent=True)]
SMALL_TILES = [(16, 64, 64, 1, 2, 4), (16, 128, 64, 1, 4, 4), (32, 64, 64, 1, 2, 4), (32, 128, 64, 1, 4, 3),
               (64, 64, 64, 2, 2, 4)]
SPLITS = [1, 2, 4, 8, 16, 0]
# the decode shapes of a Llama-8B layer: N × K
SHAPES = [(4096, 4096), (28672, 4096), (4096, 14336)]


def to_tt(dev, torch, t, dtype):
    """A device tensor holding a torch tensor's values (bf16 through its bits)."""
    if dtype == tt.bf16:
        return dev.tensor(t.cpu().view(torch.int16).numpy().view(np.uint16), tt.bf16)
    return dev.tensor(t.cpu().numpy(), dtype)


def rel_err(out, ref) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def sweep(dev, torch, size: int, configs: list[GemmConfig]) -> None:
    flops = 2 * size**3
    print(f"\n## {size}³, x and W 16-bit, y in their type, on {dev.name}\n")
    print("| dtype | tile BM×BN×BK, warps, stages | smem | time | TFLOP/s | torch TFLOP/s | ratio | "
          "rel. error (f32 ref) |")
    print("|---|---|---|---|---|---|---|---|")
    for dt, tdt in ((tt.f16, torch.float16), (tt.bf16, torch.bfloat16)):
        a = torch.randn(size, size, device="cuda", dtype=tdt)
        b = torch.randn(size, size, device="cuda", dtype=tdt)
        ref = (a.float() @ b.float().T).cpu().numpy()
        x, w = to_tt(dev, torch, a, dt), to_tt(dev, torch, b, dt)
        out = dev.empty((size, size), dt)
        tms = torch_ms(torch, lambda: a @ b.T)
        for cfg in configs:
            ms = device_ms(dev, lambda: gemm(x, w, out, config=cfg), reps=20)
            got = out.numpy()
            got = tt.from_bf16_bits(got) if dt == tt.bf16 else got.astype(np.float32)
            kind = (" warpgroups" if cfg.wgmma else "") + (", persistent" if cfg.persistent else "")
            print(f"| {dt} | {cfg.bm}×{cfg.bn}×{cfg.bk}, {cfg.wm}×{cfg.wn}{kind}, {cfg.stages} | "
                  f"{cfg.shared_bytes() // 1024} KB | {ms:.3f} ms | {flops / ms / 1e9:.0f} | "
                  f"{flops / tms / 1e9:.0f} | {tms / ms:.3f} | {rel_err(got, ref):.1e} |", flush=True)
        tms = torch_ms(torch, lambda: a @ b.T)  # cuBLAS again, after: the clocks may have moved
        print(f"| {dt} | torch.matmul after the sweep | | {tms:.3f} ms | {flops / tms / 1e9:.0f} | | | |",
              flush=True)


def small_m(dev, torch, ms_list: list[int]) -> None:
    n = k = 4096
    print(f"\n## small M: f32 x (3 bf16 parts), bf16 W, N = K = {k}, y f32, on {dev.name}\n")
    print("| M | tile BM×BN×BK, warps, stages | W once per step | " + " | ".join(
        f"splits {s or 'auto'}" for s in SPLITS) + " | torch bf16 |")
    print("|---|---|---|" + "---|" * (len(SPLITS) + 1))
    rng = np.random.default_rng(0)
    wf = rng.standard_normal((n, k), dtype=np.float32) * 0.02
    wt = torch.from_numpy(wf).cuda().bfloat16()
    w = to_tt(dev, torch, wt, tt.bf16)
    wref = wt.float().cpu().numpy().astype(np.float64)
    for m in ms_list:
        xf = rng.standard_normal((m, k), dtype=np.float32)
        x = dev.tensor(xf)
        out = dev.empty((m, n), tt.f32)
        ref = xf.astype(np.float64) @ wref.T
        xt = torch.from_numpy(xf).cuda().bfloat16()
        tms = torch_ms(torch, lambda: xt @ wt.T)
        for tile in SMALL_TILES:
            for fuse in (True, False):
                cells = []
                for sp in SPLITS:
                    cfg = GemmConfig(*tile, fuse_parts=fuse, splits=sp)
                    ms = device_ms(dev, lambda: gemm(x, w, out, config=cfg))
                    err = rel_err(out.numpy(), ref)
                    cells.append(f"{ms * 1e3:.0f} µs" + (f" (err {err:.0e})" if err > 1e-6 else ""))
                print(f"| {m} | {tile[0]}×{tile[1]}×{tile[2]}, {tile[3]}×{tile[4]}, {tile[5]} | {fuse} | "
                      + " | ".join(cells) + f" | {tms * 1e3:.0f} µs |", flush=True)


def model_path(dev, torch, ms_list: list[int]) -> None:
    print(f"\n## linear(): f32 activations, bf16 weights, on {dev.name}\n")
    print("| N × K | M | linear() | tensor cores (other tiles) | GEMV (M ≤ 16) | torch bf16 (16-bit x) | "
          "ratio | rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n, k in SHAPES:
        wf = rng.standard_normal((n, k), dtype=np.float32) * 0.02
        w = Weight.from_array(dev, wf, "bf16")
        wt = torch.from_numpy(wf).cuda().bfloat16()
        wref = wt.float().cpu().numpy().astype(np.float64)
        for m in ms_list:
            xf = rng.standard_normal((m, k), dtype=np.float32)
            x = dev.tensor(xf)
            out = dev.empty((m, n), tt.f32)
            ms = device_ms(dev, lambda: linear(x, w, out=out))
            err = rel_err(out.numpy(), xf.astype(np.float64) @ wref.T)
            mma = gemv = ""
            if m <= 256:
                mma_out = dev.empty((m, n), tt.f32)
                mma = f"{device_ms(dev, lambda: gemm(x, w.data, mma_out)) * 1e3:.1f} µs"
                if m >= 64:  # the other tile shape, to set SMALL_M
                    other = CUDA_CONFIG if m <= SMALL_M else CUDA_SMALL_M_CONFIG
                    ms_other = device_ms(dev, lambda: gemm(x, w.data, mma_out, config=other))
                    mma += f" ({other.bm}×{other.bn}: {ms_other * 1e3:.1f} µs)"
            elif default_config(dev, m).wgmma:  # linear() took the warpgroups: mma.sync next to it
                mma_out = dev.empty((m, n), tt.f32)
                ms_other = device_ms(dev, lambda: gemm(x, w.data, mma_out, config=CUDA_CONFIG))
                mma = f"mma.sync {CUDA_CONFIG.bm}×{CUDA_CONFIG.bn}: {ms_other * 1e3:.1f} µs"
            if m <= 16:
                gemv_out = dev.empty((m, n), tt.f32)
                gemv = f"{device_ms(dev, lambda: _gemv(x, w, gemv_out)) * 1e3:.1f} µs"
            xt = torch.from_numpy(xf).cuda().bfloat16()
            tms = torch_ms(torch, lambda: xt @ wt.T)
            print(f"| {n}×{k} | {m} | {ms * 1e3:.1f} µs | {mma} | {gemv} | {tms * 1e3:.1f} µs | "
                  f"{tms / ms:.2f} | {err:.1e} |", flush=True)


def _gemv(x, w, out):
    """The GEMV kernel at M ≤ 16, whatever linear() would pick."""
    from tattletale.kernels import matmul

    saved = matmul.MMA_MIN_ROWS, matmul.MAX_GEMV_ROWS
    matmul.MMA_MIN_ROWS, matmul.MAX_GEMV_ROWS = 1 << 30, 16
    try:
        return linear(x, w, out=out)
    finally:
        matmul.MMA_MIN_ROWS, matmul.MAX_GEMV_ROWS = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the default tiles only")
    ap.add_argument("--small-only", action="store_true", help="parts 2 and 3 alone")
    ap.add_argument("--sweep-only", action="store_true", help="part 1 alone")
    ap.add_argument("--model-ms", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
                    help="part 3's row counts")
    ap.add_argument("--tiles", choices=["mma", "wgmma", "all"], help="part 1's kernels (default: "
                    "wgmma where the device has it, with the mma.sync default next to it)")
    args = ap.parse_args()
    torch = torch_cuda()
    if torch is None:
        raise SystemExit("needs CUDA and torch")
    dev = tt.device("cuda")
    print(header(f"tensor-core GEMM sweep, {dev.name}, torch {torch.__version__}"))
    if not args.small_only:
        tiles = args.tiles or ("wgmma" if native_wgmma("cuda", dev.caps) else "mma")
        mma = CONFIGS if tiles in ("mma", "all") else [CUDA_CONFIG]
        wgmma = WGMMA_CONFIGS if tiles in ("wgmma", "all") and native_wgmma("cuda", dev.caps) else []
        sweep(dev, torch, 4096, [default_config(dev, 4096)] if args.quick else wgmma + mma)
    if args.sweep_only:
        return
    if not args.quick:
        small_m(dev, torch, [16, 32, 64])
    else:
        print(f"\nsmall-M default: {CUDA_SMALL_M_CONFIG}")
    model_path(dev, torch, args.model_ms)


if __name__ == "__main__":
    main()
