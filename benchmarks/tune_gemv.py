"""GEMV rows-per-lane-group sweep: device time per (shape, format, rows), to set the heuristic in
tattletale/kernels/matmul.py (gemv_rows)."""

from __future__ import annotations

import numpy as np
from bench_kernels import GEMV_SHAPES, random_weight
from common import device_ms, header

import tattletale as tt
from tattletale.kernels.matmul import gemv_rows, linear


def main() -> None:
    dev = tt.device()
    rng = np.random.default_rng(0)
    lanes = dev.caps.subgroup_size if dev.caps.subgroup_size > 1 else 16
    print(header(f"GEMV rows sweep on {dev}"))
    print("| shape | format | rows=1 | rows=2 | rows=4 | heuristic rows, unroll 2 |")
    print("|---|---|---|---|---|---|")
    for n, k in GEMV_SHAPES + [(4096, 4096), (1024, 4096), (128256, 4096)]:
        x = dev.tensor(rng.standard_normal((1, k), dtype=np.float32))
        out = dev.empty((1, n), tt.f32)
        for fmt in ("bf16", "q4_1", "q8_0"):
            w = random_weight(dev, n, k, fmt, rng)
            cells = []
            for r in (1, 2, 4):
                ms = device_ms(dev, lambda r=r: linear(x, w, out=out, rows=r))
                cells.append(f"{ms * 1e3:.0f} µs ({w.nbytes / ms / 1e6:.0f} GB/s)")
            ms = device_ms(dev, lambda: linear(x, w, out=out, unroll=2))
            cells.append(f"{gemv_rows(n, 1, lanes, fmt)}: {ms * 1e3:.0f} µs "
                         f"({w.nbytes / ms / 1e6:.0f} GB/s)")
            print(f"| {n}×{k} | {fmt} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
