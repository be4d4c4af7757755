"""Shared helpers of the benchmark scripts: device timing, device selection, header lines."""

from __future__ import annotations

import datetime
import statistics
import time

import tattletale as tt


def device_ms(dev, fn, reps: int = 20, warmup: int = 2) -> float:
    """Median device time of fn() in milliseconds, measured with the device's events."""
    for _ in range(warmup):
        fn()
    dev.synchronize()
    times = []
    for _ in range(reps):
        start = dev.event()
        fn()
        end = dev.event()
        times.append(start.elapsed_ms(end))
    return statistics.median(times)


def host_ms(fn, reps: int = 10, warmup: int = 1, sync=None) -> float:
    """Median wall time of fn() in milliseconds (sync() called before each clock read)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def pick_devices(names: list[str] | None) -> list:
    """One device per requested backend (default: every backend present), fastest first."""
    seen, out = set(), []
    for backend, index, _ in tt.devices():
        if backend in seen or (names and backend not in names):
            continue
        seen.add(backend)
        out.append(tt.device(backend, index))
    return out


def header(what: str) -> str:
    return f"# tattletale {tt.__version__} — {what} — {datetime.date.today()}"


def torch_cuda():
    """torch with CUDA when present (the GPU peer), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def avoid_llama_cpp_extra_bufts() -> None:
    """Make llama-cpp-python load models with `use_extra_bufts = False`: its extra CPU buffer
    types (the AMX path) crash with SIGILL on these CPUs, and this version exposes the switch
    only in the C parameters."""
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama.llama_cpp.llama_model_default_params = params
