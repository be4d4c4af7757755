"""KV memory management: a page pool, per-sequence page tables and a prefix cache over them.

Pure host-side bookkeeping (page ids, counts, the trie); the engine owns the device buffers and
performs the page copies these structures ask for. See docs/prefix_cache.md.
"""

from .pages import KVLayout, OutOfPages, PagePool, PageTable, device_tables, kv_budget
from .radix import PrefixCache, PrefixMatch
from .wavl import WavlNode, WavlTree

__all__ = [
    "KVLayout", "OutOfPages", "PagePool", "PageTable", "PrefixCache", "PrefixMatch", "WavlNode",
    "WavlTree", "device_tables", "kv_budget",
]
