"""Workgroup-wide reductions, built from subgroup reductions and a shared-memory tree.

Correct for any subgroup size the device reports (including 1, where the tree does all the
work); the workgroup is one-dimensional with BLOCK threads, BLOCK a power of two.
"""

import tattletale as tt


@tt.func
def block_reduce(v, BLOCK, OP):
    """Reduce f32 `v` over the workgroup with OP ("sum", "max" or "min"); every thread gets the
    result."""
    SG = tt.subgroup_size()
    if OP == "sum":
        r = tt.subgroup_sum(v)
    elif OP == "max":
        r = tt.subgroup_max(v)
    else:
        r = tt.subgroup_min(v)
    if BLOCK > SG:
        NSG = BLOCK // SG
        part = tt.shared((NSG,), tt.f32)
        if tt.subgroup_local_id() == 0:
            part[tt.subgroup_id()] = r
        tt.barrier()
        t = tt.local_id(0)
        stride = tt.i32(NSG // 2)
        while stride > 0:  # a loop, not unrolled: one barrier keeps CPU compilers (PoCL) fast
            if t < stride:
                if OP == "sum":
                    part[t] += part[t + stride]
                elif OP == "max":
                    part[t] = max(part[t], part[t + stride])
                else:
                    part[t] = min(part[t], part[t + stride])
            tt.barrier()
            stride = stride // 2
        r = part[0]
        tt.barrier()  # part may be reused by the caller's next reduction
    return r


@tt.func
def block_sum(v, BLOCK):
    return block_reduce(v, BLOCK, "sum")


@tt.func
def block_max(v, BLOCK):
    return block_reduce(v, BLOCK, "max")


@tt.func
def block_min(v, BLOCK):
    return block_reduce(v, BLOCK, "min")


def pick_block(n: int, lo: int = 32, hi: int = 256) -> int:
    """A power-of-two workgroup size for rows of n elements."""
    b = lo
    while b < hi and b < n:
        b *= 2
    return b
