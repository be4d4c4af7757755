"""Kernel library benchmark: GEMV at decode shapes, GEMM at 4096³, decode attention at 4K/32K.

GEMV bandwidth counts the weight bytes as stored (quantized bytes and f16 scales for Q4_1/Q8_0)
over the device time per launch, next to the device's copy bandwidth measured in the same run
(cuMemcpyDtoD on CUDA; numpy's f32 GEMV time-for-bytes on a CPU device) and torch's matmul on
CUDA. GEMV launches run back to back between two events, cycling over copies of the weight larger
together than the L2 cache (stream_ms, rotated), for torch too. GEMM is compared with
torch.matmul (cuBLAS) on the same shapes and 16-bit types, in the same process. Decode attention
bandwidth counts the K and V bytes read.

    python benchmarks/bench_kernels.py [--backend cuda] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import device_ms, header, host_ms, pick_devices, torch_cuda

import tattletale as tt
from tattletale.kernels.attention import decode_attention
from tattletale.kernels.gemm import gemm
from tattletale.kernels.matmul import linear
from tattletale.kernels.quant import Weight

GEMV_SHAPES = [(14336, 4096), (4096, 14336), (49152, 576)]  # (N, K): W is N×K


def copy_bandwidth(dev, nbytes: int) -> tuple[str, float]:
    """The device's copy bandwidth in GB/s (bytes read + written)."""
    if dev.backend == "cuda":
        from cuda.bindings import driver

        a, b = dev.empty(nbytes // 4, tt.f32), dev.empty(nbytes // 4, tt.f32)
        ms = device_ms(dev, lambda: driver.cuMemcpyDtoDAsync(b.alloc.handle, a.alloc.handle, nbytes,
                                                             dev.stream))
        return "cuMemcpyDtoD", 2 * nbytes / ms / 1e6
    a = np.random.rand(nbytes // 4).astype(np.float32)
    b = np.empty_like(a)
    return "numpy copy", 2 * nbytes / host_ms(lambda: np.copyto(b, a)) / 1e6


L2_BYTES = 64 << 20  # at least the last-level cache of the GPUs measured (H200: 60 MB)


def rotated(dev, w: Weight, min_bytes: int = 4 * L2_BYTES) -> list[Weight]:
    """w and copies of it, together at least min_bytes, so that timing loops which cycle over
    them read device memory rather than the cache."""
    out = [w]
    arrays = [(t.numpy(), t.dtype) if t is not None else None for t in (w.data, w.scales, w.mins)]
    while len(out) * w.nbytes < min_bytes:
        t = [dev.tensor(a, dtype=dt) if a is not None else None for a, dt in
             (x if x is not None else (None, None) for x in arrays)]
        out.append(Weight(w.fmt, w.shape, t[0], t[1], t[2]))
    return out


def stream_ms(dev, fn, items: list, launches: int = 40, reps: int = 5) -> float:
    """Device time per call of fn(item), over `launches` calls run back to back between two events
    (cycling over items), median of `reps` such runs after 20 ms of the same launches (clocks up):
    the launches queue up behind each other as in a recorded decode step, so host-side launch
    cost stays out of the number."""
    warm = 0.0  # until the clocks have risen: 20 ms of launches
    for _ in range(50):
        start = dev.event()
        for i in range(launches):
            fn(items[i % len(items)])
        warm += start.elapsed_ms(dev.event())
        if warm > 20:
            break
    times = []
    for _ in range(reps):
        start = dev.event()
        for i in range(launches):
            fn(items[i % len(items)])
        end = dev.event()
        times.append(start.elapsed_ms(end) / launches)
    return float(np.median(times))


def torch_stream_ms(torch, fn, items: list, launches: int = 40, reps: int = 5) -> float:
    """stream_ms for torch on its current stream."""

    def batch_ms() -> float:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for i in range(launches):
            fn(items[i % len(items)])
        e.record()
        e.synchronize()
        return s.elapsed_time(e)

    warm = 0.0
    for _ in range(50):
        warm += batch_ms()
        if warm > 20:
            break
    return float(np.median([batch_ms() / launches for _ in range(reps)]))


def torch_gemv_ms(torch, n: int, k: int, fmt: str, copies: int) -> float:
    """torch's x @ W.T for one f16/bf16 row over `copies` rotated N×K weights, per launch (ms)."""
    dt = torch.float16 if fmt == "f16" else torch.bfloat16
    tws = [torch.randn(n, k, device="cuda", dtype=dt) for _ in range(copies)]
    tx = torch.randn(1, k, device="cuda", dtype=dt)
    return torch_stream_ms(torch, lambda tw: tx @ tw.T, tws)


def random_weight(dev, n: int, k: int, fmt: str, rng) -> Weight:
    """A random weight of the given format, built on the host without quantizing (fast)."""
    if fmt in ("f32", "f16", "bf16"):
        w = rng.standard_normal((n, k), dtype=np.float32) * 0.02
        return Weight.from_array(dev, w, fmt)
    words = rng.integers(0, 2**32, (n, k // (4 if fmt == "q8_0" else 8)), dtype=np.uint32)
    scales = (rng.random((n, k // 32), dtype=np.float32) * 0.01).astype(np.float16)
    mins = dev.tensor(-scales * 8) if fmt == "q4_1" else None
    return Weight(fmt, (n, k), dev.tensor(words), dev.tensor(scales), mins)


def bench_gemv(dev, rng, quick: bool) -> list[str]:
    rows = []
    name, copy_bw = copy_bandwidth(dev, 1 << 30 if dev.backend == "cuda" else 1 << 27)
    rows.append(f"| {dev.backend} | copy bandwidth ({name}) | | {copy_bw:.0f} GB/s | | |")
    torch = torch_cuda() if dev.backend == "cuda" else None
    cases = [(n, k, f) for n, k in (GEMV_SHAPES[:1] if quick else GEMV_SHAPES)
             for f in ("f16", "bf16", "q4_1", "q8_0", "f32")]
    if not quick:
        cases += [(128256, 4096, f) for f in ("bf16", "q4_1", "q8_0")]  # Llama-3 8B lm_head
    for n, k, fmt in cases:
        x = dev.tensor(rng.standard_normal((1, k), dtype=np.float32))
        out = dev.empty((1, n), tt.f32)
        ws = rotated(dev, random_weight(dev, n, k, fmt, rng)) if dev.backend == "cuda" else \
            [random_weight(dev, n, k, fmt, rng)]
        ms = stream_ms(dev, lambda w: linear(x, w, out=out), ws)
        bw = ws[0].nbytes / ms / 1e6
        peer = ""
        if torch is not None and fmt in ("f16", "bf16"):
            tms = torch_gemv_ms(torch, n, k, fmt, len(ws))
            peer = f"torch {ws[0].nbytes / tms / 1e6:.0f} GB/s ({ws[0].nbytes / tms / 1e6 / copy_bw:.0%})"
        elif dev.backend != "cuda" and fmt == "f32":
            wn = rng.standard_normal((n, k), dtype=np.float32)
            xn = rng.standard_normal(k, dtype=np.float32)
            nms = host_ms(lambda: wn @ xn)
            peer = f"numpy f32 {wn.nbytes / nms / 1e6:.1f} GB/s"
        del ws
        rows.append(f"| {dev.backend} | GEMV M=1 {fmt} | N={n} K={k} | {ms * 1e3:.1f} µs | "
                    f"{bw:.0f} GB/s ({bw / copy_bw:.0%} of copy) | {peer} |")
    return rows


def torch_ms(torch, fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return float(np.median(times))


def bench_gemm(dev, rng, quick: bool) -> list[str]:
    """x @ W.T at 4096³ on CUDA (1024³ elsewhere): 16-bit x, W and y as torch.matmul (cuBLAS) takes
    and returns them, timed in the same process; then linear() with f32 activations and output,
    the models' path (x split into 16-bit parts on devices with matrix units)."""
    size = 1024 if quick or dev.backend != "cuda" else 4096
    flops = 2 * size**3
    x32 = dev.tensor(rng.standard_normal((size, size), dtype=np.float32))
    out32 = dev.empty((size, size), tt.f32)
    rows = []
    torch = torch_cuda() if dev.backend == "cuda" else None
    for fmt in ("f16", "bf16"):
        dt = tt.f16 if fmt == "f16" else tt.bf16
        w = random_weight(dev, size, size, fmt, rng)
        xv = rng.standard_normal((size, size), dtype=np.float32)
        x16 = dev.tensor(xv.astype(np.float16)) if fmt == "f16" else dev.tensor(tt.to_bf16_bits(xv), dt)
        out16 = dev.empty((size, size), dt)
        ms = device_ms(dev, lambda w=w: gemm(x16, w.data, out16), reps=10)
        peer = ""
        if torch is not None:
            tdt = torch.float16 if fmt == "f16" else torch.bfloat16
            a = torch.randn(size, size, device="cuda", dtype=tdt)
            b = torch.randn(size, size, device="cuda", dtype=tdt)
            tms = torch_ms(torch, lambda: a @ b.T)
            peer = f"torch.matmul {flops / tms / 1e9:.0f} TFLOP/s → ratio {tms / ms:.2f}"
        rows.append(f"| {dev.backend} | GEMM {fmt} x, W and y ({dev.name}) | {size}³ | {ms:.3f} ms | "
                    f"{flops / ms / 1e9:.3g} TFLOP/s | {peer} |")
        ms = device_ms(dev, lambda w=w: linear(x32, w, out=out32), reps=5)
        rows.append(f"| {dev.backend} | linear() {fmt} W, f32 x and y | {size}³ | {ms:.3f} ms | "
                    f"{flops / ms / 1e9:.3g} TFLOP/s | |")
    return rows


def bench_attention(dev, rng, quick: bool) -> list[str]:
    rows = []
    n_heads, n_kv, d = 32, 8, 128
    for length in (4096,) if quick else (4096, 32768):
        for dtype, npdt in ((tt.f16, np.float16), (tt.f32, np.float32)):
            q = dev.tensor(rng.standard_normal((1, n_heads, d), dtype=np.float32))
            k = dev.tensor(rng.standard_normal((1, length, n_kv, d), dtype=np.float32).astype(npdt))
            v = dev.tensor(rng.standard_normal((1, length, n_kv, d), dtype=np.float32).astype(npdt))
            lengths = dev.tensor(np.array([length], np.int32))
            out = dev.empty((1, n_heads, d), tt.f32)
            ms = device_ms(dev, lambda: decode_attention(q, k, v, lengths, n_kv, out=out))
            kv_bytes = 2 * length * n_kv * d * dtype.itemsize
            rows.append(f"| {dev.backend} | decode attention {dtype} KV, H=32 KV=8 D=128 | "
                        f"{length} tokens | {ms * 1e3:.0f} µs | {kv_bytes / ms / 1e6:.0f} GB/s | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", nargs="*")
    ap.add_argument("--quick", action="store_true", help="smaller sweep")
    ap.add_argument("--only", nargs="*", choices=["gemv", "attention", "gemm"], help="some sections")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(header("kernel library"))
    print("| backend | what | shape | time | achieved | peer (same run) |")
    print("|---|---|---|---|---|---|")
    for dev in pick_devices(args.backend):
        print(f"<!-- {dev} -->", flush=True)
        sections = {"gemv": bench_gemv, "attention": bench_attention, "gemm": bench_gemm}
        for name, bench in sections.items():
            if not args.only or name in args.only:
                print("\n".join(bench(dev, rng, args.quick)), flush=True)


if __name__ == "__main__":
    main()
