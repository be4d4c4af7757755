"""DSL core benchmark: launch overhead and memory bandwidth per backend, next to the peer.

For each available backend (or those named with --backend):
  * launch overhead of an almost empty kernel: single launches (host time per launch, queue kept
    busy, synchronized at the end) and inside a replayed recording (CUDA graph / launch list);
  * bandwidth of a vectorized copy kernel and of saxpy over a large array, device-timed with events,
    as a fraction of the peer: the driver's device-to-device copy (cuMemcpyDtoD) on CUDA, the CUDA
    copy kernel of the same run for other backends on the same GPU, numpy's copy / saxpy on a CPU.
Prints device, backend, dtype, shapes and date; medians over repetitions.

    python benchmarks/bench_core.py [--backend cuda opencl] [--mib 256]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import numpy as np
from common import device_ms

import tattletale as tt


@tt.kernel
def empty(x: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        x[i] = 1.0


@tt.kernel
def copy4(src: tt.Buffer[tt.f32], dst: tt.Buffer[tt.f32], n4: tt.i32):
    i = tt.global_id(0)
    if i < n4:
        tt.vstore(dst, i, tt.vload(src, i, 4))


@tt.kernel
def saxpy4(a: tt.f32, x: tt.Buffer[tt.f32], y: tt.Buffer[tt.f32], n4: tt.i32):
    i = tt.global_id(0)
    if i < n4:
        xv = tt.vload(x, i, 4)
        yv = tt.vload(y, i, 4)
        tt.vstore(y, i, tt.vec(a * xv.x + yv.x, a * xv.y + yv.y, a * xv.z + yv.z, a * xv.w + yv.w))


def launch_overhead(dev, n_launch: int) -> tuple[float, float]:
    x = dev.tensor(np.random.rand(256).astype(np.float32))
    for _ in range(10):
        empty[1, 64](x, 1)
    dev.synchronize()
    singles = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n_launch):
            empty[1, 64](x, 1)
        dev.synchronize()
        singles.append((time.perf_counter() - t0) / n_launch * 1e6)
    with dev.record() as rec:
        for _ in range(n_launch):
            empty[1, 64](x, 1)
    rec.replay()
    dev.synchronize()
    replays = []
    for _ in range(5):
        t0 = time.perf_counter()
        rec.replay()
        dev.synchronize()
        replays.append((time.perf_counter() - t0) / n_launch * 1e6)
    return statistics.median(singles), statistics.median(replays)


def numpy_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gbs(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def bench(dev, mib: int, reps: int, n_launch: int, cuda_copy_gbs: float | None) -> tuple[list[str], float]:
    """Rows of the table for one device, and its copy-kernel bandwidth."""
    n = mib * (1 << 20) // 4
    n4 = n // 4
    block = 256
    grid = (n4 + block - 1) // block
    rng = np.random.default_rng(0)
    src_host = rng.random(n, dtype=np.float32)
    src = dev.tensor(src_host)
    dst = dev.empty(n, tt.f32)
    y = dev.tensor(rng.random(n, dtype=np.float32))

    copy_ms = device_ms(dev, lambda: copy4[grid, block](src, dst, n4), reps)
    ok = np.array_equal(dst.numpy(), src_host)
    saxpy_ms = device_ms(dev, lambda: saxpy4[grid, block](2.0, src, y, n4), reps)
    single_us, replay_us = launch_overhead(dev, n_launch)
    copy_bw, saxpy_bw = gbs(2 * n * 4, copy_ms), gbs(3 * n * 4, saxpy_ms)

    if dev.backend == "cuda":
        from cuda.bindings import driver

        def dtod():
            driver.cuMemcpyDtoDAsync(dst.alloc.handle, src.alloc.handle, n * 4, dev.stream)

        peer_name, peer_bw = "cuMemcpyDtoD", gbs(2 * n * 4, device_ms(dev, dtod, reps))
        saxpy_peer = peer_bw
    elif getattr(dev, "is_gpu", False) and cuda_copy_gbs:
        peer_name, peer_bw, saxpy_peer = "CUDA copy kernel", cuda_copy_gbs, cuda_copy_gbs
    else:
        a, b = src_host, np.empty_like(src_host)
        yh = rng.random(n, dtype=np.float32)
        peer_name = "numpy"
        peer_bw = gbs(2 * n * 4, numpy_ms(lambda: np.copyto(b, a), reps))
        saxpy_peer = gbs(3 * n * 4, numpy_ms(lambda: np.add(yh, np.float32(2.0) * a, out=yh), reps))

    name = f"{dev.backend} | {dev.name}"
    rows = [
        f"| {name} | launch, single | {single_us:.2f} µs | | |",
        f"| {name} | launch, replayed (x{n_launch}) | {replay_us:.2f} µs | | |",
        f"| {name} | copy f32x4, {mib} MiB | {copy_bw:.0f} GB/s | {peer_name} copy {peer_bw:.0f} GB/s "
        f"| {copy_bw / peer_bw:.2f} |" + ("" if ok else " **WRONG RESULT**"),
        f"| {name} | saxpy f32x4, {mib} MiB | {saxpy_bw:.0f} GB/s | {peer_name} "
        f"{'saxpy' if peer_name == 'numpy' else 'copy'} {saxpy_peer:.0f} GB/s "
        f"| {saxpy_bw / saxpy_peer:.2f} |",
    ]
    return rows, copy_bw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", nargs="*", help="backends to run (default: every available one)")
    ap.add_argument("--mib", type=int, default=256, help="array size in MiB")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--launches", type=int, default=1000)
    args = ap.parse_args()
    seen = set()
    targets = []
    for backend, index, _ in tt.devices():
        if backend in seen or (args.backend and backend not in args.backend):
            continue
        seen.add(backend)
        targets.append(tt.device(backend, index))
    print(f"# tattletale {tt.__version__} core benchmark, {datetime.date.today()}, "
          f"dtype f32, {args.mib} MiB arrays, median of {args.reps}")
    print("| backend | device | what | tattletale | peer | ratio |")
    print("|---|---|---|---|---|---|")
    cuda_copy = None
    for dev in targets:
        rows, copy_bw = bench(dev, args.mib, args.reps, args.launches, cuda_copy)
        if dev.backend == "cuda":
            cuda_copy = copy_bw
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
