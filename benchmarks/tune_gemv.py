"""GEMV tuning sweep: device time of gemv_kernel per (shape, format, setting), to choose the
defaults of tattletale/kernels/matmul.py (gemv_lanes, gemv_unroll, gemv_rows, GEMV_BLOCK, the block
formats' decoder).

Times are per launch, over launches run back to back (bench_kernels.stream_ms), rotating over
enough copies of the weight that it cannot stay in the L2 cache; bandwidth counts the weight bytes
as stored. `--check` first compares every setting it will time with a float64 reference on fresh
random data (outputs poisoned with NaN). `--baseline FILE` times, next to ours, the `linear(x, w,
out, rows=None)` of a Python file (e.g. an earlier revision's GEMV) at the same shapes.

`--xs` times x staged in shared memory (gemv_kernel's XS, chunks padded by 1 or 4 floats;
blocks of 64 and 128 threads) against XS = 0 at M = 1 and 4, after checking each setting.

    python benchmarks/tune_gemv.py [--check] [--sweep] [--rows] [--xs] [--baseline FILE] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bench_kernels import GEMV_SHAPES, copy_bandwidth, random_weight, rotated, stream_ms, torch_gemv_ms
from common import header, torch_cuda

import tattletale as tt
from tattletale.kernels import matmul
from tattletale.kernels.matmul import linear
from tattletale.kernels.quant import Weight

FMTS = ("bf16", "f16", "q4_1", "q8_0", "f32")


def settings(fmt: str, k: int) -> list[dict]:
    """The settings timed besides the defaults, for one format and row length: lanes, unroll,
    rows, and for the block formats the decoder and the double buffering (pipe). The second
    H200 run of 2026-11-22; the first one's wider grid (unroll 1-8, rows 1-8, lanes 4-32, the
    three decoders, blocks of 64-256 threads) chose the defaults of the 16-bit formats."""
    quant = fmt in ("q4_0", "q4_1", "q8_0")
    nc = k // (4 if fmt == "f32" else (8 if fmt in ("f16", "bf16") else 32))
    if not quant:
        return []
    if nc < 64:
        d = "int" if fmt == "q8_0" else "f16"
        grid = [(4, 2, 2, d, False), (4, 2, 2, d, True), (4, 1, 2, d, True), (4, 1, 4, d, True),
                (4, 2, 2, "magic", True)]
    elif fmt == "q8_0":
        grid = [(32, 1, 8, "int", False), (32, 2, 4, "int", False), (32, 2, 4, "int", True),
                (32, 1, 4, "int", True), (32, 1, 8, "int", True), (32, 2, 4, "magic", True)]
    else:
        grid = [(32, 1, 4, "magic", False), (32, 2, 4, "f16", False), (32, 2, 4, "f16", True),
                (32, 1, 4, "f16", True), (32, 2, 4, "magic", True), (32, 1, 4, "magic", True)]
    return [dict(lanes=la, unroll=u, rows=r, dec=d, pipe=p) for la, u, r, d, p in grid]


def label(s: dict) -> str:
    parts = [f"{k[0]}{v}" for k, v in s.items() if k not in ("block", "pipe")]
    return "/".join(parts + (["pipe"] if s.get("pipe") else []) +
                    ([f"B{s['block']}"] if "block" in s else []))


def precompile(dev, calls) -> None:
    """Build every gemv_kernel specialization the calls launch, NVRTC runs in parallel (CUDA)."""
    if dev.backend != "cuda":
        return
    from tattletale.codegen import render
    from tattletale.runtimes.cuda import nvrtc_compile

    captured = []

    class Capture:
        def __getitem__(self, config):
            return lambda *args: captured.append(args)

    real = matmul.gemv_kernel
    matmul.gemv_kernel = Capture()
    try:
        for fn in calls:
            fn()
    finally:
        matmul.gemv_kernel = real
    from tattletale.runtimes import cache
    from tattletale.runtimes.cuda import nvrtc_version

    todo = {}
    for args in captured:
        key = real.spec_key(args)
        if (dev, key) not in real.compiled and key not in todo:
            gen = render("cuda", real.lower(key, dev.caps.subgroup_size), dev.caps)
            ckey = cache.make_key("cuda", gen.text, dev.caps.arch, nvrtc_version(), "-lineinfo")
            if cache.load(ckey) is None:
                todo[key] = (gen, ckey)
    with ThreadPoolExecutor(16) as pool:
        cubins = list(pool.map(lambda g: nvrtc_compile(g[0], dev.caps.arch), todo.values()))
    for (_, ckey), cubin in zip(todo.values(), cubins):
        cache.store(ckey, cubin)
    print(f"# precompiled {len(todo)} specializations", flush=True)


def check(dev, rng, fmt_settings: dict[str, list[dict]]) -> float:
    """Largest relative error over formats × settings × small shapes (fresh data per case)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_kernels import reference_weight, rel_err

    cases = []
    for fmt, sets in fmt_settings.items():
        for m, n, k in ((1, 1536, 576), (3, 200, 1536), (1, 300, 14336), (2, 77, 4096)):
            w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
            weight = Weight.from_array(dev, w, fmt)
            ref64 = reference_weight(w, fmt)
            for s in [{}] + (sets if m != 2 else []):
                x = rng.standard_normal((m, k)).astype(np.float32)
                cases.append((fmt, m, n, k, s, dev.tensor(x), weight, x.astype(np.float64) @ ref64.T))
    precompile(dev, [lambda c=c: linear(c[5], c[6], out=dev.empty((c[1], c[2]), tt.f32), **c[4])
                     for c in cases])
    worst = 0.0
    for fmt, m, n, k, s, x, weight, ref in cases:
        out = dev.full((m, n), float("nan"), tt.f32)
        linear(x, weight, out=out, **s)
        err = rel_err(out.numpy(), ref)
        if not err < 1e-5:
            print(f"FAIL {fmt} m={m} n={n} k={k} {s}: {err:.2e}", flush=True)
        worst = max(worst, err if err == err else math.inf)
    return worst


XS_SETTINGS = {"xs0": dict(xs=0), "xs1": dict(xs=1), "xs4": dict(xs=4),
               "xs1/B128": dict(xs=1, block=128), "xs0/B128": dict(xs=0, block=128)}


def xs_sweep(dev, rng, fmts, copy_bw, res: dict) -> None:
    """XS_SETTINGS at the GEMV shapes, M = 1 and 4: checked against float64 at small N, then timed
    (µs per launch and % of copy bandwidth)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_kernels import reference_weight, rel_err

    calls, cases = [], []
    for _, k in GEMV_SHAPES:
        for f in fmts:
            w = (rng.standard_normal((37, k)) / math.sqrt(k)).astype(np.float32)
            weight = Weight.from_array(dev, w, f)
            for m in (1, 3, 4):
                x = rng.standard_normal((m, k)).astype(np.float32)
                ref = x.astype(np.float64) @ reference_weight(w, f).T
                for s in XS_SETTINGS.values():
                    cases.append((dev.tensor(x), weight, ref, s, m))
                    calls.append(lambda c=cases[-1]: linear(c[0], c[1], out=dev.empty((c[4], 37), tt.f32),
                                                            **c[3]))
    precompile(dev, calls)
    worst = 0.0
    for x, weight, ref, s, m in cases:
        out = dev.full((m, 37), float("nan"), tt.f32)
        linear(x, weight, out=out, **s)
        err = rel_err(out.numpy(), ref)
        if not err < 1e-5:
            print(f"FAIL {weight.fmt} {weight.shape} m={m} {s}: {err}", flush=True)
        worst = max(worst, err if err == err else math.inf)
    print(f"xs check: largest relative error {worst:.2e}", flush=True)
    res["check_max_rel_err"] = worst
    print("| shape | format | M | " + " | ".join(XS_SETTINGS) + " |")
    print("|---|---|---|" + "---|" * len(XS_SETTINGS))
    for n, k in GEMV_SHAPES:
        for f in fmts:
            ws = rotated(dev, random_weight(dev, n, k, f, rng))
            nb = ws[0].nbytes
            for m in (1, 4):
                x = dev.tensor(rng.standard_normal((m, k), dtype=np.float32))
                out = dev.empty((m, n), tt.f32)
                cells = {}
                for name, s in XS_SETTINGS.items():
                    ms = stream_ms(dev, lambda w, s=s: linear(x, w, out=out, **s), ws)
                    cells[name] = (ms * 1e3, nb / ms / 1e6 / copy_bw)
                res[f"{n}x{k}/{f}/m{m}"] = cells
                print(f"| {n}×{k} | {f} | {m} | " +
                      " | ".join(f"{us:.1f} {fr:.0%}" for us, fr in cells.values()) + " |", flush=True)
            del ws


def load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("gemv_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--rows", action="store_true", help="M = 1, 2, 4 with the defaults")
    ap.add_argument("--xs", action="store_true", help="x staged in shared memory, M = 1 and 4")
    ap.add_argument("--fmts", nargs="*", default=list(FMTS))
    ap.add_argument("--baseline")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = tt.device()
    rng = np.random.default_rng(0)
    results: dict = {"device": str(dev)}
    base = load_baseline(args.baseline) if args.baseline else None
    print(header(f"GEMV sweep on {dev}"), flush=True)
    name, copy_bw = copy_bandwidth(dev, 1 << 30)
    results["copy_gbs"] = copy_bw
    print(f"copy ({name}): {copy_bw:.0f} GB/s", flush=True)

    shape_sets = {(n, k): {f: settings(f, k) for f in args.fmts} for n, k in GEMV_SHAPES}
    if args.sweep:
        xs = {k: dev.tensor(rng.standard_normal((1, k), dtype=np.float32)) for _, k in GEMV_SHAPES}
        small = [Weight.from_array(dev, rng.standard_normal((64, k), dtype=np.float32), f)
                 for _, k in GEMV_SHAPES for f in args.fmts]
        calls = []
        for (_, k), sets in shape_sets.items():
            for f, ss in sets.items():
                w = next(s for s in small if s.fmt == f and s.shape[1] == k)
                for s in ss:
                    calls.append(lambda w=w, s=s, k=k: linear(xs[k], w, out=dev.empty((1, 64), tt.f32), **s))
        precompile(dev, calls)
    if args.check:
        merged: dict[str, list[dict]] = {}
        for sets in shape_sets.values():
            for f, ss in sets.items():
                merged.setdefault(f, []).extend(s for s in ss if s not in merged.get(f, []))
        if not args.sweep:
            merged = {f: [] for f in args.fmts}
        worst = check(dev, rng, merged)
        print(f"check: largest relative error {worst:.2e} ({'ok' if worst < 1e-5 else 'FAILED'})",
              flush=True)
        results["check_max_rel_err"] = worst
    torch = torch_cuda() if dev.backend == "cuda" else None
    sweep = results.setdefault("sweep", {})
    if args.sweep:
        print("| shape | format | default | best settings (µs, % of copy) | baseline | torch |")
        print("|---|---|---|---|---|---|")
        for (n, k), sets in shape_sets.items():
            x = dev.tensor(rng.standard_normal((1, k), dtype=np.float32))
            out = dev.empty((1, n), tt.f32)
            for f, ss in sets.items():
                ws = rotated(dev, random_weight(dev, n, k, f, rng))
                nb = ws[0].nbytes

                def t(fn):
                    ms = stream_ms(dev, fn, ws)
                    return ms * 1e3, nb / ms / 1e6 / copy_bw

                cells = {}
                for s in ss:
                    cells[label(s)] = t(lambda w, s=s: linear(x, w, out=out, **s))
                best = sorted(cells.items(), key=lambda c: c[1][0])
                d_us, d_frac = t(lambda w: linear(x, w, out=out))
                cells["default"] = (d_us, d_frac)
                b = ""
                if base is not None:
                    b_us, b_frac = t(lambda w: base(x, w, out))
                    cells["baseline"] = (b_us, b_frac)
                    b = f"{b_us:.1f} µs {b_frac:.0%}"
                p = ""
                if torch is not None and f in ("f16", "bf16"):
                    tms = torch_gemv_ms(torch, n, k, f, len(ws))
                    cells["torch"] = (tms * 1e3, nb / tms / 1e6 / copy_bw)
                    p = f"{tms * 1e3:.1f} µs {nb / tms / 1e6 / copy_bw:.0%}"
                sweep[f"{n}x{k}/{f}"] = cells
                shown = ", ".join(f"{kk} {v[0]:.1f} {v[1]:.0%}" for kk, v in best[:4])
                print(f"| {n}×{k} | {f} | {d_us:.1f} µs {d_frac:.0%} | {shown} | {b} | {p} |",
                      flush=True)
                del ws
    if args.rows:
        rows_res = results.setdefault("rows", {})
        print("| shape | format | M | default µs (GB/s) | rows=1 | rows=2 | rows=4 | baseline |")
        print("|---|---|---|---|---|---|---|---|")
        shapes = ((4096, 4096), (28672, 4096), (4096, 14336))
        calls = []
        for n, k in shapes:
            for f in ("bf16", "q4_1"):
                w = Weight.from_array(dev, rng.standard_normal((64, k), dtype=np.float32), f)
                for m in (1, 2, 4):
                    x = dev.empty((m, k), tt.f32)
                    for r in (None, 1, 2, 4):
                        calls.append(lambda w=w, x=x, m=m, r=r, n=n: linear(
                            x, w, out=dev.empty((m, n), tt.f32), rows=r))
        precompile(dev, calls)
        for n, k in shapes:
            for f in ("bf16", "q4_1"):
                ws = rotated(dev, random_weight(dev, n, k, f, rng))
                nb = ws[0].nbytes
                for m in (1, 2, 4):
                    x = dev.tensor(rng.standard_normal((m, k), dtype=np.float32))
                    out = dev.empty((m, n), tt.f32)
                    ms = stream_ms(dev, lambda w: linear(x, w, out=out), ws)
                    cells = [f"{ms * 1e3:.1f} ({nb / ms / 1e6:.0f})"]
                    rec = {"default": ms * 1e3}
                    for r in (1, 2, 4):
                        ms_r = stream_ms(dev, lambda w, r=r: linear(x, w, out=out, rows=r), ws)
                        cells.append(f"{ms_r * 1e3:.1f}")
                        rec[f"rows{r}"] = ms_r * 1e3
                    if base is not None:
                        ms_b = stream_ms(dev, lambda w: base(x, w, out), ws)
                        cells.append(f"{ms_b * 1e3:.1f}")
                        rec["baseline"] = ms_b * 1e3
                    rows_res[f"{n}x{k}/{f}/m{m}"] = rec
                    print(f"| {n}×{k} | {f} | {m} | {' | '.join(cells)} |", flush=True)
                del ws
    if args.xs:
        xs_sweep(dev, rng, args.fmts, copy_bw, results.setdefault("xs", {}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
