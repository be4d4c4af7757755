"""Vulkan backend through the `vulkan` package (cffi over the loader): NVIDIA, AMD, Intel, lavapipe.

Kernels are SPIR-V modules from codegen/spirv.py. Each compiled kernel owns one compute pipeline
per block size (the block is a specialization constant). Buffers travel as device addresses in
push constants, or, on devices without buffer device address, as descriptors cached per set of
buffers. Launches are recorded into an open command buffer, each behind a memory barrier (the
in-order semantics of a CUDA stream; compute-to-compute between dispatches, which costs a GPU a
third of a full barrier), and submitted in batches; host reads and writes,
`synchronize` and timing events flush the batch. Device memory is mapped directly where it is
host-visible (integrated GPUs, lavapipe), else reached through a staging buffer. A recording is
one reusable command buffer, replayed by a single submit.

Traps of the `vulkan` package this module works around (the first two have tests):
- a create-info nested by value (the shader stage of a pipeline) keeps its pointers alive only
  while its own Python object lives: keep it in a variable until the call returns;
- `vk.VK_WHOLE_SIZE` is -1, which cffi refuses for a uint64: pass `_WHOLE_SIZE`;
- `vkGetBufferDeviceAddress`'s wrapper returns its argument: call the C function directly;
- some constants are missing or None (those of core 1.2 device addresses): define them here.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..codegen.spirv import SpirvModule, VulkanCaps, validate
from ..dsl import types as T
from ..dsl.errors import BackendCompileError
from . import cache
from .base import Device, Event, Recording

_WHOLE_SIZE = (1 << 64) - 1
_BATCH = 32  # launches per submission outside recordings
_STAGING = 64 << 20  # largest staging buffer (bytes)
_QUERIES = 4096  # timestamp slots: live events at once
_DISPATCH_BASE = 0x10  # VK_PIPELINE_CREATE_DISPATCH_BASE_BIT
_FULL_SUBGROUPS = 0x2  # VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT
_SUBGROUP_OPS = 0x1 | 0x4 | 0x10  # basic, arithmetic, shuffle
_ADDRESS_USAGE = 0x20000  # VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT (None in the package)
_ADDRESS_ALLOCATION = 0x2  # VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT (likewise)
_instance = None


def _vk():
    import vulkan as vk

    return vk


def _get_instance():
    """The process's Vulkan instance (TT_VULKAN_VALIDATION=1 adds the validation layer)."""
    global _instance
    if _instance is None:
        vk = _vk()
        app = vk.VkApplicationInfo(pApplicationName="tattletale", apiVersion=vk.VK_MAKE_VERSION(1, 3, 0))
        layers = ["VK_LAYER_KHRONOS_validation"] if os.environ.get("TT_VULKAN_VALIDATION") == "1" else []
        info = vk.VkInstanceCreateInfo(pApplicationInfo=app, enabledLayerCount=len(layers),
                                       ppEnabledLayerNames=layers)
        _instance = vk.vkCreateInstance(info, None)
    return _instance


def list_devices() -> list:
    """(physical device, properties) of every Vulkan 1.2+ device: discrete GPUs first, CPUs last."""
    try:
        vk = _vk()
        found = [(pd, vk.vkGetPhysicalDeviceProperties(pd))
                 for pd in vk.vkEnumeratePhysicalDevices(_get_instance())]
    except Exception:  # no loader, no driver
        return []
    rank = {vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: 0, vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: 1}
    found = [d for d in found if d[1].apiVersion >= vk.VK_MAKE_VERSION(1, 2, 0)]
    return sorted(found, key=lambda d: rank.get(d[1].deviceType, 2))


def is_gpu(props) -> bool:
    vk = _vk()
    return props.deviceType in (vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU,
                                vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU)


def _cache_data(device, pcache) -> bytes:
    """The contents of a pipeline cache (the package wraps no vkGetPipelineCacheData)."""
    vk = _vk()
    size = vk.ffi.new("size_t*")
    vk.lib.vkGetPipelineCacheData(device, pcache, size, vk.ffi.NULL)
    buf = vk.ffi.new("char[]", size[0])
    vk.lib.vkGetPipelineCacheData(device, pcache, size, buf)
    return bytes(vk.ffi.buffer(buf, size[0]))


class _Mem:
    """One allocation: a buffer, its memory, its device address and (if mapped) a host view."""

    __slots__ = ("buffer", "memory", "address", "host")

    def __init__(self, buffer, memory, address: int, host: np.ndarray | None):
        self.buffer, self.memory, self.address, self.host = buffer, memory, address, host


class VulkanEvent(Event):
    def __init__(self, device: VulkanDevice, query: int):
        self.device, self.query = device, query

    def elapsed_ms(self, later: VulkanEvent) -> float:
        return (later.device._timestamp(later.query) - self.device._timestamp(self.query)) * 1e-6

    def __del__(self):
        self.device._free_queries.append(self.query)


class VulkanKernel:
    """A shader module, its pipeline layout, pipelines per block size, and the argument packer."""

    def __init__(self, device: VulkanDevice, gen: SpirvModule, constexpr_mask: list[bool]):
        vk = self.vk = _vk()
        self.device, self.gen = device, gen
        self.runtime_index = [i for i, c in enumerate(constexpr_mask) if not c]
        d = device.device
        self.module = vk.vkCreateShaderModule(d, vk.VkShaderModuleCreateInfo(
            codeSize=len(gen.binary), pCode=gen.binary), None)
        self.set_layout = None
        set_layouts = []
        if gen.bindings:
            binds = [vk.VkDescriptorSetLayoutBinding(
                binding=b, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=1,
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT) for b in range(gen.bindings)]
            self.set_layout = vk.vkCreateDescriptorSetLayout(d, vk.VkDescriptorSetLayoutCreateInfo(
                bindingCount=len(binds), pBindings=binds), None)
            set_layouts = [self.set_layout]
        ranges = [vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0,
                                         size=gen.push_size)] if gen.push_size else []
        self.layout = vk.vkCreatePipelineLayout(d, vk.VkPipelineLayoutCreateInfo(
            setLayoutCount=len(set_layouts), pSetLayouts=set_layouts,
            pushConstantRangeCount=len(ranges), pPushConstantRanges=ranges), None)
        self.pipelines: dict[tuple, object] = {}
        fmt, pos, self.fields = "<", 0, []
        for f in sorted(gen.push_fields, key=lambda f: f.offset):
            fmt += (f"{f.offset - pos}x" if f.offset > pos else "") + f.fmt
            pos = f.offset + struct.calcsize("<" + f.fmt)
            self.fields.append(self._field(f.slot))
        self.packer = struct.Struct(fmt)
        self.push = vk.ffi.new("char[]", max(gen.push_size, 1))
        self.push_view = vk.ffi.buffer(self.push)
        self.buffer_slots = [i for i, p in enumerate(gen.params) if p.kind == "buffer"]
        self.aligned = [(self.runtime_index[slot], align, gen.params[slot].name)
                        for slot, align in gen.vector_align.items()]

    def _field(self, slot: int) -> tuple[str, int, T.ScalarType | None]:
        """How `pack` fills one push-constant field: (what, argument or grid dimension, type)."""
        if slot < 0:
            return "grid", -1 - slot, None
        p, k = self.gen.params[slot], self.runtime_index[slot]
        if p.kind == "buffer":
            return ("address" if self.device.caps.bda else "offset"), k, None
        return ("float" if p.abi.is_float else "int"), k, p.abi

    def pipeline(self, block: tuple[int, int, int], split: bool):
        """The pipeline for one block size (and with dispatch-base support when a grid is split)."""
        key = (block, split)
        vk, dev, gen = self.vk, self.device, self.gen
        limits = dev.limits
        if any(b > m for b, m in zip(block, limits.maxComputeWorkGroupSize)) or \
                block[0] * block[1] * block[2] > limits.maxComputeWorkGroupInvocations:
            raise ValueError(f"block {block} exceeds this device's limits "
                             f"({limits.maxComputeWorkGroupInvocations} invocations)")
        data = vk.ffi.new("uint32_t[3]", block)
        entries = [vk.VkSpecializationMapEntry(constantID=k, offset=4 * k, size=4) for k in range(3)]
        spec = vk.VkSpecializationInfo(mapEntryCount=3, pMapEntries=entries, dataSize=12, pData=data)
        sized = flags = None
        sg = dev.caps.subgroup_size
        if gen.subgroups and dev.pin_subgroups:
            sized = vk.VkPipelineShaderStageRequiredSubgroupSizeCreateInfo(requiredSubgroupSize=sg)
            flags = _FULL_SUBGROUPS if dev.full_subgroups and block[0] % sg == 0 else None
        # `stage` must stay alive until the pipeline exists (see the module docstring)
        stage = vk.VkPipelineShaderStageCreateInfo(
            pNext=sized, flags=flags, stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=self.module,
            pName=gen.entry, pSpecializationInfo=spec)
        info = vk.VkComputePipelineCreateInfo(flags=_DISPATCH_BASE if split else None, stage=stage,
                                              layout=self.layout, basePipelineIndex=-1)
        # one on-disk cache entry per pipeline: the driver's pipeline-cache data for it
        disk_key = cache.make_key("vulkan", gen.binary, dev.cache_id, repr(key), repr(flags))
        data = cache.load(disk_key)
        initial = vk.ffi.from_buffer(data) if data else None
        pcache = vk.vkCreatePipelineCache(dev.device, vk.VkPipelineCacheCreateInfo(
            initialDataSize=len(data or b""), pInitialData=initial), None)
        try:
            pipe = vk.vkCreateComputePipelines(dev.device, pcache, 1, [info], None)[0]
            if data is None:
                cache.store(disk_key, _cache_data(dev.device, pcache))
        except vk.VkError as exc:
            raise BackendCompileError(f"Vulkan pipeline creation for kernel '{gen.entry}' failed: "
                                      f"{type(exc).__name__}") from None
        finally:
            vk.vkDestroyPipelineCache(dev.device, pcache, None)
        self.pipelines[key] = pipe
        return pipe

    def pack(self, grid, args) -> None:
        """The push constants of one launch, into `self.push` (copied when recorded)."""
        values = []
        for code, k, abi in self.fields:
            if code == "grid":
                values.append(grid[k])
                continue
            a = args[k]
            if code == "address":
                values.append(a.alloc.handle.address + a.offset * a.dtype.itemsize)
            elif code == "offset":
                values.append(a.offset * a.dtype.itemsize)
            elif code == "float":
                values.append(float(a))
            else:
                values.append(T.wrap_int(int(a), abi))
        self.packer.pack_into(self.push_view, 0, *values)

    def launch(self, grid, block, args) -> None:
        dev, vk, lib = self.device, self.vk, self.vk.lib
        for k, align, name in self.aligned:  # vector accesses are aligned to the vector
            start = args[k].offset * args[k].dtype.itemsize
            if start % align:
                raise ValueError(f"{self.gen.entry}: '{name}' is a view starting at byte {start}, but its "
                                 f"tt.vload/tt.vstore need views aligned to {align} bytes")
        most = dev.max_groups
        split = grid[0] > most[0] or grid[1] > most[1] or grid[2] > most[2]
        pipe = self.pipelines.get((block, split)) or self.pipeline(block, split)
        cb = dev._command_buffer()
        dev._barrier(cb, dispatch=True)
        lib.vkCmdBindPipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe)
        if self.set_layout is not None:
            sets = vk.ffi.new("VkDescriptorSet[1]", [dev._descriptor_set(self, args)])
            lib.vkCmdBindDescriptorSets(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.layout, 0, 1,
                                        sets, 0, vk.ffi.NULL)
        if self.gen.push_size:
            self.pack(grid, args)
            lib.vkCmdPushConstants(cb, self.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                   self.gen.push_size, self.push)
        if not split:
            lib.vkCmdDispatch(cb, *grid)
        else:  # more groups than one dispatch may have: tile the grid with base offsets
            for z in range(0, grid[2], most[2]):
                for y in range(0, grid[1], most[1]):
                    for x in range(0, grid[0], most[0]):
                        lib.vkCmdDispatchBase(cb, x, y, z, min(most[0], grid[0] - x),
                                              min(most[1], grid[1] - y), min(most[2], grid[2] - z))
        dev._launched(args)


class VulkanRecording(Recording):
    """Launches recorded into one command buffer; `replay()` submits it again."""

    def __init__(self, device: VulkanDevice):
        self.device = device
        self.cb = None
        self.keep: list = []  # the recorded arguments: their memory must outlive the recording

    def __enter__(self):
        if self.device._recording is not None:
            raise RuntimeError("already recording on this device")
        self.cb = self.device._begin(one_time=False)
        self.device._recording = self
        return self

    def __exit__(self, *exc):
        self.device._recording = None
        self.device._end(self.cb)

    def replay(self) -> None:
        self.device._submit([self.cb])

    def __del__(self):
        try:
            self.device.synchronize()
            _vk().vkFreeCommandBuffers(self.device.device, self.device.pool, 1, [self.cb])
        except Exception:
            pass  # interpreter shutdown


class VulkanDevice(Device):
    """One Vulkan device. `disable` turns off optional features (VulkanCaps field names, plus
    "native_subgroups" and "mapped"), to exercise the fallbacks on a device that has them."""

    backend = "vulkan"

    def __init__(self, index: int = 0, disable: tuple[str, ...] = ()):
        vk = _vk()
        devs = list_devices()
        if not devs:
            raise RuntimeError("no Vulkan 1.2 device found (install a driver, e.g. mesa-vulkan-drivers)")
        if index >= len(devs):
            raise RuntimeError(f"Vulkan device {index} does not exist ({len(devs)} found)")
        pd, props = self.physical, self.props = devs[index]
        self.limits = props.limits
        caps, enable, exts = self._features(pd, props, set(disable))
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(pd)
        self.family = next(i for i, f in enumerate(families)
                           if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT and f.timestampValidBits)
        self.timestamp_mask = (1 << families[self.family].timestampValidBits) - 1
        queue_info = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.family, queueCount=1,
                                                pQueuePriorities=[1.0])
        self.device = vk.vkCreateDevice(pd, vk.VkDeviceCreateInfo(
            pNext=enable, queueCreateInfoCount=1, pQueueCreateInfos=[queue_info],
            enabledExtensionCount=len(exts), ppEnabledExtensionNames=exts), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.family), None)
        self.queries = vk.vkCreateQueryPool(self.device, vk.VkQueryPoolCreateInfo(
            queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=_QUERIES), None)
        self._free_queries = list(range(_QUERIES))
        self._memory_types(pd, props, "mapped" in disable)
        self._open = None  # the command buffer launches are being recorded into
        self._open_launches = 0
        self._inflight: list[tuple] = []  # (fence, command buffers to recycle, kept arguments)
        self._spare_cbs: list = []
        self._spare_fences: list = []
        self._staging: _Mem | None = None
        self._sets: dict[tuple, object] = {}
        self._set_pool = None
        barrier = {"sType": vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                   "srcAccessMask": vk.VK_ACCESS_MEMORY_WRITE_BIT,
                   "dstAccessMask": vk.VK_ACCESS_MEMORY_READ_BIT | vk.VK_ACCESS_MEMORY_WRITE_BIT}
        self._full_barrier = vk.ffi.new("VkMemoryBarrier*", barrier)
        self._compute_barrier = vk.ffi.new("VkMemoryBarrier*", dict(
            barrier, srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT,
            dstAccessMask=vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT))
        self._after_dispatch: set = set()  # command buffers whose last command is a dispatch
        self.max_groups = tuple(props.limits.maxComputeWorkGroupCount)
        self._host_barrier = vk.ffi.new("VkMemoryBarrier*", dict(
            barrier, dstAccessMask=vk.VK_ACCESS_HOST_READ_BIT))
        uuid = bytes(props.pipelineCacheUUID).hex()
        self.cache_id = f"{props.vendorID}:{props.deviceID}:{props.driverVersion}:{uuid}"
        self.is_gpu = is_gpu(props)
        super().__init__(index, props.deviceName, caps)

    def _features(self, pd, props, disable: set[str]):
        """Caps from what the device offers (minus `disable`), and the feature chain enabling them."""
        vk = _vk()
        exts = {e.extensionName for e in vk.vkEnumerateDeviceExtensionProperties(pd, None)}
        atomic = vk.VkPhysicalDeviceShaderAtomicFloatFeaturesEXT()
        f13 = vk.VkPhysicalDeviceVulkan13Features(pNext=atomic if "VK_EXT_shader_atomic_float" in exts
                                                  else None)
        v13 = props.apiVersion >= vk.VK_MAKE_VERSION(1, 3, 0)
        f12 = vk.VkPhysicalDeviceVulkan12Features(pNext=f13 if v13 else None)
        f11 = vk.VkPhysicalDeviceVulkan11Features(pNext=f12)
        f2 = vk.VkPhysicalDeviceFeatures2(pNext=f11)
        vk.vkGetPhysicalDeviceFeatures2(pd, f2)
        core = f2.features
        sg = vk.VkPhysicalDeviceSubgroupProperties()
        sizes = vk.VkPhysicalDeviceSubgroupSizeControlProperties(pNext=sg)
        fc = vk.VkPhysicalDeviceFloatControlsProperties(pNext=sizes if v13 else sg)
        vk.vkGetPhysicalDeviceProperties2(pd, vk.VkPhysicalDeviceProperties2(pNext=fc))
        have = {
            "int64": core.shaderInt64, "int16": core.shaderInt16, "float64": core.shaderFloat64,
            "int8": f12.shaderInt8, "float16": f12.shaderFloat16,
            "storage8": f12.storageBuffer8BitAccess, "storage16": f11.storageBuffer16BitAccess,
            "bda": f12.bufferDeviceAddress and core.shaderInt64,
            "rte16": fc.shaderRoundingModeRTEFloat16,
            "atomic_add_f32_buffer": atomic.shaderBufferFloat32AtomicAdd,
            "atomic_add_f32_shared": atomic.shaderSharedFloat32AtomicAdd,
            "native_subgroups": sg.supportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT
            and sg.supportedOperations & _SUBGROUP_OPS == _SUBGROUP_OPS,
        }
        have = {k: bool(v) and k not in disable for k, v in have.items()}
        size = sg.subgroupSize if have["native_subgroups"] else 1
        self.pin_subgroups = bool(v13 and f13.subgroupSizeControl and sizes.minSubgroupSize <= size
                                  <= sizes.maxSubgroupSize and sizes.requiredSubgroupSizeStages
                                  & vk.VK_SHADER_STAGE_COMPUTE_BIT and have["native_subgroups"])
        self.full_subgroups = bool(self.pin_subgroups and f13.computeFullSubgroups)
        caps = VulkanCaps("vulkan", subgroup_size=size, fp16=have.pop("float16") or have["storage16"],
                          arch=f"{props.deviceName}|{props.driverVersion}",
                          max_push_constants=props.limits.maxPushConstantsSize,
                          float16=f12.shaderFloat16 and "float16" not in disable, **have)
        # enable exactly what the caps use
        on = vk.VK_TRUE
        atomic_on = vk.VkPhysicalDeviceShaderAtomicFloatFeaturesEXT(
            shaderBufferFloat32AtomicAdd=caps.atomic_add_f32_buffer and on,
            shaderSharedFloat32AtomicAdd=caps.atomic_add_f32_shared and on)
        use_atomic = caps.atomic_add_f32_buffer or caps.atomic_add_f32_shared
        e13 = vk.VkPhysicalDeviceVulkan13Features(
            pNext=atomic_on if use_atomic else None, subgroupSizeControl=self.pin_subgroups and on,
            computeFullSubgroups=self.full_subgroups and on)
        e12 = vk.VkPhysicalDeviceVulkan12Features(
            pNext=e13 if v13 else atomic_on if use_atomic else None,
            shaderInt8=caps.int8 and on, shaderFloat16=caps.float16 and on,
            storageBuffer8BitAccess=caps.storage8 and on, bufferDeviceAddress=caps.bda and on)
        e11 = vk.VkPhysicalDeviceVulkan11Features(pNext=e12, storageBuffer16BitAccess=caps.storage16 and on)
        core_on = vk.VkPhysicalDeviceFeatures(shaderInt64=caps.int64 and on, shaderInt16=caps.int16 and on,
                                              shaderFloat64=caps.float64 and on)
        enable = vk.VkPhysicalDeviceFeatures2(pNext=e11, features=core_on)
        self._keep_features = (atomic_on, e13, e12, e11, core_on)  # the chain's nodes must stay alive
        return caps, enable, ["VK_EXT_shader_atomic_float"] if use_atomic else []

    def _memory_types(self, pd, props, no_mapping: bool) -> None:
        """Device-local memory, mapped directly where it is host-visible on a non-discrete device."""
        vk = _vk()
        mp = vk.vkGetPhysicalDeviceMemoryProperties(pd)
        types = [mp.memoryTypes[i].propertyFlags for i in range(mp.memoryTypeCount)]
        local, visible = vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, (
            vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
        self.local_types = [i for i, f in enumerate(types) if f & local]
        direct = [i for i in self.local_types if types[i] & visible == visible]
        discrete = props.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
        self.mapped = bool(direct) and not discrete and not no_mapping
        if self.mapped:
            self.local_types = direct
        cached = vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT
        self.staging_types = sorted((i for i, f in enumerate(types) if f & visible == visible),
                                    key=lambda i: not types[i] & cached)

    # --- memory ---------------------------------------------------------------------------------

    def _create(self, nbytes: int, types: list[int], mapped: bool) -> _Mem:
        vk, d = _vk(), self.device
        usage = (vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
                 | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        if self.caps.bda:
            usage |= _ADDRESS_USAGE
        buf = vk.vkCreateBuffer(d, vk.VkBufferCreateInfo(size=nbytes, usage=usage,
                                                         sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(d, buf)
        index = next(i for i in types if req.memoryTypeBits & (1 << i))
        flags = vk.VkMemoryAllocateFlagsInfo(flags=_ADDRESS_ALLOCATION) \
            if self.caps.bda else None
        mem = vk.vkAllocateMemory(d, vk.VkMemoryAllocateInfo(pNext=flags, allocationSize=req.size,
                                                             memoryTypeIndex=index), None)
        vk.vkBindBufferMemory(d, buf, mem, 0)
        address = 0
        if self.caps.bda:
            info = vk.ffi.new("VkBufferDeviceAddressInfo*", {
                "sType": vk.VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO, "buffer": buf})
            address = vk.lib.vkGetBufferDeviceAddress(d, info)
        host = np.frombuffer(vk.vkMapMemory(d, mem, 0, nbytes, 0), np.uint8) if mapped else None
        return _Mem(buf, mem, address, host)

    def _alloc(self, nbytes):
        return self._create(nbytes, self.local_types, self.mapped)

    def _free(self, handle):
        vk = _vk()
        self.synchronize()  # queued work may still use it
        for key in [k for k in self._sets if handle in k[1]]:
            vk.vkFreeDescriptorSets(self.device, self._set_pool, 1, [self._sets.pop(key)])
        vk.vkDestroyBuffer(self.device, handle.buffer, None)
        vk.vkFreeMemory(self.device, handle.memory, None)

    def _copy(self, src, dst, src_off: int, dst_off: int, nbytes: int) -> None:
        vk = _vk()
        cb = self._command_buffer()
        self._barrier(cb, dispatch=False)
        vk.vkCmdCopyBuffer(cb, src, dst, 1, [vk.VkBufferCopy(srcOffset=src_off, dstOffset=dst_off,
                                                             size=nbytes)])
        self.synchronize()

    def _staging_buffer(self, nbytes: int) -> _Mem:
        if self._staging is None or self._staging.host.size < min(nbytes, _STAGING):
            if self._staging is not None:
                self._free(self._staging)
            self._staging = self._create(min(max(nbytes, 1 << 20), _STAGING), self.staging_types, True)
        return self._staging

    def _write(self, handle, offset, array):
        src = array.reshape(-1).view(np.uint8)
        self.synchronize()  # queued work may still read or write this memory
        if handle.host is not None:
            handle.host[offset:offset + src.size] = src
            return
        stage = self._staging_buffer(src.size)
        for k in range(0, src.size, stage.host.size):
            n = min(stage.host.size, src.size - k)
            stage.host[:n] = src[k:k + n]
            self._copy(stage.buffer, handle.buffer, 0, offset + k, n)

    def _read(self, handle, offset, out):
        dst = out.reshape(-1).view(np.uint8)
        self.synchronize()
        if handle.host is not None:
            dst[:] = handle.host[offset:offset + dst.size]
            return
        stage = self._staging_buffer(dst.size)
        for k in range(0, dst.size, stage.host.size):
            n = min(stage.host.size, dst.size - k)
            self._copy(handle.buffer, stage.buffer, offset + k, 0, n)
            dst[k:k + n] = stage.host[:n]

    def _fill_zero(self, handle, nbytes):
        cb = self._command_buffer()
        self._barrier(cb, dispatch=False)
        _vk().vkCmdFillBuffer(cb, handle.buffer, 0, _WHOLE_SIZE, 0)

    def _descriptor_set(self, kernel: VulkanKernel, args):
        """Without BDA: the descriptor set binding a launch's buffers (cached per buffer tuple)."""
        vk = _vk()
        mems = tuple(args[kernel.runtime_index[s]].alloc.handle for s in kernel.buffer_slots)
        key = (kernel.set_layout, mems)
        if key in self._sets:
            return self._sets[key]
        if self._set_pool is None:
            sizes = [vk.VkDescriptorPoolSize(type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                             descriptorCount=16384)]
            self._set_pool = vk.vkCreateDescriptorPool(self.device, vk.VkDescriptorPoolCreateInfo(
                flags=vk.VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT, maxSets=4096,
                poolSizeCount=1, pPoolSizes=sizes), None)
        ds = vk.vkAllocateDescriptorSets(self.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self._set_pool, descriptorSetCount=1, pSetLayouts=[kernel.set_layout]))[0]
        infos = [vk.VkDescriptorBufferInfo(buffer=m.buffer, offset=0, range=_WHOLE_SIZE) for m in mems]
        writes = [vk.VkWriteDescriptorSet(dstSet=ds, dstBinding=b, descriptorCount=1,
                                          descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          pBufferInfo=[info]) for b, info in enumerate(infos)]
        vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        self._sets[key] = ds
        return ds

    # --- command buffers and submission ---------------------------------------------------------

    def _begin(self, one_time: bool):
        vk = _vk()
        if one_time and self._spare_cbs:
            cb = self._spare_cbs.pop()
        else:
            cb = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
                commandPool=self.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        flags = (vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT if one_time
                 else vk.VK_COMMAND_BUFFER_USAGE_SIMULTANEOUS_USE_BIT)
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo(flags=flags))
        self._after_dispatch.discard(cb)
        return cb

    def _end(self, cb) -> None:
        """Make the buffer's writes visible to the host once it completes, and close it."""
        vk = _vk()
        vk.lib.vkCmdPipelineBarrier(cb, vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT,
                                    0, 1, self._host_barrier, 0, vk.ffi.NULL, 0, vk.ffi.NULL)
        vk.vkEndCommandBuffer(cb)

    def _barrier(self, cb, dispatch: bool) -> None:
        """Everything before in the queue completes (memory included) before what follows. Between
        two dispatches of one command buffer, a compute-to-compute barrier is enough (what preceded
        the first dispatch is ordered before it already)."""
        vk = _vk()
        if dispatch and cb in self._after_dispatch:
            stage, barrier = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, self._compute_barrier
        else:
            stage, barrier = vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, self._full_barrier
        vk.lib.vkCmdPipelineBarrier(cb, stage, stage, 0, 1, barrier, 0, vk.ffi.NULL, 0, vk.ffi.NULL)
        if dispatch:
            self._after_dispatch.add(cb)
        else:
            self._after_dispatch.discard(cb)

    def _command_buffer(self):
        """Where commands go now: the active recording, or the open batch."""
        if self._recording is not None:
            return self._recording.cb
        if self._open is None:
            self._open, self._open_launches, self._open_args = self._begin(one_time=True), 0, []
        return self._open

    def _launched(self, args) -> None:
        if self._recording is not None:
            self._recording.keep.append(args)
            return
        self._open_args.append(args)  # kept until the batch completes
        self._open_launches += 1
        if self._open_launches >= _BATCH:
            self._submit()

    def _submit(self, extra: list = ()) -> None:
        """Submit the open batch, then `extra` (recorded) command buffers, behind one fence."""
        vk = _vk()
        cbs, recycle, keep = list(extra), [], None
        if self._open is not None:
            self._end(self._open)
            cbs.insert(0, self._open)
            recycle, keep, self._open = [self._open], self._open_args, None
        if not cbs:
            return
        fence = self._spare_fences.pop() if self._spare_fences else vk.vkCreateFence(
            self.device, vk.VkFenceCreateInfo(), None)
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(commandBufferCount=len(cbs),
                                                          pCommandBuffers=cbs)], fence)
        self._inflight.append((fence, recycle, keep))
        if len(self._inflight) > 8:  # bound the host's lead over the device
            self._retire(1)

    def _retire(self, count: int) -> None:
        """Wait for the oldest `count` submissions and recycle their fences and buffers."""
        vk = _vk()
        done, self._inflight = self._inflight[:count], self._inflight[count:]
        fences = [f for f, _, _ in done]
        vk.vkWaitForFences(self.device, len(fences), fences, vk.VK_TRUE, _WHOLE_SIZE)
        vk.vkResetFences(self.device, len(fences), fences)
        self._spare_fences += fences
        for _, cbs, _ in done:
            self._spare_cbs += cbs

    # --- kernels, synchronization, timing, recording --------------------------------------------

    def _build(self, gen, constexpr_mask):
        if os.environ.get("TT_SPIRV_VALIDATE", "1") != "0":  # spirv-val, where installed
            problems = validate(gen.binary)
            if problems:
                raise BackendCompileError(f"invalid SPIR-V for kernel '{gen.entry}':\n"
                                          f"{gen.annotate_log(problems)}")
        return VulkanKernel(self, gen, constexpr_mask)

    def synchronize(self):
        self._submit()
        if self._inflight:
            self._retire(len(self._inflight))

    def event(self):
        vk = _vk()
        if not self._free_queries:
            raise RuntimeError(f"more than {_QUERIES} live Vulkan events")
        q = self._free_queries.pop()
        cb = self._command_buffer()
        vk.vkCmdResetQueryPool(cb, self.queries, q, 1)
        vk.vkCmdWriteTimestamp(cb, vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, self.queries, q)
        return VulkanEvent(self, q)

    def _timestamp(self, query: int) -> float:
        """The device time of an event, in ns (waits for it)."""
        vk = _vk()
        self.synchronize()
        out = vk.ffi.new("uint64_t[1]")
        vk.vkGetQueryPoolResults(self.device, self.queries, query, 1, 8, out, 8,
                                 vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT)
        return (out[0] & self.timestamp_mask) * self.limits.timestampPeriod

    def record(self):
        return VulkanRecording(self)
