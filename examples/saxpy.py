"""The README's first kernel: saxpy on the fastest device present (or the one named)."""

import sys

import numpy as np

import tattletale as tt


@tt.kernel
def saxpy(a: tt.f32, x: tt.Buffer[tt.f32], y: tt.Buffer[tt.f32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        y[i] = a * x[i] + y[i]


def main() -> None:
    dev = tt.device(sys.argv[1] if len(sys.argv) > 1 else None)
    n = 1 << 20
    xs = np.random.rand(n).astype(np.float32)
    ys = np.random.rand(n).astype(np.float32)
    x, y = dev.tensor(xs), dev.tensor(ys)
    saxpy[n // 256, 256](2.0, x, y, n)
    out = y.numpy()
    print(f"device: {dev}")
    print("y[:4] =", out[:4])
    print("max |error| vs numpy:", float(np.abs(out - (2.0 * xs + ys)).max()))
    print("\nGenerated CUDA C:\n" + saxpy.source("cuda"))


if __name__ == "__main__":
    main()
