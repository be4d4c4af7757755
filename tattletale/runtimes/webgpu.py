"""WebGPU backend through wgpu-py (wgpu-native on Vulkan, Metal or D3D12; lavapipe on CPUs).

naga compiles each kernel's WGSL (codegen/wgsl.py) once; a compute pipeline is made per block
shape, which is an override constant of the module. Bind group 0 holds the buffers (bound from
their view's start rounded down to the offset alignment: the rest of a view's element offset goes
into the uniform block), group 1 a 256-byte window of a uniform buffer holding scalars, offsets
and the logical grid, chosen per dispatch by a dynamic offset.

Launches are batched: they queue up on the device and are encoded into compute passes of one
submission when the host next touches memory, synchronizes or reads an event, or after `BATCH`
launches. WebGPU orders the dispatches of a pass, and queue writes with submissions, so results
are those of launching one by one. A recording keeps its launches (arguments fixed at record
time) and a replay queues and submits them again: WebGPU command buffers are single-use.

Events are timestamp queries written between the queued launches, in the same submission, where
the adapter has `timestamp-query-inside-encoders` (wgpu-native on Vulkan, Metal, D3D12).
Elsewhere (browsers' WebGPU) an event waits for the queue and reads the host's clock, which adds
the submission latency to what it measures.

wgpu-native exposes no pipeline cache, so compiled kernels are not stored in tattletale's disk
cache: naga translates WGSL in milliseconds, and drivers keep their own shader caches.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time

import numpy as np

from ..codegen import Caps, Generated
from ..codegen.wgsl import MAX_GROUPS, uniform_fields
from ..dsl.errors import BackendCompileError
from .base import Device, Event, Recording, scalar_packer

BATCH = 256  # launches queued before they are submitted without waiting for the host
_SLOT = 256  # bytes of uniform data per dispatch: the largest dynamic-offset alignment
_FEATURES = ("shader-f16", "subgroup", "timestamp-query", "timestamp-query-inside-encoders")
_LIMITS = ("max-buffer-size", "max-storage-buffer-binding-size", "max-storage-buffers-per-shader-stage",
           "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
           "max-compute-workgroup-size-x", "max-compute-workgroup-size-y",
           "max-compute-workgroup-size-z", "max-compute-workgroups-per-dimension")
_PROBE = """@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(subgroup_size) n: u32, @builtin(local_invocation_index) i: u32) {
    if (i == 0u) { out[0] = n; }
}"""


def _wgpu():
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # wgpu-native's Vulkan instance probes Wayland, which prints an error to the terminal on
        # machines without a session; a private empty runtime dir keeps the probe quiet.
        path = tempfile.mkdtemp(prefix="tt-xdg-")
        os.chmod(path, 0o700)
        os.environ["XDG_RUNTIME_DIR"] = path
    import wgpu

    return wgpu


def _adapters() -> list:
    """Adapters of the native APIs (not OpenGL), GPUs first."""
    wgpu = _wgpu()
    try:
        from wgpu.backends.wgpu_native.extras import set_instance_extras

        set_instance_extras(backends=["Vulkan", "Metal", "DX12"])
    except Exception:
        pass  # the instance exists already
    order = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2}
    adapters = [a for a in wgpu.gpu.enumerate_adapters_sync()
                if a.info["backend_type"] in ("Vulkan", "Metal", "D3D12")]
    return sorted(adapters, key=lambda a: order.get(a.info["adapter_type"], 3))


def list_devices() -> list[str]:
    try:
        return [a.info["device"] for a in _adapters()]
    except Exception:
        return []


class _Memory:
    """A device buffer and a serial number that is never reused (bind groups are cached by it)."""

    __slots__ = ("buffer", "size", "serial")
    _count = 0

    def __init__(self, buffer, size: int):
        _Memory._count += 1
        self.buffer, self.size, self.serial = buffer, size, _Memory._count


class WebGPUEvent(Event):
    """A timestamp written between the queued launches (in the same submission as them), or,
    without `timestamp-query-inside-encoders`, the host's clock once the queue is idle."""

    def __init__(self, device: WebGPUDevice):
        self.device, self.resolved, self.host = device, None, None
        if device.gpu_timestamps:
            d = device.device
            self.query = d.create_query_set(type="timestamp", count=1)
            self.resolved = d.create_buffer(size=8, usage="QUERY_RESOLVE|COPY_SRC")
            device._pending.append(self)
        else:
            device.synchronize()
            self.host = time.perf_counter()

    def write(self, encoder) -> None:
        from wgpu.backends.wgpu_native.extras import write_timestamp

        write_timestamp(encoder, self.query, 0)
        encoder.resolve_query_set(self.query, 0, 1, self.resolved, 0)

    def _ns(self) -> float:
        if self.resolved is None:
            return self.host * 1e9
        self.device._flush()
        raw = np.frombuffer(self.device.device.queue.read_buffer(self.resolved), np.uint64)[0]
        return float(raw) * self.device.timestamp_period

    def elapsed_ms(self, later: WebGPUEvent) -> float:
        return (later._ns() - self._ns()) * 1e-6


class _Variant:
    """A shader module with its bind group layout, pipelines per block shape and bind groups."""

    def __init__(self, device: WebGPUDevice, gen: Generated, text: str, access: list[str]):
        d = device.device
        try:
            self.module = d.create_shader_module(code=text)
        except Exception as exc:
            raise BackendCompileError(f"WGSL compilation of kernel '{gen.entry}' failed:\n"
                                      f"{gen.annotate_log(str(exc))}") from None
        self.layout = d.create_bind_group_layout(entries=[
            {"binding": b, "visibility": "COMPUTE",
             "buffer": {"type": "read-only-storage" if a == "read" else "storage"}}
            for b, a in enumerate(access)])
        self.pipeline_layout = d.create_pipeline_layout(
            bind_group_layouts=[self.layout, device.uniform_layout])
        self.pipelines: dict[tuple, object] = {}
        self.bind_groups: dict[tuple, object] = {}


class WebGPUKernel:
    """A compiled kernel: the recipe for its arguments, and its module as generated (read-only
    buffers declared `read`) plus, built when first needed, a variant declaring every buffer
    `read_write` for launches that pass one buffer to a read-only and a written parameter (WebGPU
    forbids mixing the two usages of a buffer in one dispatch)."""

    def __init__(self, device: WebGPUDevice, gen: Generated, constexpr_mask: list[bool]):
        self.device, self.gen = device, gen
        self.runtime_index = [i for i, c in enumerate(constexpr_mask) if not c]
        self.fields = uniform_fields(gen.params, [p.name for p in gen.params])
        if len(self.fields) * 4 > _SLOT:
            raise BackendCompileError(f"kernel '{gen.entry}' has too many parameters for WebGPU's "
                                      f"{_SLOT}-byte uniform block")
        self.packer = struct.Struct("<" + "".join({"i32": "i", "u32": "I", "f32": "f"}[f.wgsl]
                                                  for f in self.fields))
        buffers = [i for i, p in enumerate(gen.params) if p.kind == "buffer"]
        self.buffer_args = [self.runtime_index[i] for i in buffers]
        # Each uniform field as (kind, where, packer): a scalar argument, a binding's element
        # offset, or a grid dimension.
        self.plan = [(0, self.runtime_index[f.index], scalar_packer(gen.params[f.index].abi))
                     if f.kind == "scalar" else (1, buffers.index(f.index), None)
                     if f.kind == "offset" else (2, f.index, None) for f in self.fields]
        self.readonly = [a == "read" for a in gen.access]
        self.mixed = any(self.readonly) and not all(self.readonly)
        self.variants = [_Variant(device, gen, _for_naga(gen.text), gen.access), None]

    def variant(self, bindings: list[tuple]) -> _Variant:
        if self.mixed:
            read = {m.serial for (m, *_), r in zip(bindings, self.readonly) if r}
            if any(m.serial in read for (m, *_), r in zip(bindings, self.readonly) if not r):
                if self.variants[1] is None:
                    text = _for_naga(self.gen.text).replace("var<storage, read> ",
                                                            "var<storage, read_write> ")
                    self.variants[1] = _Variant(self.device, self.gen, text,
                                                ["read_write"] * len(self.readonly))
                return self.variants[1]
        return self.variants[0]

    def pipeline(self, v: _Variant, block) -> object:
        p = v.pipelines.get(block)
        if p is None:
            self.device.check_block(block)
            constants = {f"tt_block_{d}": n for d, n in zip("xyz", block)}
            p = self.device.device.create_compute_pipeline(
                layout=v.pipeline_layout,
                compute={"module": v.module, "entry_point": self.gen.entry, "constants": constants})
            v.pipelines[block] = p
        return p

    def launch(self, grid, block, args) -> None:
        dev = self.device
        bindings = [dev.binding(args[j]) for j in self.buffer_args]
        values = [pack(args[x]) if kind == 0 else bindings[x][3] if kind == 1 else grid[x]
                  for kind, x, pack in self.plan]
        v = self.variant(bindings)
        key = tuple((m.serial, off, size) for m, off, size, _ in bindings)
        group = v.bind_groups.get(key)
        if group is None:
            group = dev.device.create_bind_group(layout=v.layout, entries=[
                {"binding": b, "resource": {"buffer": m.buffer, "offset": off, "size": size}}
                for b, (m, off, size, _) in enumerate(bindings)])
            v.bind_groups[key] = group
            dev.bind_group_users(key, v.bind_groups)
        dev.dispatch(self.pipeline(v, block), group, self.packer.pack(*values),
                     dev.dispatch_size(grid))


def _raw_pass_calls():
    """(ffi, setPipeline, setBindGroup, dispatchWorkgroups) of wgpu-native, or None."""
    try:
        from wgpu.backends.wgpu_native._ffi import ffi, lib

        return (ffi, lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup,
                lib.wgpuComputePassEncoderDispatchWorkgroups)
    except (ImportError, AttributeError):
        return None


def _for_naga(text: str) -> str:
    """naga implements subgroups without WGSL's `enable subgroups;` (and rejects it) and does not
    know the subgroup_uniformity diagnostic: blank those lines, keeping line numbers."""
    return "\n".join("" if ln in ("enable subgroups;", "diagnostic(off, subgroup_uniformity);")
                     else ln for ln in text.split("\n"))


class WebGPURecording(Recording):
    """Launches kept with their arguments; a replay queues them again and submits them at once
    (WebGPU command buffers are single-use, so they are re-encoded)."""

    def __init__(self, device: WebGPUDevice):
        super().__init__(device)
        self.dispatches: list[tuple] = []

    def replay(self) -> None:
        self.device._pending += self.dispatches
        self.device._flush()


class WebGPUDevice(Device):
    backend = "webgpu"
    compile_cache = False  # see the module's docstring

    def __init__(self, index: int = 0):
        adapters = _adapters()
        if not adapters:
            raise RuntimeError("no WebGPU adapter found (a Vulkan, Metal or D3D12 driver is needed; "
                               "on Linux without a GPU, Mesa's lavapipe)")
        if index >= len(adapters):
            raise RuntimeError(f"WebGPU adapter {index} does not exist ({len(adapters)} found)")
        adapter = adapters[index]
        features = [f for f in _FEATURES if f in adapter.features]
        limits = {k: adapter.limits[k] for k in _LIMITS if k in adapter.limits}
        self.device = adapter.request_device_sync(required_features=features,
                                                  required_limits=limits)
        self.limits = self.device.limits
        self._align = max(self.limits["min-storage-buffer-offset-alignment"], 16)
        self._max_binding = self.limits["max-storage-buffer-binding-size"] // 16 * 16
        self.gpu_timestamps = "timestamp-query-inside-encoders" in features
        self.timestamp_period = self._timestamp_period() if self.gpu_timestamps else 1.0
        self.uniform_layout = self.device.create_bind_group_layout(entries=[{
            "binding": 0, "visibility": "COMPUTE",
            "buffer": {"type": "uniform", "has_dynamic_offset": True}}])
        self._pending: list = []  # launches (tuples) and events, in queue order
        self._arena = (None, None, 0)  # uniform buffer, its bind group, slots
        self._users: dict[int, list] = {}  # memory serial -> bind group caches holding it
        self._live: dict[int, object] = {}  # memory serial -> its GPUBuffer
        info = adapter.info
        subgroup = self._subgroup_size() if "subgroup" in features else 1
        caps = Caps("webgpu", subgroup_size=subgroup, native_subgroups=subgroup > 1,
                    arch=f"{info['vendor']}|{info['device']}|{info['backend_type']}")
        super().__init__(index, info["device"], caps)
        self.is_gpu = info["adapter_type"] != "CPU"

    def _timestamp_period(self) -> float:
        """Nanoseconds per timestamp tick (wgpu-native reports raw ticks)."""
        try:
            from wgpu.backends.wgpu_native._ffi import lib

            return float(lib.wgpuQueueGetTimestampPeriod(self.device.queue._internal))
        except Exception:
            return 1.0

    def _subgroup_size(self) -> int:
        """WebGPU cannot fix the subgroup size, so ask a probe pipeline what the device uses."""
        d = self.device
        out = d.create_buffer(size=4, usage="STORAGE|COPY_SRC")
        pipe = d.create_compute_pipeline(layout="auto", compute={
            "module": d.create_shader_module(code=_PROBE), "entry_point": "main"})
        group = d.create_bind_group(layout=pipe.get_bind_group_layout(0),
                                    entries=[{"binding": 0, "resource": {"buffer": out}}])
        enc = d.create_command_encoder()
        p = enc.begin_compute_pass()
        p.set_pipeline(pipe)
        p.set_bind_group(0, group)
        p.dispatch_workgroups(1)
        p.end()
        d.queue.submit([enc.finish()])
        return int(np.frombuffer(d.queue.read_buffer(out), np.uint32)[0])

    # --- memory ---------------------------------------------------------------------------------

    def _alloc(self, nbytes):
        size = -(-nbytes // 16) * 16  # whole vec4 entries: buffers may be declared array<vec4<…>>
        if size > self.limits["max-buffer-size"]:
            raise MemoryError(f"{nbytes} bytes exceed the adapter's max-buffer-size "
                              f"({self.limits['max-buffer-size']})")
        m = _Memory(self.device.create_buffer(size=size, usage="STORAGE|COPY_SRC|COPY_DST"), size)
        # Held here until freed: a pooled handle can be resurrected by Allocation.__del__ from a
        # garbage cycle, whose other members (the GPUBuffer) Python finalizes all the same.
        self._live[m.serial] = m.buffer
        return m

    def _free(self, handle):
        self._live.pop(handle.serial, None)
        for cache, key in self._users.pop(handle.serial, ()):
            cache.pop(key, None)  # the buffer itself goes when the last pending use is done

    def _write(self, handle, offset, array):
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if not data.size:
            return
        self._flush()
        lo, hi = offset & ~3, -(-(offset + data.size) // 4) * 4
        if (lo, hi) != (offset, offset + data.size):  # WebGPU writes whole words
            window = np.frombuffer(self.device.queue.read_buffer(handle.buffer, lo, hi - lo),
                                   np.uint8).copy()
            window[offset - lo:offset - lo + data.size] = data
            data = window
        self.device.queue.write_buffer(handle.buffer, lo, data)

    def _read(self, handle, offset, out):
        n = out.nbytes
        if not n:
            return
        self._flush()
        lo, hi = offset & ~3, -(-(offset + n) // 4) * 4
        raw = np.frombuffer(self.device.queue.read_buffer(handle.buffer, lo, hi - lo), np.uint8)
        out.reshape(-1).view(np.uint8)[:] = raw[offset - lo:offset - lo + n]

    def _fill_zero(self, handle, nbytes):
        self._flush()
        enc = self.device.create_command_encoder()
        enc.clear_buffer(handle.buffer, 0, handle.size)
        self.device.queue.submit([enc.finish()])

    def binding(self, t) -> tuple:
        """(memory, byte offset, size, element offset) binding tensor `t`: from its start rounded
        down to the offset alignment, as far as a binding may reach."""
        m, item = t.alloc.handle, t.dtype.itemsize
        start = t.offset * item
        off = start - start % self._align
        size = min(m.size - off, self._max_binding)
        if start - off + t.nbytes > size:
            raise ValueError(f"a {t.nbytes}-byte tensor exceeds this WebGPU device's largest "
                             f"storage binding ({self._max_binding} bytes)")
        return m, off, size, (start - off) // item

    def bind_group_users(self, key: tuple, cache: dict) -> None:
        for serial, _, _ in key:
            self._users.setdefault(serial, []).append((cache, key))

    # --- kernels --------------------------------------------------------------------------------

    def _build(self, gen: Generated, constexpr_mask):
        return WebGPUKernel(self, gen, constexpr_mask)

    def check_block(self, block) -> None:
        """Kernels run as one-dimensional workgroups of the block's size (see the WGSL prologue)."""
        lim = self.limits
        size = block[0] * block[1] * block[2]
        if size > min(lim["max-compute-invocations-per-workgroup"], lim["max-compute-workgroup-size-x"]):
            raise ValueError(f"block {block} exceeds this WebGPU device's workgroup limits "
                             f"({lim['max-compute-invocations-per-workgroup']} invocations)")

    @staticmethod
    def dispatch_size(grid) -> tuple[int, int, int]:
        """Workgroups to dispatch; a grid wider than MAX_GROUPS is folded (see the WGSL prologue)."""
        gx, gy, gz = grid
        if gx <= MAX_GROUPS and gy <= MAX_GROUPS and gz <= MAX_GROUPS:
            return grid
        hi = -(-gx // MAX_GROUPS)
        if hi > MAX_GROUPS or gy * gz > MAX_GROUPS:
            raise ValueError(f"grid {grid} is too large for WebGPU: up to {MAX_GROUPS} groups "
                             f"per dimension, or {MAX_GROUPS}² in x when y*z <= {MAX_GROUPS}")
        return MAX_GROUPS, hi, gy * gz

    def dispatch(self, pipeline, group, uniforms: bytes, size) -> None:
        item = (pipeline, group, uniforms, size)
        if self._recording is not None:
            self._recording.dispatches.append(item)
            return
        self._pending.append(item)
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Submit the queued launches and events: one compute pass per run of launches."""
        if not self._pending:
            return
        items, self._pending = self._pending, []
        dispatches = [x for x in items if isinstance(x, tuple)]
        buf, group, slots = self._arena
        if slots < len(dispatches):  # the old arena stays alive while submitted work uses it
            slots = max(len(dispatches), BATCH)
            buf = self.device.create_buffer(size=slots * _SLOT, usage="UNIFORM|COPY_DST")
            group = self.device.create_bind_group(layout=self.uniform_layout, entries=[
                {"binding": 0, "resource": {"buffer": buf, "offset": 0, "size": _SLOT}}])
            self._arena = buf, group, slots
        if dispatches:  # queue writes are ordered with submissions: earlier work saw its data
            self.device.queue.write_buffer(buf, 0, b"".join(u.ljust(_SLOT, b"\0")
                                                            for _, _, u, _ in dispatches))
        enc = self.device.create_command_encoder()
        k = start = 0
        for i, item in enumerate(items + [None]):
            if isinstance(item, tuple):
                continue
            if i > start:
                k = self._encode_pass(enc, items[start:i], group, k)
            if item is not None:
                item.write(enc)
            start = i + 1
        self.device.queue.submit([enc.finish()])

    def _encode_pass(self, enc, dispatches: list[tuple], uniform_group, k: int) -> int:
        """Encode dispatches whose uniform data sits in slots k, k+1, …; returns the next slot.
        The per-dispatch calls go straight to wgpu-native where wgpu-py exposes it: its
        wrappers cost ~1.5 µs a call."""
        p = enc.begin_compute_pass()
        raw = _raw_pass_calls()
        last = None
        if raw is None:
            for pipeline, group, _, size in dispatches:
                if pipeline is not last:
                    p.set_pipeline(pipeline)
                    last = pipeline
                p.set_bind_group(0, group)
                p.set_bind_group(1, uniform_group, [k * _SLOT])
                p.dispatch_workgroups(*size)
                k += 1
        else:
            ffi, set_pipeline, set_group, dispatch = raw
            h, null, uniforms = p._internal, ffi.NULL, uniform_group._internal
            offset = ffi.new("uint32_t[1]")
            for pipeline, group, _, size in dispatches:
                if pipeline is not last:
                    set_pipeline(h, pipeline._internal)
                    last = pipeline
                set_group(h, 0, group._internal, 0, null)
                offset[0] = k * _SLOT
                set_group(h, 1, uniforms, 1, offset)
                dispatch(h, *size)
                k += 1
        p.end()
        return k

    def synchronize(self):
        self._flush()
        # Block on the last submission (wgpuDevicePoll): wgpu-py 0.32's on_submitted_work_done_sync
        # is broken, so read a word back (which waits for the queue) where `_poll_wait` is missing.
        poll = getattr(self.device, "_poll_wait", None)
        if poll is not None:
            poll()
        else:
            self.device.queue.read_buffer(self.device.create_buffer(size=4, usage="COPY_SRC"))

    def event(self):
        return WebGPUEvent(self)

    def record(self):
        return WebGPURecording(self)
