"""Vector loads/stores and lanes; subgroup operations, written against tt.subgroup_size()."""

import numpy as np
import pytest
from harness import assert_equal, poisoned, random_values, round_to, upload

import tattletale as tt

N4 = 70  # vectors of 4; 280 elements


@tt.kernel
def vectors(x: tt.Buffer, out4: tt.Buffer, out2: tt.Buffer, n4: tt.i32):
    i = tt.global_id(0)
    if i < n4:
        v = tt.vload(x, i, 4)
        tt.vstore(out4, i, tt.vec(v.w, v[2], v.y, v[0]))  # lanes by name and by index
        h = tt.vload(x, i * 2 + 1, 2)  # elements 4i+2, 4i+3
        tt.vstore(out2, i * 2, tt.vec(h.y + v.x, h[0]))
        tt.vstore(out2, i * 2 + 1, tt.vec(v.x, v.y))


@pytest.mark.parametrize("t", (tt.f32, tt.f16, tt.bf16, tt.i32, tt.u8, tt.i64), ids=str)
def test_vector_loads_stores(dev, rng, t):
    x = random_values(rng, N4 * 4, t, *((-1000, 1000) if t.is_int and t.bits > 8 else ()))
    out4, out2 = poisoned(dev, N4 * 4, t), poisoned(dev, N4 * 4, t)
    vectors[3, 32](upload(dev, x, t), out4, out2, N4)
    q = x.reshape(N4, 4)
    assert_equal(out4, q[:, ::-1].reshape(-1))
    ct = np.float32 if t.is_float else np.int64
    s = q[:, 3].astype(ct) + q[:, 0].astype(ct)
    s = round_to(s, t) if t.is_float else s.astype(t.np_dtype)
    assert_equal(out2, np.stack([s, q[:, 2], q[:, 0], q[:, 1]], 1).reshape(-1))


@tt.kernel
def vector_convert(x: tt.Buffer[tt.f32], h: tt.Buffer[tt.f16], b: tt.Buffer[tt.bf16],
                   n4: tt.i32, scale: tt.f32):
    i = tt.global_id(0)
    if i < n4:
        v = tt.vload(x, i, 4)
        w = tt.vec(v.x * scale, v.y * scale, v.z, v.w + 1.0)
        tt.vstore(h, i, w)  # an f32 vector stored to 16-bit buffers rounds each lane
        tt.vstore(b, i, w)


def test_vector_store_converts(dev, rng):
    x = (rng.standard_normal(N4 * 4) * 100).astype(np.float32)
    h, b = poisoned(dev, N4 * 4, tt.f16), poisoned(dev, N4 * 4, tt.bf16)
    vector_convert[3, 32](dev.tensor(x), h, b, N4, 1.5)
    q = x.reshape(N4, 4)
    w = np.stack([q[:, 0] * np.float32(1.5), q[:, 1] * np.float32(1.5), q[:, 2],
                  q[:, 3] + np.float32(1)], 1)
    assert_equal(h, w.astype(np.float16).reshape(-1))
    assert_equal(b, round_to(w, tt.bf16).reshape(-1))


# --- subgroups ----------------------------------------------------------------------------------


@tt.kernel
def subgroup_ops(x: tt.Buffer[tt.f32], k: tt.Buffer[tt.i32], u: tt.Buffer[tt.u32],
                 of: tt.Buffer[tt.f32], oi: tt.Buffer[tt.i32], ou: tt.Buffer[tt.u32]):
    SG = tt.subgroup_size()  # a compile-time int: 32 on CUDA, 1 where there are no subgroups
    # a 2-D block (16, 4): subgroups follow the linear local id
    i = tt.group_id(0) * 64 + tt.local_id(1) * 16 + tt.local_id(0)
    lane = tt.subgroup_local_id()
    v = x[i]
    a = k[i]
    b = u[i]
    of[i * 6] = tt.shuffle(v, (lane + 1) % SG)
    of[i * 6 + 1] = tt.shuffle_xor(v, SG - 1)
    of[i * 6 + 2] = tt.subgroup_sum(v)
    of[i * 6 + 3] = tt.subgroup_max(v)
    of[i * 6 + 4] = tt.subgroup_min(v)
    of[i * 6 + 5] = tt.subgroup_broadcast(v, SG - 1)
    oi[i * 6] = tt.shuffle(a, SG - 1 - lane)
    oi[i * 6 + 1] = tt.subgroup_sum(a)
    oi[i * 6 + 2] = tt.subgroup_max(a)
    oi[i * 6 + 3] = tt.subgroup_min(a)
    oi[i * 6 + 4] = lane
    oi[i * 6 + 5] = tt.subgroup_id()
    ou[i * 4] = tt.subgroup_sum(b)
    ou[i * 4 + 1] = tt.subgroup_max(b)
    ou[i * 4 + 2] = tt.subgroup_min(b)
    ou[i * 4 + 3] = tt.shuffle_xor(b, 1 if SG > 1 else 0)


def test_subgroup_operations(dev, rng):
    groups = 3
    n = groups * 64
    sg = dev.caps.subgroup_size
    x = rng.integers(-1000, 1000, n).astype(np.float32)  # integers: sums are order-independent
    k = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    u = rng.integers(0, 1 << 24, n).astype(np.uint32)
    of, oi, ou = poisoned(dev, n * 6, tt.f32), poisoned(dev, n * 6, tt.i32), poisoned(dev, n * 4, tt.u32)
    subgroup_ops[groups, (16, 4)](dev.tensor(x), dev.tensor(k), dev.tensor(u), of, oi, ou)

    def per_lane(a, f):  # f applied over each subgroup, broadcast back to its lanes
        g = a.reshape(-1, sg)
        return np.repeat(f(g, axis=1), sg)

    lane = np.arange(n) % sg
    base = np.arange(n) - lane
    xor1 = lane ^ (1 if sg > 1 else 0)
    assert_equal(of, np.stack([x[base + (lane + 1) % sg], x[base + (lane ^ (sg - 1))],
                               per_lane(x, np.sum), per_lane(x, np.max), per_lane(x, np.min),
                               x[base + sg - 1]], 1).reshape(-1))
    assert_equal(oi, np.stack([k[base + sg - 1 - lane], per_lane(k.astype(np.int64), np.sum),
                               per_lane(k, np.max), per_lane(k, np.min), lane,
                               (np.arange(n) % 64) // sg], 1).reshape(-1))
    assert_equal(ou, np.stack([per_lane(u.astype(np.uint64), np.sum), per_lane(u, np.max),
                               per_lane(u, np.min), u[base + xor1]], 1).reshape(-1))


def test_subgroup_size_is_compile_time(dev):
    @tt.kernel
    def sg_size(out: tt.Buffer[tt.i32]):
        tt.static_assert(tt.subgroup_size() >= 1)
        out[tt.global_id(0)] = tt.subgroup_size()

    out = poisoned(dev, 8, tt.i32)
    sg_size[1, 8](out)
    assert_equal(out, np.full(8, dev.caps.subgroup_size))
    assert "= 32;" in sg_size.source("cuda")

