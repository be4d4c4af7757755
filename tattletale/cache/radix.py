"""The prefix cache ("IntrusiveAttention"): a radix trie of token ids over KV pages.

Each trie node below the root holds a run of whole pages: `tokens` (a multiple of page_size long)
and the page ids holding their K/V. A node's children are kept in a WAVL tree keyed by their first
page of tokens; the trie nodes embed that tree's links (they are `WavlNode`s), hence the name.
Only whole pages are shared: a prefix shorter than a page is never matched, and a sequence's
partially filled last page stays private to it.

Locks. `match` (and `insert(lock=True)`) return a `PrefixMatch` handle that locks the matched
path: every node from the root to the handle's last node counts the handles passing through it
(`lock`). Locked nodes are never evicted; `release(handle)` unlocks. So a node's lock is the
number of handles ending at it plus the locks of its children.

Eviction. The evictable nodes are the unlocked leaves; they sit in a second WAVL tree ordered by
(last_use, serial), so the least recently used one is the tree's minimum and every update is
O(log n), with no scan. `evict(n)` frees pages from the tail of that leaf, then the next, and a
leaf emptied of pages is removed. A node's last use is at least any descendant's (a match or
insert touches the whole path), so taking leaves first agrees with LRU order.

Compression. A node other than the root with exactly one child is merged into that child unless
a handle ends at it (its lock exceeds the child's): the trie stays a Patricia trie, and a lock
never pins pages beyond what its match covered.

Reference counts (see pages.py): the cache holds one reference to every page it contains. A
sequence that keeps using pages after inserting them should hold a lock on them (`match`, or
`insert(lock=True)`), otherwise eviction drops the cache's reference without freeing the page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import count

from .pages import PagePool
from .wavl import WavlNode, WavlTree, _check


class TrieNode(WavlNode):
    """A run of whole pages; also a node of its parent's child index (key: its first page)."""

    __slots__ = ("serial", "tokens", "pages", "up", "children", "lock", "last_use", "lru")

    def __init__(self, serial: int, tokens: tuple[int, ...], pages: list[int],
                 up: TrieNode | None, last_use: int, page_size: int) -> None:
        super().__init__(tokens[:page_size])
        self.serial = serial
        self.tokens = tokens
        self.pages = pages
        self.up = up  # the trie parent (`parent` is the link inside the child index)
        self.children: WavlTree[TrieNode] = WavlTree()
        self.lock = 0
        self.last_use = last_use
        self.lru: _LruEntry | None = None  # this node's entry in the eviction order, if evictable


class _LruEntry(WavlNode):
    """An evictable leaf's place in the eviction order: key (last_use, serial)."""

    __slots__ = ("node",)

    def __init__(self, node: TrieNode) -> None:
        super().__init__((node.last_use, node.serial))
        self.node = node


class PrefixMatch:
    """The cached prefix found (or inserted): its pages and token count; a lock while unreleased."""

    __slots__ = ("pages", "n_tokens", "_node")

    def __init__(self, pages: tuple[int, ...], n_tokens: int, node: TrieNode | None) -> None:
        self.pages = pages
        self.n_tokens = n_tokens
        self._node = node  # the last locked node; None when not locked or released

    @property
    def locked(self) -> bool:
        return self._node is not None

    def __repr__(self) -> str:
        return f"PrefixMatch({self.n_tokens} tokens, {len(self.pages)} pages, locked={self.locked})"


def _as_tuple(tokens: Sequence[int]) -> tuple[int, ...]:
    """Token ids as a tuple of Python ints (numpy arrays go through tolist: fast, exact compares)."""
    tolist = getattr(tokens, "tolist", None)
    return tuple(tolist() if tolist is not None else tokens)


class PrefixCache:
    """Longest-prefix matching of token sequences onto cached KV pages, with LRU eviction."""

    def __init__(self, pool: PagePool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self._serials = count()
        self._clock = 0  # a logical clock: one tick per match/insert
        self.root = TrieNode(next(self._serials), (), [], None, 0, self.page_size)
        self._lru: WavlTree[_LruEntry] = WavlTree()
        self._handles: set[PrefixMatch] = set()
        self._in_trie = bytearray(pool.n_pages)
        self.n_nodes = 0  # excluding the root
        self.n_pages = 0  # pages held by the cache
        self.evictable_pages = 0  # pages in unlocked nodes: what evict() could drop now

    @property
    def n_handles(self) -> int:
        """Unreleased locked handles (a number that keeps growing means a caller leaks locks)."""
        return len(self._handles)

    # ---- the operations ----

    def match(self, tokens: Sequence[int]) -> PrefixMatch:
        """Lock and return the longest cached prefix of `tokens`, in whole pages.

        The engine matches `tokens[:-1]` for a prompt, so at least one token is left to compute.
        """
        q = _as_tuple(tokens)
        path, _, n_tokens, pages = self._walk(q, len(q) - len(q) % self.page_size)
        self._clock += 1
        for node in path:
            node.last_use = self._clock
        return self._locked(path[-1], pages, n_tokens)

    def insert(self, tokens: Sequence[int], pages: Sequence[int], *, lock: bool = False) -> PrefixMatch:
        """Add the whole pages of a sequence: `pages[i]` holds tokens[i*ps:(i+1)*ps].

        The prefix already cached keeps its pages (the caller's duplicates stay the caller's, to
        be freed with its table); the cache takes a reference to each page it adopts. The
        partially filled last page, if any, is not inserted. Returns the cache's pages for the
        whole-page prefix, locked if `lock` (a running sequence that keeps using them).
        """
        ps = self.page_size
        q = _as_tuple(tokens)
        n_full = len(q) // ps
        if len(pages) < n_full:
            raise ValueError(f"{len(q)} tokens need {n_full} pages, got {len(pages)}")
        path, m, pos, got = self._walk(q, n_full * ps)
        self._clock += 1
        clock = self._clock
        node = path[-1]
        touched = [node]
        new = list(pages[pos // ps:n_full])
        if new:
            if len(set(new)) < len(new) or any(self._in_trie[p] for p in new):
                raise ValueError(f"a page of {new} is already in the prefix cache")
            self.pool.incref(new)
            for p in new:
                self._in_trie[p] = 1
            if m < len(node.pages):  # diverges inside node: split it where the run differs
                path[-1] = self._split(node, m)
            node = self._add_run(path[-1], q[pos:n_full * ps], new, clock)
            touched.append(node)
            got.extend(new)
        for n in path:
            n.last_use = clock
        node.last_use = clock
        for n in touched:
            self._sync_lru(n)
        if lock:
            return self._locked(node, got, n_full * ps)
        return PrefixMatch(tuple(got), n_full * ps, None)

    def release(self, handle: PrefixMatch) -> None:
        """Unlock a handle from `match` or `insert(lock=True)`; each is released once."""
        node = handle._node
        if node is None or handle not in self._handles:
            raise ValueError(f"{handle!r} is not locked in this cache")
        handle._node = None
        self._handles.discard(handle)
        n = node
        while n is not None:
            n.lock -= 1
            if n.lock == 0:
                self.evictable_pages += len(n.pages)
            n = n.up
        self._settle(node)

    def evict(self, n_pages: int) -> int:
        """Drop up to `n_pages` pages, least recently used unlocked leaves first, tails first.

        Returns the number of pages returned to the pool's free list (pages also held by a page
        table are dropped from the cache but stay allocated, so eviction then goes on).
        """
        if n_pages < 0:
            raise ValueError("cannot evict a negative number of pages")
        ps = self.page_size
        freed = 0
        while freed < n_pages and self._lru.root is not None:
            leaf = self._lru.min().node
            k = min(len(leaf.pages), n_pages - freed)
            drop = leaf.pages[-k:]
            del leaf.pages[-k:]
            leaf.tokens = leaf.tokens[:len(leaf.pages) * ps]
            for p in drop:
                self._in_trie[p] = 0
            self.n_pages -= k
            self.evictable_pages -= k
            freed += self.pool.decref(drop)
            if not leaf.pages:
                self._remove_leaf(leaf)
        return freed

    # ---- walking and restructuring ----

    def _walk(self, q: tuple[int, ...], limit: int) -> tuple[list[TrieNode], int, int, list[int]]:
        """Follow q[:limit] (a multiple of page_size) down the trie.

        Returns (the path from the root to the last node reached, pages matched in that node,
        tokens matched, the matched page ids).
        """
        ps = self.page_size
        node = self.root
        path = [node]
        pages: list[int] = []
        pos = 0
        m = 0
        while pos < limit:
            child = node.children.find(q[pos:pos + ps])
            if child is None:
                break
            run = child.tokens
            avail = min(len(run), limit - pos)
            if q[pos:pos + avail] == run[:avail]:
                m = avail // ps
            else:  # the first page matched (it is the key); find the first differing page
                m = 1
                while q[pos + m * ps:pos + (m + 1) * ps] == run[m * ps:(m + 1) * ps]:
                    m += 1
            path.append(child)
            pos += m * ps
            node = child
            if m < len(child.pages):
                pages.extend(child.pages[:m])
                break
            pages.extend(child.pages)
        return path, m, pos, pages

    def _split(self, node: TrieNode, m: int) -> TrieNode:
        """Cut `node` after its first m pages; the new upper node takes its place and is returned.

        `node` keeps its identity (handles ending at it stay valid) and becomes the only child.
        """
        ps = self.page_size
        top = TrieNode(next(self._serials), node.tokens[:m * ps], node.pages[:m], node.up,
                       node.last_use, ps)
        top.lock = node.lock
        node.up.children.replace(node, top)
        node.tokens = node.tokens[m * ps:]
        node.pages = node.pages[m:]
        node.key = node.tokens[:ps]
        node.up = top
        top.children.insert(node)
        self.n_nodes += 1
        return top

    def _add_run(self, parent: TrieNode, tokens: tuple[int, ...], pages: list[int], clock: int) -> TrieNode:
        """Hang new whole pages under `parent`: extend it if it is an unlocked leaf, else a new leaf."""
        self.n_pages += len(pages)
        self.evictable_pages += len(pages)
        if parent is not self.root and parent.lock == 0 and not parent.children:
            parent.tokens += tokens
            parent.pages.extend(pages)
            return parent
        leaf = TrieNode(next(self._serials), tokens, pages, parent, clock, self.page_size)
        parent.children.insert(leaf)
        self.n_nodes += 1
        return leaf

    def _locked(self, node: TrieNode, pages: list[int], n_tokens: int) -> PrefixMatch:
        """Lock the path root..node for a new handle."""
        handle = PrefixMatch(tuple(pages), n_tokens, node)
        self._handles.add(handle)
        n = node
        while n is not None:
            if n.lock == 0:
                self.evictable_pages -= len(n.pages)
            n.lock += 1
            n = n.up
        self._sync_lru(node)
        return handle

    def _remove_leaf(self, leaf: TrieNode) -> None:
        """Unlink an emptied leaf, then settle its parent (it may now be a leaf or compressible)."""
        self._lru.delete(leaf.lru)
        leaf.lru = None
        parent = leaf.up
        parent.children.delete(leaf)
        leaf.up = None
        self.n_nodes -= 1
        self._settle(parent)

    def _settle(self, node: TrieNode) -> None:
        """Restore the structure at `node` after its lock or children changed.

        A single-child node with no handle ending at it merges into its child; a childless one
        becomes evictable when unlocked.
        """
        if node is self.root:
            return
        if len(node.children) == 1 and node.children.root.lock == node.lock:
            self._merge_into_child(node)
        else:
            self._sync_lru(node)

    def _merge_into_child(self, node: TrieNode) -> None:
        """Replace `node` by its only child, prefixed with node's run (the child keeps its identity)."""
        child = node.children.root
        node.children.delete(child)
        child.tokens = node.tokens + child.tokens
        child.pages = node.pages + child.pages
        child.key = node.key
        child.up = node.up
        child.last_use = max(child.last_use, node.last_use)
        node.up.children.replace(node, child)
        node.up = None
        self.n_nodes -= 1
        self._sync_lru(child)

    def _sync_lru(self, node: TrieNode) -> None:
        """Put `node` in the eviction order iff it is an unlocked leaf, keyed by its last use."""
        entry = node.lru
        if node is not self.root and node.lock == 0 and not node.children:
            key = (node.last_use, node.serial)
            if entry is None:
                node.lru = entry = _LruEntry(node)
                self._lru.insert(entry)
            elif entry.key != key:
                self._lru.delete(entry)
                entry.key = key
                self._lru.insert(entry)
        elif entry is not None:
            self._lru.delete(entry)
            node.lru = None

    # ---- inspection ----

    def _nodes(self) -> Iterator[tuple[TrieNode, tuple[int, ...]]]:
        """Every node below the root with the tokens before it, depth first."""
        stack = [(self.root, ())]
        while stack:
            node, prefix = stack.pop()
            for child in node.children:
                stack.append((child, prefix + child.tokens))
                yield child, prefix

    def snapshot(self) -> dict[tuple[int, ...], int]:
        """Every cached whole-page prefix mapped to the page holding its last page of tokens."""
        ps = self.page_size
        out = {}
        for node, before in self._nodes():
            for i, page in enumerate(node.pages):
                out[before + node.tokens[:(i + 1) * ps]] = page
        return out

    def verify(self) -> None:
        """Raise AssertionError unless every invariant of the trie, its indexes and locks holds.

        WAVL rank rules and key order of every child index and of the eviction order; parent
        links; distinct first pages among children (the index keys are strict); runs of whole
        pages; no single-child node below the root unless a handle ends at it; lock counts equal
        the handles through each node; last use never increases downwards; the eviction order
        holds exactly the unlocked leaves; each page cached once and referenced; the counters.
        """
        ps = self.page_size
        ending = Counter(h._node for h in self._handles)
        root = self.root
        _check(root.lock == len(self._handles), f"root lock {root.lock}, {len(self._handles)} handles")
        nodes = pages = evictable = leaves = 0
        seen_pages: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            node.children.verify()
            below = 0
            for child in node.children:
                nodes += 1
                _check(child.up is node, f"node {child.serial}: trie parent link broken")
                _check(len(child.pages) >= 1 and len(child.tokens) == len(child.pages) * ps,
                       f"node {child.serial}: {len(child.tokens)} tokens in {len(child.pages)} pages")
                _check(child.key == child.tokens[:ps], f"node {child.serial}: key is not its first page")
                _check(child.last_use <= node.last_use,
                       f"node {child.serial} used after its parent")
                below += child.lock
                pages += len(child.pages)
                if child.lock == 0:
                    evictable += len(child.pages)
                for p in child.pages:
                    _check(p not in seen_pages, f"page {p} cached twice")
                    _check(self._in_trie[p] == 1, f"page {p} cached but not marked")
                    _check(self.pool.refcount(p) >= 1, f"page {p} cached but free")
                    seen_pages.add(p)
                stack.append(child)
            _check(node.lock == ending[node] + below,
                   f"node {node.serial}: lock {node.lock}, {ending[node]} handles end here, {below} below")
            if node is not root:
                _check(len(node.children) != 1 or ending[node] > 0,
                       f"node {node.serial}: single child and no handle ending at it")
                evictable_leaf = node.lock == 0 and not node.children
                leaves += evictable_leaf
                _check((node.lru is not None) == evictable_leaf, f"node {node.serial}: eviction order")
                if node.lru is not None:
                    _check(node.lru.node is node and node.lru.key == (node.last_use, node.serial),
                           f"node {node.serial}: stale eviction entry")
        self._lru.verify()
        _check(len(self._lru) == leaves, f"{len(self._lru)} eviction entries, {leaves} evictable leaves")
        _check(sum(self._in_trie) == len(seen_pages), "page marks disagree with the trie")
        _check((nodes, pages, evictable) == (self.n_nodes, self.n_pages, self.evictable_pages),
               f"counters {(self.n_nodes, self.n_pages, self.evictable_pages)}, "
               f"found {(nodes, pages, evictable)}")
        self.pool.verify()

    def cached_pages(self) -> Iterator[int]:
        """Every page the cache references (for `PagePool.verify(owners=...)`)."""
        for node, _ in self._nodes():
            yield from node.pages
