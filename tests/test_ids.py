"""Thread and workgroup ids and sizes in three dimensions."""

import numpy as np
from harness import assert_equal, poisoned

import tattletale as tt

FIELDS = ("global_id", "local_id", "group_id", "local_size", "num_groups", "global_size")


@tt.kernel
def ids3d(out: tt.Buffer[tt.i32]):
    w = tt.global_size(0)
    h = tt.global_size(1)
    lin = (tt.global_id(2) * h + tt.global_id(1)) * w + tt.global_id(0)
    o = lin * 18
    for d in tt.static_range(3):
        out[o + d] = tt.global_id(d)
        out[o + 3 + d] = tt.local_id(d)
        out[o + 6 + d] = tt.group_id(d)
        out[o + 9 + d] = tt.local_size(d)
        out[o + 12 + d] = tt.num_groups(d)
        out[o + 15 + d] = tt.global_size(d)


def expected_ids(grid, block) -> np.ndarray:
    gsize = [g * b for g, b in zip(grid, block)]
    z, y, x = np.meshgrid(*(np.arange(s) for s in reversed(gsize)), indexing="ij")
    gid = np.stack([x, y, z], -1).reshape(-1, 3)  # linear order: x fastest
    blk = np.array(block)
    cols = [gid, gid % blk, gid // blk, np.broadcast_to(blk, gid.shape),
            np.broadcast_to(np.array(grid), gid.shape), np.broadcast_to(np.array(gsize), gid.shape)]
    return np.concatenate(cols, axis=1).astype(np.int32)


def test_ids_and_sizes_3d(dev):
    results = []
    for grid, block in (((3, 2, 2), (4, 2, 3)), ((5,), (7,)), ((2, 3), (1, 5))):
        total = int(np.prod(grid)) * int(np.prod(block))
        out = poisoned(dev, total * 18, tt.i32)
        ids3d[grid, block](out)
        results.append((out, grid + (1,) * (3 - len(grid)), block + (1,) * (3 - len(block))))
    for out, grid, block in results:
        assert_equal(out, expected_ids(grid, block).reshape(-1), err_msg=f"{grid} {block}")
