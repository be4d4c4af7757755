"""The builtins a kernel may call: `tt.global_id`, `tt.exp`, `tt.barrier`, `tt.atomic_add`, ….

These objects only mark names for the front end, which lowers each call to IR; calling one from
ordinary Python raises. The table `BUILTINS` is the single list of what the language offers.
"""

from __future__ import annotations


class Builtin:
    """A DSL builtin function; `kind` groups them for the front end's lowering."""

    def __init__(self, name: str, kind: str, doc: str):
        self.name = name
        self.kind = kind
        self.__doc__ = doc

    def __call__(self, *args, **kwargs):
        raise TypeError(f"tt.{self.name}() can only be called inside @tt.kernel / @tt.func code")

    def __repr__(self) -> str:
        return f"tt.{self.name}"


BUILTINS: dict[str, Builtin] = {}


def _define(kind: str, names: str, doc: str) -> None:
    for name in names.split():
        BUILTINS[name] = Builtin(name, kind, doc)


_define("id", "global_id local_id group_id local_size num_groups global_size",
        "Thread/workgroup indices and sizes in dimension 0, 1 or 2 (i32).")
_define("math1", "exp exp2 log log2 sqrt rsqrt sin cos tanh floor ceil erf",
        "Elementwise float math (computed in f32 for 16-bit floats).")
_define("absfn", "abs", "Absolute value of a float or integer.")
_define("minmax", "min max", "Minimum/maximum; for floats a NaN operand yields the other operand.")
_define("fma", "fma", "Fused multiply-add a*b+c with one rounding.")
_define("clamp", "clamp", "clamp(x, lo, hi) = min(max(x, lo), hi).")
_define("select", "select", "select(cond, a, b): a where cond else b; both operands are evaluated.")
_define("pow", "pow", "pow(x, y) for floats.")
_define("mul_rn", "mul_rn", "mul_rn(a, b): a*b rounded on its own, never fused into an FMA by the compiler.")
_define("barrier", "barrier", "Workgroup barrier; orders shared and global memory within the workgroup.")
_define("atomic", "atomic_add atomic_min atomic_max atomic_xchg atomic_cas",
        "Atomic update of buf[index] (a buffer or shared array); returns the previous value.")
_define("vload", "vload", "vload(buf, i, n): elements n*i … n*i+n-1 of buf as an n-lane vector (n = 2, 4).")
_define("vstore", "vstore", "vstore(buf, i, v): store an n-lane vector at elements n*i … n*i+n-1.")
_define("vec", "vec", "vec(a, b[, c, d]): build a 2- or 4-lane vector.")
_define("shared", "shared", "shared(shape, dtype[, swizzle=True]): a workgroup-shared array with a "
        "compile-time shape; swizzled 2-D arrays (rows of 32, 64 or 128 bytes) permute each row's "
        "16-byte chunks, the layout tt.wgmma reads.")
_define("array", "array", "array(shape, dtype): a private (per-thread) array with a compile-time shape.")
_define("bitcast", "bitcast", "bitcast(x, dtype): reinterpret the bits of x as dtype (same width).")
_define("cast", "cast", "cast(x, dtype): value conversion; tt.f16(x) etc. are shorthands.")
_define("subgroup_info", "subgroup_size subgroup_id subgroup_local_id",
        "Subgroup (warp) size, the subgroup's index in the workgroup, and the lane index in it.")
_define("subgroup_shuffle", "shuffle shuffle_xor subgroup_broadcast",
        "Read a value from another lane of the subgroup: by lane index, by lane xor mask, or from one lane.")
_define("subgroup_reduce", "subgroup_sum subgroup_max subgroup_min",
        "Reduce a value over the subgroup; every lane receives the result.")
_define("mma_load", "mma_load_a mma_load_b mma_load_bt",
        "mma_load_a(s, row, col): the 16×16 A tile s[row:row+16, col:col+16] of a 2-D shared f16/bf16 "
        "array, as a fragment of the subgroup; mma_load_b reads B[k][n] = s[row + k, col + n], "
        "mma_load_bt B[k][n] = s[row + n, col + k] (B stored transposed, like a weight's rows).")
_define("mma_zeros", "mma_zeros", "mma_zeros(): an f32 accumulator fragment of zeros.")
_define("mma", "mma", "mma(a, b, c): c + a @ b on 16×16×16 fragments, f32 accumulation, by the "
        "whole subgroup (tensor cores on CUDA).")
_define("mma_coord", "mma_coord", "mma_coord(e): (row, column) in the 16×16 tile of element e of "
        "this lane's accumulator share (acc[e], e < len(acc)).")
_define("wgmma", "wgmma",
        "wgmma(acc, a, (ra, ka), b, (rb, kb)[, accumulate]): start acc += A @ B (acc = A @ B where "
        "accumulate is false) on a warpgroup's 64×n accumulator, A[m][k] = a[ra + m, ka + k] (64×16), "
        "B[k][n] = b[rb + n, kb + k] (16×n, stored like weight rows), a and b swizzled shared "
        "f16/bf16 arrays; asynchronous until tt.wgmma_wait.")
_define("wgmma_zeros", "wgmma_zeros", "wgmma_zeros(n): a warpgroup's 64×n f32 accumulator of zeros.")
_define("wgmma_commit", "wgmma_commit", "wgmma_commit(): close this warpgroup's group of tt.wgmma.")
_define("wgmma_wait", "wgmma_wait",
        "wgmma_wait(n): wait until at most n of this warpgroup's tt.wgmma groups are in flight.")
_define("wgmma_coord", "wgmma_coord", "wgmma_coord(e): (row, column) in the 64×n tile of element e "
        "of this lane's share of a warpgroup accumulator (acc[e], e < len(acc)).")
_define("async_copy", "async_copy",
        "async_copy(dst, dst_index, src, src_index, n[, pred]): start copying n elements (4, 8 or "
        "16 bytes) from a buffer to a shared array; zeros where pred is false.")
_define("async_commit", "async_commit", "async_commit(): close this thread's group of async copies.")
_define("async_wait", "async_wait",
        "async_wait(n): wait until at most n of this thread's copy groups are in flight.")
_define("static_range", "static_range", "range(...) unrolled at compile time; bounds must be constants.")
_define("static_assert", "static_assert", "static_assert(cond, msg): a compile-time check.")

globals().update(BUILTINS)
