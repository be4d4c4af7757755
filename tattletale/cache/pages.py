"""Paged KV memory, host side: which pages are free, who references each, and each sequence's table.

Device layout (the engine allocates it; this module only hands out page ids): one K buffer and one
V buffer for all layers, each of shape [n_layers, n_pages, page_size, n_kv_heads, head_dim]. Why
one allocation for all layers: the memory budget becomes a single number, there is no per-layer
fragmentation, and a page id names the same token slots in every layer, so one page table per
sequence serves all layers. Why layer-major: each layer's K (or V) is a contiguous
[n_pages * page_size, n_kv_heads, head_dim] view, the storage a per-layer attention kernel
indexes with `page_id * page_size + slot`.

Ownership is by reference count: a page is free (count 0) or referenced by the prefix cache
and/or the page tables of live sequences, one count each. A page with more than one reference is
never written: a sequence about to write into a shared, partially filled last page first gets a
private copy (copy-on-write), and the (src, dst) pairs of those copies are what the engine must
copy on the device before the step runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class OutOfPages(MemoryError):
    """Raised when an allocation needs more pages than are free; nothing was allocated."""

    def __init__(self, wanted: int, free: int) -> None:
        super().__init__(f"{wanted} KV pages wanted, {free} free")
        self.wanted = wanted
        self.free = free


@dataclass(frozen=True)
class KVLayout:
    """The sizes the engine needs to allocate and address paged K/V storage."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype_bytes: int
    page_size: int  # tokens per page

    @property
    def bytes_per_token(self) -> int:
        """K plus V of one token across all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_page(self) -> int:
        """K plus V of one page across all layers: what one page id costs."""
        return self.bytes_per_token * self.page_size

    def pages_in(self, budget_bytes: int) -> int:
        """How many pages a memory budget holds."""
        return budget_bytes // self.bytes_per_page

    def buffer_shape(self, n_pages: int) -> tuple[int, int, int, int, int]:
        """Shape of the K buffer (and of the V buffer) for `n_pages` pages."""
        return (self.n_layers, n_pages, self.page_size, self.n_kv_heads, self.head_dim)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def kv_budget(spec: str | int | float, free_bytes: int) -> int:
    """Bytes for the KV pool from a `--kv-memory` value.

    A float (or a string with a decimal point) in (0, 1] is a fraction of `free_bytes`, the device
    memory free once the weights are loaded; an int, or a string such as "8GiB", "512MB",
    "2e9" or "1000000", is a byte count (K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024).
    """
    if isinstance(spec, str):
        text = spec.strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?", text)
        if m is None:
            raise ValueError(f"bad KV memory size {spec!r}")
        number, unit = m.group(1), (m.group(2) or "").lower()
        if not unit and "." in number:
            spec = float(number)
        else:
            spec = int(float(number) * _UNITS[unit])
    if isinstance(spec, float):
        if not 0.0 < spec <= 1.0:
            raise ValueError(f"a KV memory fraction must be in (0, 1], got {spec}")
        return int(spec * free_bytes)
    if spec <= 0:
        raise ValueError(f"the KV memory budget must be positive, got {spec}")
    return spec


class PagePool:
    """Page ids 0..n_pages-1 with reference counts and a free list (host-side bookkeeping only)."""

    def __init__(self, n_pages: int, page_size: int, bytes_per_page: int = 0) -> None:
        if n_pages < 0 or page_size < 1:
            raise ValueError(f"bad pool: {n_pages} pages of {page_size} tokens")
        self.n_pages = n_pages
        self.page_size = page_size
        self.bytes_per_page = bytes_per_page
        self._refs = [0] * n_pages
        # a stack: pages freed last are handed out first; a fresh pool hands out 0, 1, 2, ...
        self._free = list(range(n_pages - 1, -1, -1))

    @classmethod
    def from_budget(cls, layout: KVLayout, budget_bytes: int) -> PagePool:
        """As many pages as `budget_bytes` holds (see `kv_budget`), rather than a slot count."""
        return cls(layout.pages_in(budget_bytes), layout.page_size, layout.bytes_per_page)

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.n_pages - len(self._free)

    def refcount(self, page: int) -> int:
        return self._refs[page]

    def alloc(self, n: int) -> list[int]:
        """`n` fresh pages, each with one reference; OutOfPages (and no change) if fewer are free."""
        if n > len(self._free):
            raise OutOfPages(n, len(self._free))
        if n <= 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        refs = self._refs
        for p in pages:
            refs[p] = 1
        return pages

    def incref(self, pages: Iterable[int]) -> None:
        """One more reference to each page (a page listed twice gets two)."""
        refs = self._refs
        pages = list(pages)
        for p in pages:
            if refs[p] <= 0:
                raise ValueError(f"page {p} is free: it cannot gain a reference")
        for p in pages:
            refs[p] += 1

    def decref(self, pages: Iterable[int]) -> int:
        """Drop one reference to each page; pages left with none return to the free list.

        Returns how many pages were freed.
        """
        refs, free = self._refs, self._free
        freed = 0
        for p in pages:
            r = refs[p]
            if r <= 0:
                raise ValueError(f"page {p} is already free")
            refs[p] = r - 1
            if r == 1:
                free.append(p)
                freed += 1
        return freed

    def verify(self, owners: Iterable[Iterable[int]] | None = None) -> None:
        """Raise AssertionError unless the free list and the counts agree.

        Every page is either free (on the free list once, count 0) or referenced (count > 0),
        never both. With `owners` (the prefix cache's pages and every live page table), each
        page's count must equal the number of times the owners hold it: no leak, no dangling page.
        """
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a page is on the free list twice")
        for p, r in enumerate(self._refs):
            if (r == 0) != (p in free) or r < 0:
                raise AssertionError(f"page {p}: count {r}, {'free' if p in free else 'not free'}")
        if owners is not None:
            held = Counter(p for pages in owners for p in pages)
            counted = {p: r for p, r in enumerate(self._refs) if r}
            if held != counted:
                diff = {p: (counted.get(p, 0), held.get(p, 0))
                        for p in held.keys() | counted.keys() if counted.get(p, 0) != held.get(p, 0)}
                raise AssertionError(f"page (count, owners) mismatch: {diff}")


class PageTable:
    """One sequence's pages in token order, and how many tokens they hold.

    The table holds one reference to each of its pages. Token t lives in page `pages[t // ps]`,
    slot `t % ps`. Pages given to the constructor (e.g. a prefix-cache match) are shared, not
    copied; `append` copies a shared partially filled last page before it is written.
    """

    def __init__(self, pool: PagePool, pages: Sequence[int] = (), n_tokens: int | None = None) -> None:
        ps = pool.page_size
        n_tokens = len(pages) * ps if n_tokens is None else n_tokens
        if -(-n_tokens // ps) != len(pages):
            raise ValueError(f"{len(pages)} pages cannot hold exactly {n_tokens} tokens of {ps}")
        pool.incref(pages)
        self.pool = pool
        self._pages = list(pages)
        self.n_tokens = n_tokens

    @property
    def pages(self) -> tuple[int, ...]:
        return tuple(self._pages)

    def __len__(self) -> int:
        """Number of pages."""
        return len(self._pages)

    def _needs_copy(self, n: int) -> bool:
        """Would writing `n` more tokens write into a shared partially filled last page?"""
        return (n > 0 and self.n_tokens % self.pool.page_size != 0
                and self.pool.refcount(self._pages[-1]) > 1)

    def pages_needed(self, n: int) -> int:
        """Free pages `append(n)` would take (new pages plus a copy-on-write page)."""
        ps = self.pool.page_size
        grow = -(-(self.n_tokens + n) // ps) - len(self._pages)
        return max(grow, 0) + self._needs_copy(n)

    def append(self, n: int) -> list[tuple[int, int]]:
        """Make room for `n` more tokens; returns the (src, dst) page copies to do on the device.

        Atomic: on OutOfPages nothing changed (evict from the prefix cache and retry).
        """
        if n < 0:
            raise ValueError("cannot append a negative number of tokens")
        copy = self._needs_copy(n)
        fresh = self.pool.alloc(self.pages_needed(n))
        copies = []
        if copy:
            src, dst = self._pages[-1], fresh.pop()
            self._pages[-1] = dst
            self.pool.decref((src,))
            copies.append((src, dst))
        self._pages.extend(fresh)
        self.n_tokens += n
        return copies

    def fork(self) -> PageTable:
        """A second table sharing every page (parallel sampling, beam search)."""
        return PageTable(self.pool, self._pages, self.n_tokens)

    def truncate(self, n_tokens: int) -> None:
        """Keep the first `n_tokens` tokens (e.g. rejected speculative tokens); frees pages past them."""
        if not 0 <= n_tokens <= self.n_tokens:
            raise ValueError(f"cannot truncate {self.n_tokens} tokens to {n_tokens}")
        keep = -(-n_tokens // self.pool.page_size)
        self.pool.decref(self._pages[keep:])
        del self._pages[keep:]
        self.n_tokens = n_tokens

    def free(self) -> None:
        """Drop every page (a finished or aborted sequence); the table is empty afterwards."""
        self.truncate(0)

    def device_table(self, width: int | None = None, pad: int = 0) -> np.ndarray:
        """The page ids as an int32 array of `width` entries (default: one per page).

        Padding uses page `pad` (0: a valid id, so an unmasked read stays in bounds).
        """
        return device_tables([self], width, pad)[0]


def device_tables(tables: Sequence[PageTable], width: int | None = None, pad: int = 0) -> np.ndarray:
    """A batch's page tables as one [len(tables), width] int32 array, rows padded with `pad`."""
    longest = max((len(t) for t in tables), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is shorter than a table of {longest} pages")
    out = np.full((len(tables), width), pad, dtype=np.int32)
    for row, t in zip(out, tables):
        row[:len(t)] = t._pages
    return out
