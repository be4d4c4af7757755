"""Paged K/V storage on the device: the memory that pages.py's page ids name.

One K buffer and one V buffer for all layers, [n_layers, n_pages + 1, page_size, n_kv, head_dim]
(see pages.py for why). The extra last page is scratch: padding rows of a recorded batch write
their K/V there, so they never touch a page that holds data.
"""

from __future__ import annotations

import numpy as np

import tattletale as tt
from tattletale.runtimes import Device

from .pages import KVLayout


@tt.kernel
def copy_pages_kernel(k: tt.Buffer, v: tt.Buffer, pairs: tt.Buffer[tt.i32], n_pairs: tt.i32,
                      page_elems: tt.i32, layer_elems: tt.i32, n_layers: tt.i32):
    """Copy page pairs[2i] to page pairs[2i+1] in every layer, K and V (copy-on-write)."""
    i = tt.global_id(0)
    per_pair = page_elems * n_layers
    if i < n_pairs * per_pair:
        p = i // per_pair
        r = i % per_pair
        layer = r // page_elems
        e = r % page_elems
        src = layer * layer_elems + pairs[2 * p] * page_elems + e
        dst = layer * layer_elems + pairs[2 * p + 1] * page_elems + e
        k[dst] = k[src]
        v[dst] = v[src]


class PagedKV:
    """The device buffers of a page pool of `n_pages` pages, laid out as `layout` says."""

    def __init__(self, dev: Device, layout: KVLayout, n_pages: int, dtype=tt.f32):
        self.dev, self.layout, self.n_pages = dev, layout, n_pages
        self.scratch_page = n_pages
        shape = layout.buffer_shape(n_pages + 1)
        self.k = dev.empty(shape, dtype)
        self.v = dev.empty(shape, dtype)
        slots = (n_pages + 1) * layout.page_size
        self.layer_elems = slots * layout.n_kv_heads * layout.head_dim
        row = (slots, layout.n_kv_heads, layout.head_dim)
        self.k_layers = [self.k.view(i * self.layer_elems, row) for i in range(layout.n_layers)]
        self.v_layers = [self.v.view(i * self.layer_elems, row) for i in range(layout.n_layers)]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def copy_pages(self, pairs: list[tuple[int, int]]) -> None:
        """Copy each (src, dst) page's K and V in every layer (PageTable.append's copies)."""
        if not pairs:
            return
        lay = self.layout
        page_elems = lay.page_size * lay.n_kv_heads * lay.head_dim
        n = len(pairs) * page_elems * lay.n_layers
        copy_pages_kernel[-(-n // 256), 256](self.k, self.v, self.dev.tensor(np.asarray(pairs, np.int32)),
                                             len(pairs), page_elems, self.layer_elems, lay.n_layers)

