"""Page pool, page tables and the prefix cache: unit tests, a hypothesis state machine against a
reference dict of token tuples (verify() after every step, no page leaks), and a slow soak test."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tattletale.cache import (
    KVLayout,
    OutOfPages,
    PagePool,
    PageTable,
    PrefixCache,
    device_tables,
    kv_budget,
)

# ---------------------------------------------------------------- page pool


def test_pool_alloc_free_and_counts():
    pool = PagePool(8, 4)
    a = pool.alloc(3)
    assert a == [0, 1, 2] and pool.n_free == 5 and pool.n_used == 3
    pool.incref([1, 1])
    assert pool.refcount(1) == 3
    assert pool.decref(a) == 2 and pool.refcount(1) == 2
    pool.verify(owners=[[1, 1]])
    assert pool.decref([1, 1]) == 1 and pool.n_free == 8
    pool.verify(owners=[])


def test_pool_out_of_pages_changes_nothing():
    pool = PagePool(4, 16)
    pool.alloc(3)
    with pytest.raises(OutOfPages) as err:
        pool.alloc(2)
    assert (err.value.wanted, err.value.free) == (2, 1) and pool.n_free == 1
    pool.verify()


def test_pool_rejects_use_after_free_and_double_free():
    pool = PagePool(4, 16)
    (p,) = pool.alloc(1)
    pool.decref([p])
    with pytest.raises(ValueError):
        pool.decref([p])
    with pytest.raises(ValueError):
        pool.incref([0, p])  # nothing changes: page 0 is also free
    pool.verify()


def test_pool_verify_catches_leaks_and_corruption():
    pool = PagePool(4, 2)
    pages = pool.alloc(2)
    with pytest.raises(AssertionError, match="mismatch"):
        pool.verify(owners=[pages[:1]])  # page pages[1] is referenced by nobody: a leak
    pool._refs[3] = 1  # counted yet on the free list
    with pytest.raises(AssertionError, match="page 3"):
        pool.verify()


def test_layout_and_budget():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16
    layout = KVLayout(n_layers=30, n_kv_heads=3, head_dim=64, dtype_bytes=2, page_size=16)
    assert layout.bytes_per_token == 2 * 30 * 3 * 64 * 2 == 23040
    assert layout.bytes_per_page == 16 * 23040
    assert layout.buffer_shape(10) == (30, 10, 16, 3, 64)
    pool = PagePool.from_budget(layout, kv_budget("1GiB", 0))
    assert pool.n_pages == 2**30 // (16 * 23040) == 2912 and pool.page_size == 16
    assert pool.bytes_per_page == layout.bytes_per_page


@pytest.mark.parametrize("spec, free, expected", [
    (0.5, 1000, 500), ("0.9", 1000, 900), ("1.0", 1000, 1000), (4096, 0, 4096), ("4096", 0, 4096),
    ("2e9", 0, 2 * 10**9), ("8GiB", 0, 8 * 2**30), ("512MB", 0, 512 * 10**6), ("1.5Ki", 0, 1536),
])
def test_kv_budget_specs(spec, free, expected):
    assert kv_budget(spec, free) == expected


@pytest.mark.parametrize("spec", ["", "lots", "1.5", 0, -3, 0.0, "0"])
def test_kv_budget_rejects(spec):
    with pytest.raises(ValueError):
        kv_budget(spec, 1000)


# ---------------------------------------------------------------- page tables


def test_table_grows_page_by_page():
    pool = PagePool(10, 4)
    t = PageTable(pool)
    assert t.pages_needed(0) == 0 and t.pages_needed(1) == 1 and t.pages_needed(5) == 2
    assert t.append(3) == [] and len(t) == 1 and t.n_tokens == 3
    assert t.pages_needed(1) == 0 and t.pages_needed(2) == 1
    t.append(6)
    assert t.n_tokens == 9 and t.pages == (0, 1, 2)
    table = t.device_table(width=5)
    assert table.dtype == np.int32 and table.tolist() == [0, 1, 2, 0, 0]
    t.truncate(4)
    assert t.pages == (0,) and pool.n_free == 9
    t.free()
    assert t.pages == () and t.n_tokens == 0 and pool.n_free == 10


def test_table_append_is_atomic_when_out_of_pages():
    pool = PagePool(2, 4)
    t = PageTable(pool)
    t.append(5)
    with pytest.raises(OutOfPages):
        t.append(4)
    assert t.n_tokens == 5 and len(t) == 2
    pool.verify(owners=[t.pages])


def test_table_constructor_checks_the_page_count():
    pool = PagePool(4, 4)
    pages = pool.alloc(2)
    with pytest.raises(ValueError):
        PageTable(pool, pages, 9)
    t = PageTable(pool, pages, 7)
    assert pool.refcount(pages[0]) == 2 and t.n_tokens == 7


def test_fork_copies_the_shared_partial_page_on_write():
    pool = PagePool(8, 4)
    a = PageTable(pool)
    a.append(6)  # pages 0 (full) and 1 (half)
    b = a.fork()
    assert pool.refcount(0) == pool.refcount(1) == 2
    copies = b.append(1)  # b writes slot 2 of page 1: shared, so it gets a copy first
    assert copies == [(1, 2)] and b.pages == (0, 2) and pool.refcount(1) == 1
    assert a.append(1) == []  # page 1 is a's alone now: written in place
    assert a.append(1) == [] and a.pages == (0, 1) and a.n_tokens == 8
    c = a.fork()
    assert c.append(4) == []  # a's last page is full: new tokens go to a new page, nothing copied
    pool.verify(owners=[a.pages, b.pages, c.pages])
    for t in (a, b, c):
        t.free()
    assert pool.n_free == 8


def test_truncating_into_a_cached_page_copies_before_writing():
    pool = PagePool(8, 4)
    cache = PrefixCache(pool)
    t = PageTable(pool)
    t.append(8)
    cache.insert(range(8), t.pages)
    t.truncate(6)  # the last page is now partial, and the cache holds it
    assert t.pages_needed(1) == 1
    (src, dst), = t.append(1)
    assert src == 1 and cache.match(range(8)).pages == (0, 1)
    pool.verify(owners=[list(cache.cached_pages()), t.pages])


def test_evicting_the_cached_copy_of_a_partial_page_saves_the_copy():
    pool = PagePool(8, 4)
    cache = PrefixCache(pool)
    t = PageTable(pool)
    t.append(8)
    cache.insert(range(8), t.pages)
    t.truncate(6)
    assert t.pages_needed(1) == 1
    assert cache.evict(8) == 0 and cache.n_pages == 0  # both pages stay, now the table's alone
    assert t.pages_needed(1) == 0 and t.append(1) == []
    pool.verify(owners=[t.pages])


def test_device_tables_batch():
    pool = PagePool(10, 2)
    a, b = PageTable(pool), PageTable(pool)
    a.append(5)
    b.append(1)
    out = device_tables([a, b], pad=7)
    assert out.dtype == np.int32 and out.tolist() == [[0, 1, 2], [3, 7, 7]]
    assert device_tables([a, b], width=4).shape == (2, 4)
    with pytest.raises(ValueError):
        device_tables([a], width=2)


# ---------------------------------------------------------------- prefix cache


def make(n_pages: int = 64, ps: int = 4) -> tuple[PagePool, PrefixCache]:
    pool = PagePool(n_pages, ps)
    return pool, PrefixCache(pool)


def cache_sequence(cache: PrefixCache, tokens) -> tuple[int, ...]:
    """Run a request to completion the way the engine will: match, allocate, insert, release, free."""
    m = cache.match(tokens)
    t = PageTable(cache.pool, m.pages)
    t.append(len(tokens) - m.n_tokens)
    pages = cache.insert(tokens, t.pages).pages
    cache.release(m)
    t.free()
    cache.verify()
    return pages


@pytest.mark.parametrize("ps", [1, 4, 16])
@pytest.mark.parametrize("cached", [0, 1, 2, 3, 5])  # the cached sequence, in pages
def test_match_lengths_around_page_boundaries(ps, cached):
    pool, cache = make(64, ps)
    tokens = list(range(100, 100 + cached * ps + ps // 2))  # a partial last page too
    pages = cache_sequence(cache, tokens)
    assert cache.n_pages == cached
    for n in sorted({0, ps - 1, ps, ps + 1, 2 * ps - 1, 2 * ps, 2 * ps + 1, 3 * ps, len(tokens)}):
        if n > len(tokens):
            continue
        m = cache.match(tokens[:n] + [7] * 5)  # 7 never follows in the cached sequence
        assert m.n_tokens == min(n // ps, cached) * ps and m.pages == pages[:m.n_tokens // ps]
        cache.release(m)
    cache.verify()


@pytest.mark.parametrize("ps", [1, 4, 16])
def test_prefix_shorter_than_a_page_is_never_shared(ps):
    pool, cache = make(64, ps)
    tokens = list(range(3 * ps))
    pages = cache_sequence(cache, tokens)
    for n in range(0, 3 * ps + 1):
        m = cache.match(tokens[:n])
        assert m.n_tokens == (n // ps) * ps and m.pages == pages[:n // ps]
        cache.release(m)
    m = cache.match([tokens[0] + 1] + tokens[1:])  # differs in the first token: nothing shared
    assert m.n_tokens == 0 and m.pages == ()
    cache.release(m)


def test_partial_last_page_is_not_inserted():
    pool, cache = make(8, 4)
    t = PageTable(pool)
    t.append(10)
    result = cache.insert(list(range(10)), t.pages)
    assert result.n_tokens == 8 and result.pages == t.pages[:2] and not result.locked
    assert cache.n_pages == 2 and pool.refcount(t.pages[2]) == 1
    t.free()
    assert pool.n_free == 6
    cache.verify()


def test_divergence_splits_a_node():
    pool, cache = make(64, 2)
    a = cache_sequence(cache, [1, 1, 2, 2, 3, 3, 4, 4])
    assert cache.n_nodes == 1
    b = cache_sequence(cache, [1, 1, 2, 2, 9, 9])  # diverges at page 2
    assert cache.n_nodes == 3 and cache.n_pages == 5 and b[:2] == a[:2]
    c = cache_sequence(cache, [1, 1, 2, 5])  # diverges inside page 1: only page 0 is shared
    assert cache.n_nodes == 5 and cache.n_pages == 6 and c[0] == a[0] and c[1] not in a
    d = cache_sequence(cache, [8, 8])  # a new first page: a second child of the root
    assert cache.n_nodes == 6 and len(cache.root.children) == 2 and d[0] not in a
    snap = cache.snapshot()
    assert snap[(1, 1)] == a[0] and snap[(1, 1, 2, 2, 9, 9)] == b[2] and snap[(8, 8)] == d[0]
    assert len(snap) == cache.n_pages


def test_insert_keeps_the_cached_pages_and_returns_them():
    pool, cache = make(16, 2)
    first = cache_sequence(cache, [1, 2, 3, 4])
    t = PageTable(pool)
    t.append(6)  # the same tokens computed again into other pages, then two more
    result = cache.insert([1, 2, 3, 4, 5, 6], t.pages, lock=True)
    assert result.pages == first + t.pages[2:] and result.locked and result.n_tokens == 6
    assert pool.refcount(t.pages[0]) == 1  # the duplicate stays the caller's alone
    t.free()
    cache.release(result)
    assert pool.n_used == cache.n_pages == 3
    cache.verify()


def test_insert_rejects_bad_pages():
    pool, cache = make(16, 2)
    t = PageTable(pool)
    t.append(4)
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3, 4], t.pages[:1])
    cache.insert([1, 2, 3, 4], t.pages)
    with pytest.raises(ValueError):
        cache.insert([5, 6], t.pages[1:])  # already cached under another prefix
    cache.verify()


def test_release_errors():
    pool, cache = make(16, 2)
    m = cache.match([1, 2])
    cache.release(m)
    with pytest.raises(ValueError):
        cache.release(m)
    with pytest.raises(ValueError):
        cache.release(cache.insert([], []))
    other = PrefixCache(PagePool(4, 2))
    h = other.match([])
    with pytest.raises(ValueError):
        cache.release(h)
    assert cache.n_handles == 0 and other.n_handles == 1


def test_locked_pages_are_not_evicted():
    pool, cache = make(16, 2)
    cache_sequence(cache, [1, 1, 2, 2, 3, 3])
    m = cache.match([1, 1, 2, 2, 3])  # locks the node: two pages matched, three pinned
    assert m.pages and cache.evictable_pages == 0
    assert cache.evict(10) == 0 and cache.n_pages == 3
    cache.release(m)
    assert cache.evictable_pages == 3
    assert cache.evict(10) == 3 and pool.n_free == 16 and cache.n_nodes == 0
    cache.verify()


def test_eviction_is_least_recently_used_first_and_tail_first():
    pool, cache = make(32, 2)
    a = cache_sequence(cache, [1, 1, 2, 2, 3, 3])
    b = cache_sequence(cache, [4, 4, 5, 5])
    c = cache_sequence(cache, [6, 6])
    cache.release(cache.match([1, 1]))  # a is now the most recently used, b the least
    assert cache.evict(1) == 1
    assert cache.snapshot().get((4, 4, 5, 5)) is None and cache.snapshot()[(4, 4)] == b[0]
    assert cache.evict(2) == 2  # the rest of b, then c
    snap = cache.snapshot()
    assert (4, 4) not in snap and (6, 6) not in snap and c[0] not in snap.values()
    assert cache.evict(2) == 2  # a's tail first
    assert cache.snapshot() == {(1, 1): a[0]}
    cache.verify()


def test_children_outlive_their_parents_in_lru_order():
    """A parent is used whenever a child is: leaves go first, and a shared prefix stays warm."""
    pool, cache = make(32, 2)
    cache_sequence(cache, [1, 1, 2, 2])
    cache_sequence(cache, [1, 1, 3, 3])
    cache_sequence(cache, [9, 9])
    cache.release(cache.match([1, 1, 2, 2]))
    cache.evict(2)  # [9 9] is the least recently used leaf, then [3 3]
    assert set(cache.snapshot()) == {(1, 1), (1, 1, 2, 2)}
    cache.verify()


def test_eviction_compresses_single_child_chains():
    pool, cache = make(32, 2)
    cache_sequence(cache, [1, 1, 2, 2, 3, 3])
    cache_sequence(cache, [1, 1, 4, 4])
    assert cache.n_nodes == 3
    cache.release(cache.match([1, 1, 2, 2, 3, 3]))
    cache.evict(1)  # [4 4] goes; [1 1] and [2 2 3 3] merge back into one node
    assert cache.n_nodes == 1 and cache.snapshot().keys() == {(1, 1), (1, 1, 2, 2), (1, 1, 2, 2, 3, 3)}
    cache.verify()


def test_a_lock_ending_at_a_node_keeps_it_until_released():
    pool, cache = make(32, 2)
    cache_sequence(cache, [1, 1, 2, 2])
    cache_sequence(cache, [1, 1, 3, 3])
    m = cache.match([1, 1, 5])  # ends at the shared node [1 1]
    cache.release(cache.match([1, 1, 2, 2]))
    cache.evict(1)  # [3 3] goes; [1 1] keeps its one child: a handle ends there
    assert cache.n_nodes == 2
    cache.verify()
    cache.release(m)  # now it merges
    assert cache.n_nodes == 1
    cache.verify()


def test_inserting_an_extension_grows_an_unlocked_leaf_in_place():
    pool, cache = make(32, 2)
    cache_sequence(cache, [1, 1, 2, 2])
    cache_sequence(cache, [1, 1, 2, 2, 3, 3, 4])
    assert cache.n_nodes == 1 and cache.n_pages == 3
    m = cache.match([1, 1, 2, 2, 3, 3])
    cache_sequence(cache, [1, 1, 2, 2, 3, 3, 4, 4])  # the leaf is locked: a child is added
    assert cache.n_nodes == 2
    cache.release(m)
    assert cache.n_nodes == 1
    cache.verify()


def test_running_sequence_moves_its_lock_forward():
    """The engine's flow for a running sequence: match, compute, insert with a lock, release the old."""
    pool, cache = make(32, 4)
    prompt = list(range(10))
    m = cache.match(prompt[:-1])
    t = PageTable(pool, m.pages)
    t.append(len(prompt) - m.n_tokens)
    h = cache.insert(prompt, t.pages, lock=True)
    cache.release(m)
    assert cache.evictable_pages == 0 and cache.evict(100) == 0
    t.append(7)
    h2 = cache.insert(list(range(17)), t.pages, lock=True)
    cache.release(h)
    assert h2.n_tokens == 16 and cache.n_pages == 4 and cache.n_nodes == 1
    t.free()
    cache.release(h2)
    assert cache.evict(100) == 4 and pool.n_free == 32
    cache.verify()


def test_evicting_pages_a_table_still_holds_frees_nothing():
    pool, cache = make(8, 2)
    t = PageTable(pool)
    t.append(4)
    cache.insert([1, 2, 3, 4], t.pages)  # unlocked, but the table still uses the pages
    assert cache.evict(2) == 0 and cache.n_pages == 0 and pool.n_used == 2
    pool.verify(owners=[t.pages])
    t.free()


def test_numpy_tokens_and_empty_queries():
    pool, cache = make(16, 4)
    tokens = np.arange(12, dtype=np.int64)
    cache_sequence(cache, tokens)
    m = cache.match(np.arange(9, dtype=np.int32))
    assert m.n_tokens == 8
    cache.release(m)
    m = cache.match([])
    assert m.n_tokens == 0 and m.pages == () and m.locked
    cache.release(m)
    assert cache.snapshot()[tuple(range(12))] is not None
    assert all(type(t) is int for key in cache.snapshot() for t in key)


def test_verify_catches_broken_invariants():
    pool, cache = make(32, 2)
    cache_sequence(cache, [1, 1, 2, 2])
    cache_sequence(cache, [1, 1, 3, 3])
    cache.verify()
    node = cache.root.children.root
    node.lock += 1
    with pytest.raises(AssertionError, match="lock"):
        cache.verify()
    node.lock -= 1
    leaf = node.children.root
    leaf.up = cache.root
    with pytest.raises(AssertionError, match="parent link"):
        cache.verify()
    leaf.up = node
    node.children.root.rank += 5
    with pytest.raises(AssertionError, match="rank"):
        cache.verify()


def test_no_leaks_after_many_requests():
    """After any mix of requests finishes, every page is free or cached; evicting all empties the pool."""
    rng = random.Random(5)
    pool, cache = make(256, 4)
    system = [rng.randrange(50) for _ in range(13)]
    live = []
    for step in range(400):
        if live and (rng.random() < 0.4 or len(live) > 8):
            tokens, t, m = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.8:
                cache.insert(tokens, t.pages)
            cache.release(m)
            t.free()
        else:
            tokens = system[:rng.randrange(len(system) + 1)]
            tokens += [rng.randrange(3) for _ in range(rng.randrange(20))]
            m = cache.match(tokens)
            t = PageTable(pool, m.pages)
            need = t.pages_needed(len(tokens) - m.n_tokens)
            if need > pool.n_free:
                cache.evict(need - pool.n_free)
            t.append(len(tokens) - m.n_tokens)
            live.append((tokens, t, m))
        if step % 20 == 0:
            cache.verify()
            pool.verify(owners=[list(cache.cached_pages())] + [t.pages for _, t, _ in live])
    for _, t, m in live:
        cache.release(m)
        t.free()
    assert pool.n_used == cache.n_pages and cache.n_handles == 0
    pool.verify(owners=[list(cache.cached_pages())])
    cache.evict(cache.evictable_pages)
    assert pool.n_free == pool.n_pages and cache.n_nodes == 0 and cache.n_pages == 0
    cache.verify()


# ---------------------------------------------------------------- state machine


class Seq:
    """A live sequence of the model: its tokens, page table, lock, and what the lock covers."""

    def __init__(self, tokens: list[int], table: PageTable, handle, locked_tokens: tuple[int, ...]):
        self.tokens = tokens
        self.table = table
        self.handle = handle
        self.locked_tokens = locked_tokens  # whole pages: they must stay cached while locked


class PrefixCacheMachine(RuleBasedStateMachine):
    """Random interleavings of match/insert/release/evict/alloc against a dict of token tuples.

    The reference maps every cached whole-page prefix (a token tuple) to the page holding its
    last page of tokens. After every step: cache.verify(), the pool's counts equal the cache's
    pages plus every live table's, and the cache's contents equal the reference.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ref: dict[tuple[int, ...], int] = {}
        self.live: list[Seq] = []

    @initialize(ps=st.sampled_from([1, 2, 3, 4]), n_pages=st.integers(3, 24))
    def setup(self, ps, n_pages):
        self.ps = ps
        self.pool = PagePool(n_pages, ps)
        self.cache = PrefixCache(self.pool)

    def tokens(self, data, most_pages: int = 5) -> list[int]:
        return data.draw(st.lists(st.integers(0, 2), max_size=most_pages * self.ps + 2), label="tokens")

    def expected_match(self, tokens) -> tuple[int, ...]:
        ps, pages = self.ps, []
        while (len(pages) + 1) * ps <= len(tokens):
            page = self.ref.get(tuple(tokens[:(len(pages) + 1) * ps]))
            if page is None:
                break
            pages.append(page)
        return tuple(pages)

    def check_match(self, tokens, m) -> None:
        expect = self.expected_match(tokens)
        assert m.pages == expect and m.n_tokens == len(expect) * self.ps

    def evict(self, n: int) -> None:
        """Evict through the cache, then check what went and re-read the reference."""
        before = self.ref
        freed = self.cache.evict(n)
        after = self.cache.snapshot()
        assert after.items() <= before.items()
        removed = [before[k] for k in before.keys() - after.keys()]
        held = {p for s in self.live for p in s.table.pages}
        assert freed == sum(p not in held for p in removed)
        assert freed <= n and len(removed) >= min(n, freed)
        if freed < n:
            assert self.cache.evictable_pages == 0
        for s in self.live:  # locked prefixes stay
            for j in range(1, len(s.locked_tokens) // self.ps + 1):
                assert s.locked_tokens[:j * self.ps] in after
        self.ref = after

    def reserve(self, table: PageTable, n: int) -> bool:
        """Room for n more tokens in `table`, evicting if needed (the scheduler's move)."""
        need = table.pages_needed(n)
        if need > self.pool.n_free:
            self.evict(need - self.pool.n_free)
            need = table.pages_needed(n)  # less if eviction unshared a partial last page
        if need > self.pool.n_free:
            with pytest.raises(OutOfPages):
                table.append(n)
            return False
        shared_last = table.n_tokens % self.ps and self.pool.refcount(table.pages[-1]) > 1
        copies = table.append(n)
        if shared_last and n:
            (src, dst), = copies
            assert self.pool.refcount(dst) == 1 and self.pool.refcount(src) >= 1
        else:
            assert copies == []
        return True

    def add_to_ref(self, tokens, pages) -> None:
        for j in range(1, len(tokens) // self.ps + 1):
            self.ref.setdefault(tuple(tokens[:j * self.ps]), pages[j - 1])

    @precondition(lambda self: len(self.live) < 6)
    @rule(data=st.data())
    def start(self, data):
        tokens = self.tokens(data)
        m = self.cache.match(tokens)
        self.check_match(tokens, m)
        table = PageTable(self.pool, m.pages)
        if self.reserve(table, len(tokens) - m.n_tokens):
            self.live.append(Seq(tokens, table, m, tuple(tokens[:m.n_tokens])))
        else:
            self.cache.release(m)
            table.free()

    @rule(data=st.data())
    def probe(self, data):
        tokens = self.tokens(data, 6)
        m = self.cache.match(tokens)
        self.check_match(tokens, m)
        self.cache.release(m)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), insert=st.booleans())
    def finish(self, data, insert):
        s = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
        if insert:
            result = self.cache.insert(s.tokens, s.table.pages)
            self.add_to_ref(s.tokens, s.table.pages)
            self.check_match(s.tokens, result)
        self.cache.release(s.handle)
        s.table.free()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def insert_running(self, data):
        s = data.draw(st.sampled_from(self.live))
        handle = self.cache.insert(s.tokens, s.table.pages, lock=True)
        self.add_to_ref(s.tokens, s.table.pages)
        self.check_match(s.tokens, handle)
        self.cache.release(s.handle)
        s.handle = handle
        s.locked_tokens = tuple(s.tokens[:handle.n_tokens])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def extend(self, data):
        s = data.draw(st.sampled_from(self.live))
        more = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=2 * self.ps + 1))
        if self.reserve(s.table, len(more)):
            s.tokens = s.tokens + more

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def truncate(self, data):
        s = data.draw(st.sampled_from(self.live))
        n = data.draw(st.integers(0, len(s.tokens)))
        s.table.truncate(n)
        s.tokens = s.tokens[:n]

    @precondition(lambda self: self.live and len(self.live) < 6)
    @rule(data=st.data())
    def fork(self, data):
        s = data.draw(st.sampled_from(self.live))
        m = self.cache.match(s.tokens)
        self.check_match(s.tokens, m)
        self.live.append(Seq(list(s.tokens), s.table.fork(), m, tuple(s.tokens[:m.n_tokens])))

    @rule(n=st.integers(0, 8))
    def evict_some(self, n):
        self.evict(n)

    @invariant()
    def consistent(self):
        if not hasattr(self, "cache"):
            return
        self.cache.verify()
        self.pool.verify(owners=[list(self.cache.cached_pages())] + [s.table.pages for s in self.live])
        assert self.cache.snapshot() == self.ref
        assert self.cache.n_handles == len(self.live)

    def teardown(self):
        """No leaks: once every sequence ends, pages are free or cached; evicting all frees all."""
        if not hasattr(self, "cache"):
            return
        for s in self.live:
            self.cache.release(s.handle)
            s.table.free()
        self.live = []
        assert self.pool.n_used == self.cache.n_pages
        self.evict(self.cache.evictable_pages)
        assert self.pool.n_free == self.pool.n_pages and self.cache.n_nodes == 0
        self.cache.verify()


PrefixCacheMachine.TestCase.settings = settings(max_examples=1000, stateful_step_count=60, deadline=None)
TestPrefixCacheMachine = PrefixCacheMachine.TestCase


# ---------------------------------------------------------------- soak (on demand: pytest -m slow)


class SoakPrefixCacheMachine(PrefixCacheMachine):
    pass


SoakPrefixCacheMachine.TestCase.settings = settings(max_examples=5000, stateful_step_count=200, deadline=None)
TestSoakPrefixCacheMachine = pytest.mark.slow(SoakPrefixCacheMachine.TestCase)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_soak_randomized_server_workload(seed):
    """Hours of traffic in miniature: shared system prompts, multi-turn chats, forks, rollbacks."""
    rng = random.Random(seed)
    ps = [1, 4, 16, 64][seed]
    pool, cache = make(65536 // ps, ps)
    systems = [[rng.randrange(1000) for _ in range(rng.randrange(1, 300))] for _ in range(5)]
    chats: list[list[int]] = []
    live: list[tuple[list[int], PageTable, object]] = []
    for step in range(60_000):
        r = rng.random()
        if live and (r < 0.35 or len(live) >= 24):
            tokens, t, m = live.pop(rng.randrange(len(live)))
            cache.insert(tokens, t.pages)
            cache.release(m)
            t.free()
            chats.append(tokens)
        elif live and r < 0.45:
            tokens, t, m = live[rng.randrange(len(live))]
            n = rng.randrange(1, 40)
            need = t.pages_needed(n)
            if need > pool.n_free:
                cache.evict(need - pool.n_free)
            if need <= pool.n_free:
                t.append(n)
                tokens.extend(rng.randrange(1000) for _ in range(n))
        elif live and r < 0.5:
            tokens, t, m = live[rng.randrange(len(live))]
            n = rng.randrange(len(tokens) + 1)
            t.truncate(n)
            del tokens[n:]
        else:
            if chats and rng.random() < 0.6:
                base = rng.choice(chats)
            else:
                base = rng.choice(systems)
            tokens = base + [rng.randrange(1000) for _ in range(rng.randrange(1, 200))]
            m = cache.match(tokens[:-1])
            t = PageTable(pool, m.pages)
            need = t.pages_needed(len(tokens) - m.n_tokens)
            if need > pool.n_free:
                cache.evict(need - pool.n_free)
            if need > pool.n_free:
                cache.release(m)
                t.free()
                continue
            t.append(len(tokens) - m.n_tokens)
            live.append((tokens, t, m))
        if len(chats) > 2000:
            del chats[:1000]
        if step % 500 == 0:
            cache.verify()
            pool.verify(owners=[list(cache.cached_pages())] + [t.pages for _, t, _ in live])
    for _, t, m in live:
        cache.release(m)
        t.free()
    pool.verify(owners=[list(cache.cached_pages())])
    cache.evict(cache.evictable_pages)
    assert pool.n_free == pool.n_pages
    cache.verify()
