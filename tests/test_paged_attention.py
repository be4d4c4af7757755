"""Paged attention against float64 numpy, on every conformance backend: K/V live in a shuffled,
non-contiguous pool of pages, each sequence reaches them through its page table, and a batch of
sequences of different lengths runs in one launch (ragged batch). Outputs are poisoned with NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import SMOL, poisoned, reference_attention

from tattletale.kernels.attention import decode_attention, kv_write, prefill_attention, prefill_work


def scatter_to_pages(rng, ks: list[np.ndarray], vs: list[np.ndarray], page_size: int, spare: int = 3):
    """Put each sequence's K and V rows ([T, KV, D]) into randomly chosen pages of a shared pool.

    Returns (K pool, V pool) of [n_pages·page_size, KV, D] with garbage in unused slots, and the
    page tables [S, width] (rows padded with a valid page id)."""
    n_kv, d = ks[0].shape[1:]
    need = [-(-len(x) // page_size) for x in ks]
    n_pages = sum(need) + spare
    order = iter(rng.permutation(n_pages))
    pools = [rng.standard_normal((n_pages * page_size, n_kv, d)).astype(np.float32) * 100
             for _ in range(2)]
    tables = np.full((len(ks), max(need) + 1), n_pages - 1, np.int32)
    for s in range(len(ks)):
        for j in range(need[s]):
            page = tables[s, j] = next(order)
            for pool, x in zip(pools, (ks[s], vs[s])):
                rows = x[j * page_size:(j + 1) * page_size]
                pool[page * page_size:page * page_size + len(rows)] = rows
    return pools[0], pools[1], tables


@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("window", [0, 50])
def test_paged_decode_ragged(dev, rng, page_size, window):
    n_heads, n_kv, d = SMOL["heads"], SMOL["kv"], SMOL["head_dim"]
    lens = [1, page_size - 1, page_size, page_size + 1, 700, 0]  # 0: a padding row
    ks = [rng.standard_normal((n, n_kv, d)).astype(np.float32) for n in lens]
    vs = [rng.standard_normal((n, n_kv, d)).astype(np.float32) for n in lens]
    kp, vp, tables = scatter_to_pages(rng, ks, vs, page_size)
    q = rng.standard_normal((len(lens), n_heads, d)).astype(np.float32)
    out = poisoned(dev, q.shape)
    decode_attention(dev.tensor(q), dev.tensor(kp), dev.tensor(vp),
                     dev.tensor(np.asarray(lens, np.int32)), n_kv, out=out, window=window,
                     tables=dev.tensor(tables), page_size=page_size, longest=max(lens))
    got = out.numpy()
    for b, n in enumerate(lens):
        if n == 0:
            assert np.all(got[b] == 0.0)
            continue
        ref = reference_attention(q[b:b + 1], ks[b], vs[b], n - 1, window)
        assert np.abs(got[b] - ref[0]).max() < 1e-5, b


@pytest.mark.parametrize("page_size,splits", [(16, 1), (32, 1), (16, 3)])
def test_paged_prefill_ragged(dev, rng, page_size, splits):
    """Three sequences in one launch: a fresh prompt, a prompt extending a cached prefix that ends
    mid-page, and a one-token continuation; query rows of the batch are concatenated after 5
    rows the work items do not cover (decode rows in the engine), which must stay untouched.
    With splits, each item's keys are divided over workgroups and combined."""
    n_heads, n_kv, d = SMOL["heads"], SMOL["kv"], SMOL["head_dim"]
    spans = [(0, 70), (page_size + 5, 40), (130, 1)]  # (cached tokens, new tokens) per sequence
    ks = [rng.standard_normal((c + n, n_kv, d)).astype(np.float32) for c, n in spans]
    vs = [rng.standard_normal((c + n, n_kv, d)).astype(np.float32) for c, n in spans]
    kp, vp, tables = scatter_to_pages(rng, ks, vs, page_size)
    base = 5
    total = base + sum(n for _, n in spans)
    q = rng.standard_normal((total, n_heads, d)).astype(np.float32)
    rows, work_spans = base, []
    for s, (c, n) in enumerate(spans):
        work_spans.append((rows, n, c, s))
        rows += n
    work = prefill_work(work_spans)
    out = poisoned(dev, q.shape)
    prefill_attention(dev.tensor(q), dev.tensor(kp), dev.tensor(vp), n_kv, out=out,
                      work=dev.tensor(work), tables=dev.tensor(tables), page_size=page_size,
                      row_base=base, splits=splits)
    got = out.numpy()
    assert np.isnan(got[:base]).all()
    for (row, n, c, s) in work_spans:
        ref = reference_attention(q[row:row + n], ks[s], vs[s], c)
        assert np.abs(got[row:row + n] - ref).max() < 1e-5, s


def test_kv_write_through_slots(dev, rng):
    """New tokens' K and V land in the slots the page tables name; nothing else changes."""
    n_kv, d, page_size = 3, 64, 16
    pool_k = rng.standard_normal((8 * page_size, n_kv, d)).astype(np.float32)
    pool_v = rng.standard_normal((8 * page_size, n_kv, d)).astype(np.float32)
    slots = np.array([5 * page_size + 3, 2 * page_size, 7 * page_size + 15], np.int32)
    k_new = rng.standard_normal((3, n_kv * d)).astype(np.float32)
    v_new = rng.standard_normal((3, n_kv * d)).astype(np.float32)
    kc, vc = dev.tensor(pool_k), dev.tensor(pool_v)
    kv_write(dev.tensor(k_new), dev.tensor(v_new), kc, vc, dev.tensor(slots), n_kv, d)
    want_k, want_v = pool_k.copy(), pool_v.copy()
    want_k[slots] = k_new.reshape(3, n_kv, d)
    want_v[slots] = v_new.reshape(3, n_kv, d)
    assert np.array_equal(kc.numpy(), want_k) and np.array_equal(vc.numpy(), want_v)


def test_paged_decode_f16_pool(dev, rng):
    """A 16-bit cache read through page tables at a Llama-8B head size."""
    n_heads, n_kv, d, length, page_size = 4, 2, 128, 1500, 64
    k = rng.standard_normal((length, n_kv, d)).astype(np.float16)
    v = rng.standard_normal((length, n_kv, d)).astype(np.float16)
    kp, vp, tables = scatter_to_pages(rng, [k], [v], page_size)
    q = rng.standard_normal((1, n_heads, d)).astype(np.float32)
    out = poisoned(dev, q.shape)
    decode_attention(dev.tensor(q), dev.tensor(kp.astype(np.float16)), dev.tensor(vp.astype(np.float16)),
                     dev.tensor(np.array([length], np.int32)), n_kv, out=out,
                     tables=dev.tensor(tables), page_size=page_size)
    ref = reference_attention(q, k.astype(np.float32), v.astype(np.float32), length - 1)
    assert np.abs(out.numpy() - ref).max() < 1e-5
