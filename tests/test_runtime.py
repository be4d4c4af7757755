"""Inspection (source, IR), the on-disk compile cache, recording/replay and device events."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from harness import assert_equal, is_compile_only, poisoned

import tattletale as tt
from tattletale.runtimes import cache


@tt.kernel
def saxpy(x: tt.Buffer, y: tt.Buffer, a: tt.f32, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        y[i] = a * x[i] + y[i]


def test_source_and_ir_carry_python_lines():
    lines, first = inspect.getsourcelines(saxpy.fn)  # first: the decorator's line
    assert lines[2].strip() == "i = tt.global_id(0)"
    for text in (saxpy.source("cuda", x=tt.f32, y=tt.f32), saxpy.source("opencl", x=tt.f16, y=tt.f16),
                 saxpy.ir(x=tt.bf16, y=tt.f32)):
        assert f"// test_runtime.py:{first + 2}: i = tt.global_id(0)" in text, text
        assert f"// test_runtime.py:{first + 4}: y[i] = a * x[i] + y[i]" in text, text
    assert 'extern "C" __global__ void saxpy' in saxpy.source("cuda", x=tt.f32, y=tt.f32)
    assert "__kernel void saxpy" in saxpy.source("opencl", x=tt.f32, y=tt.f32)
    with pytest.raises(TypeError, match="compile-time parameters"):
        saxpy.source("cuda")  # a generic buffer's element type is needed


def test_trailing_backslash_does_not_swallow_code():
    @tt.kernel
    def continued(x: tt.Buffer[tt.f32]):
        x[0] = x[1] + \
            x[2]

    src = continued.source("opencl")
    comment = next(ln for ln in src.splitlines() if "x[0] = x[1] +" in ln)
    assert not comment.rstrip().endswith("\\")


# --- compile cache ------------------------------------------------------------------------------

_CACHE_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tattletale as tt
    from tattletale.runtimes import cache

    calls = {"hits": 0, "misses": 0, "stores": 0}
    real_load, real_store = cache.load, cache.store

    def load(key):
        data = real_load(key)
        calls["hits" if data is not None else "misses"] += 1
        return data

    def store(key, data):
        calls["stores"] += 1
        real_store(key, data)

    cache.load, cache.store = load, store

    @tt.kernel
    def double(x: tt.Buffer[tt.f32], n: tt.i32):
        i = tt.global_id(0)
        if i < n:
            x[i] = x[i] * 2.0

    dev = tt.device(sys.argv[1])
    x = dev.tensor(np.arange(8, dtype=np.float32))
    double[1, 8](x, 8)
    assert (x.numpy() == np.arange(8) * 2).all()
    print(json.dumps(calls))
''')


def _run_cache_script(tmp_path, backend: str) -> dict:
    script = tmp_path / "cached_kernel.py"
    script.write_text(_CACHE_SCRIPT)
    env = dict(os.environ, TT_CACHE_DIR=str(tmp_path / "cache"), TT_CACHE="1")
    res = subprocess.run([sys.executable, str(script), backend], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_compile_cache_across_processes(dev, tmp_path):
    """A second process finds the compiled kernel in TT_CACHE_DIR and does not compile again."""
    if is_compile_only(dev):
        pytest.skip("compile-only devices do not use the cache")
    if not getattr(dev, "compile_cache", True):
        pytest.skip(f"{dev.backend} keeps no compiled kernels in the cache")
    first = _run_cache_script(tmp_path, dev.backend)
    assert first == {"hits": 0, "misses": 1, "stores": 1}
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(entries) == 1 and entries[0].stat().st_size > 0
    assert not entries[0].name.startswith(".tmp")
    second = _run_cache_script(tmp_path, dev.backend)
    assert second == {"hits": 1, "misses": 0, "stores": 0}


def test_compile_cache_across_devices(dev, monkeypatch):
    """A second Device object of the same hardware loads the kernel from the cache."""
    if is_compile_only(dev):
        pytest.skip("compile-only devices do not use the cache")

    @tt.kernel
    def negate(x: tt.Buffer[tt.i32], n: tt.i32):
        i = tt.global_id(0)
        if i < n:
            x[i] = -x[i]

    x = dev.tensor(np.arange(16, dtype=np.int32))
    negate[1, 16](x, 16)
    stores = []
    real_store = cache.store
    monkeypatch.setattr(cache, "store", lambda key, data: (stores.append(key), real_store(key, data)))
    other = type(dev)(dev.index)  # a new device object: nothing compiled for it yet
    y = other.tensor(np.arange(16, dtype=np.int32))
    negate[1, 16](y, 16)
    assert stores == []
    assert_equal(y, -np.arange(16))
    assert_equal(x, -np.arange(16))


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    """Entries appear whole (temporary file + rename): readers never see a partial entry."""
    monkeypatch.setenv("TT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TT_CACHE", "1")
    key = cache.make_key("test", "atomic")
    blobs = [bytes([k]) * (1 << 18) for k in range(8)]
    seen = []

    def reader():
        for _ in range(200):
            data = cache.load(key)
            if data is not None:
                seen.append(data)

    threads = [threading.Thread(target=cache.store, args=(key, b)) for b in blobs]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.load(key) in blobs
    assert all(s in blobs for s in seen)  # never a mix or a truncated entry
    assert not [p for p in tmp_path.rglob(".tmp-*")]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    other = cache.make_key("test", "failed")
    cache.store(other, b"data")  # a failed write costs only recompilation
    assert cache.load(other) is None


# --- recording and events -----------------------------------------------------------------------


@tt.kernel
def add_one(x: tt.Buffer[tt.i32], n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        x[i] = x[i] + 1


@tt.kernel
def scale_into(x: tt.Buffer[tt.i32], y: tt.Buffer[tt.i32], k: tt.i32, n: tt.i32):
    i = tt.global_id(0)
    if i < n:
        y[i] = x[i] * k


def test_record_and_replay(dev, rng):
    n = 300
    data = rng.integers(-1000, 1000, n).astype(np.int32)
    x = dev.tensor(data)
    y = poisoned(dev, n, tt.i32)
    with dev.record() as rec:
        add_one[5, 64](x, n)
        scale_into[5, 64](x, y, 3, n)
    dev.synchronize()
    assert_equal(x, data)  # nothing ran while recording
    rec.replay()
    assert_equal(x, data + 1)
    assert_equal(y, (data + 1) * 3)
    rec.replay()
    rec.replay()
    assert_equal(x, data + 3)
    x.copy_from(np.zeros(n, np.int32))  # new inputs go into the recorded tensors
    rec.replay()
    assert_equal(y, np.full(n, 3))


def test_events_time_the_queue(dev):
    x = dev.tensor(np.zeros(1 << 16, np.int32))
    add_one[256, 256](x, 1 << 16)  # compile outside the timed region
    start = dev.event()
    for _ in range(5):
        add_one[256, 256](x, 1 << 16)
    stop = dev.event()
    ms = start.elapsed_ms(stop)
    assert 0 <= ms < 60_000
    assert_equal(x, np.full(1 << 16, 6))
