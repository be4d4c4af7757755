"""Fixtures of the conformance suite: one `dev` per backend, a per-test RNG, a private compile cache.

Every test that takes `dev` runs once per entry of CONFORMANCE_BACKENDS:

* on a real device of that backend when this machine has one (ids `opencl`, `cuda`, …);
* otherwise, where the backend has a compile-only fallback (COMPILE_ONLY), on a device that
  renders and compiles every launched specialization but runs nothing (id `cuda-compile`): codegen
  breakage then still fails CI on machines without a GPU;
* otherwise the test is skipped, with the reason the backend is unavailable.

TT_TEST_BACKENDS=opencl,cuda-compile (comma-separated ids) narrows the run to some of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from harness import nvrtc_device

import tattletale as tt

# The backends every conformance test runs on. A new backend joins the suite by adding its name
# here once it passes (e.g. "vulkan", "webgpu"); `tt.device(name)` must create its device. A
# backend whose device can compile without hardware can also add a factory to COMPILE_ONLY.
CONFORMANCE_BACKENDS = ("opencl", "cuda", "vulkan", "webgpu")

# Backend → factory of a compile-only device (see harness.CompileOnlyDevice), used when the
# backend has no device here.
COMPILE_ONLY: dict[str, Callable[[], tt.Device]] = {"cuda": nvrtc_device}


def _probe(backend: str) -> tuple[str, Callable[[], tt.Device] | None, str]:
    """(param id, device factory or None, reason when None) for one backend."""
    try:
        tt.device(backend)
        return backend, lambda: tt.device(backend), ""
    except Exception as exc:  # no driver, no device, package missing: all mean "not here"
        reason = f"{backend}: {exc}".splitlines()[0]
    fallback = COMPILE_ONLY.get(backend)
    if fallback is not None:
        try:
            fallback()
            return f"{backend}-compile", fallback, ""
        except Exception as exc:
            reason += f"; no compile-only fallback either ({exc})".splitlines()[0]
    return backend, None, reason


def _backend_params() -> list:
    wanted = os.environ.get("TT_TEST_BACKENDS")
    params = []
    for backend in CONFORMANCE_BACKENDS:
        pid, factory, reason = _probe(backend)
        if wanted and pid not in wanted.split(","):
            continue
        marks = [pytest.mark.skip(reason=reason)] if factory is None else []
        params.append(pytest.param(factory, id=pid, marks=marks))
    return params


_PARAMS = _backend_params()
_devices: dict[str, tt.Device] = {}


@pytest.fixture(params=_PARAMS)
def dev(request) -> tt.Device:
    """The device under test (a real device, or a compile-only one; see harness.py)."""
    pid = _PARAMS[request.param_index].id
    if pid not in _devices:
        _devices[pid] = request.param()
    return _devices[pid]


@pytest.fixture(scope="session")
def bundled_gguf():
    """Path of the bundled default model's GGUF (SmolLM2-135M-Instruct); skips when absent."""
    from tattletale.models import ModelFileError, resolve

    try:
        path = resolve(None)
    except ModelFileError as exc:
        pytest.skip(str(exc))
    if not path.exists():
        pytest.skip(f"the bundled model is not installed ({path.name})")
    return path


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible, and different for every test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def pytest_configure(config):
    """Compile into a private cache so runs neither read nor fill the user's cache."""
    path = tempfile.mkdtemp(prefix="tt-test-cache-")
    os.environ["TT_CACHE_DIR"] = path
    config._tt_cache_dir = path


def pytest_unconfigure(config):
    path = getattr(config, "_tt_cache_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A backend that lacks a feature the test needs (WebGPU: 64-bit types) says so with a
    CompileError carrying `unsupported_feature`: the test is skipped there, with that reason."""
    try:
        return (yield)
    except tt.CompileError as exc:
        if getattr(exc, "unsupported_feature", None):
            pytest.skip(str(exc).splitlines()[0])
        raise
