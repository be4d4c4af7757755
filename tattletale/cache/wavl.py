"""WAVL trees: rank-balanced binary search trees (Haeupler, Sen, Tarjan, "Rank-balanced trees").

Every node has an integer rank; a missing child has rank -1. The rank difference of a child is
its parent's rank minus its own. The WAVL rules: every rank difference is 1 or 2, and every leaf
has rank 0 (so a leaf's two missing children have differences 1,1). Height <= rank <= 2 log2 n,
so search is O(log n) worst case. An insertion does O(1) amortized promotions and at most two
rotations; a deletion O(1) amortized demotions and at most two rotations. Without deletions the
tree is exactly an AVL tree.

Why a WAVL tree rather than a dict or a red-black tree: the prefix cache needs ordered indexes
(least-recently-used first) with a logarithmic worst case, and its child indexes churn (split,
merge, evict). Rotations are bounded per operation, with no rebalancing cascades and no hash
tombstones, and the rank rules are short enough to check after every step in tests.

The tree is intrusive: it links `WavlNode` objects, and a class that subclasses `WavlNode` embeds
its own links (the prefix trie's nodes do), so an index costs no extra object per entry and a
node is removed by reference, without a search. Keys are any mutually ordered values (tuples of
token ids, (last_use, serial) pairs); they must be distinct within a tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar


class WavlNode:
    """A node of a `WavlTree`: a key plus the links. Subclass it to embed the links in an object."""

    __slots__ = ("key", "left", "right", "parent", "rank")

    def __init__(self, key: Any = None) -> None:
        self.key = key
        self.left: WavlNode | None = None
        self.right: WavlNode | None = None
        self.parent: WavlNode | None = None
        self.rank = 0


N = TypeVar("N", bound=WavlNode)


def _rank(node: WavlNode | None) -> int:
    return -1 if node is None else node.rank


def _check(cond: bool, msg: str) -> None:
    """An assertion that survives `python -O`: invariant checks are the point of verify()."""
    if not cond:
        raise AssertionError(msg)


class WavlTree(Generic[N]):
    """An ordered set of nodes keyed by `node.key`. Not safe to mutate while iterating."""

    __slots__ = ("root", "_size")

    def __init__(self) -> None:
        self.root: N | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[N]:
        node = self.min()
        while node is not None:
            yield node
            node = self.successor(node)

    # ---- queries ----

    def find(self, key: Any) -> N | None:
        """The node whose key equals `key`, or None."""
        node = self.root
        while node is not None:
            if key < node.key:
                node = node.left
            elif key == node.key:
                return node
            else:
                node = node.right
        return None

    def min(self) -> N | None:
        node = self.root
        if node is not None:
            while node.left is not None:
                node = node.left
        return node

    def max(self) -> N | None:
        node = self.root
        if node is not None:
            while node.right is not None:
                node = node.right
        return node

    @staticmethod
    def successor(node: N) -> N | None:
        """The node after `node` in key order, or None (O(log n) worst case, O(1) amortized)."""
        if node.right is not None:
            node = node.right
            while node.left is not None:
                node = node.left
            return node
        while node.parent is not None and node is node.parent.right:
            node = node.parent
        return node.parent

    # ---- updates ----

    def insert(self, node: N) -> None:
        """Add `node` (its links are overwritten). KeyError if a node with an equal key is present."""
        key = node.key
        node.left = node.right = None
        node.rank = 0
        parent = None
        cur = self.root
        while cur is not None:
            parent = cur
            if key < cur.key:
                cur = cur.left
            elif key == cur.key:
                raise KeyError(key)
            else:
                cur = cur.right
        node.parent = parent
        self._size += 1
        if parent is None:
            self.root = node
            return
        if key < parent.key:
            parent.left = node
        else:
            parent.right = node
        self._rebalance_insert(node)

    def delete(self, node: N) -> None:
        """Remove `node`, which must be in this tree (removal is by reference: no key comparison)."""
        self._size -= 1
        if node.left is not None and node.right is not None:
            # Put node's successor `s` in node's place; the hole is where `s` was.
            s = node.right
            while s.left is not None:
                s = s.left
            hole = s.right
            if s.parent is node:
                parent = s
            else:
                parent = s.parent
                parent.left = hole
                if hole is not None:
                    hole.parent = parent
                s.right = node.right
                s.right.parent = s
            s.left = node.left
            s.left.parent = s
            s.rank = node.rank
            self._relink(node, s)
        else:
            hole = node.left if node.left is not None else node.right
            parent = node.parent
            self._relink(node, hole)
        node.left = node.right = node.parent = None
        node.rank = 0
        if parent is not None:
            self._rebalance_delete(parent, hole)

    def replace(self, old: N, new: N) -> None:
        """Put `new` in `old`'s place (links and rank); `new.key` must sort where `old.key` did."""
        new.left, new.right, new.rank = old.left, old.right, old.rank
        if new.left is not None:
            new.left.parent = new
        if new.right is not None:
            new.right.parent = new
        self._relink(old, new)
        old.left = old.right = old.parent = None

    # ---- internals ----

    def _relink(self, old: WavlNode, new: WavlNode | None) -> None:
        """Make old's parent (or the root pointer) point to `new` instead of `old`."""
        parent = old.parent
        if new is not None:
            new.parent = parent
        if parent is None:
            self.root = new
        elif parent.left is old:
            parent.left = new
        else:
            parent.right = new

    def _rotate_up(self, x: WavlNode) -> None:
        """Rotate `x` above its parent, keeping the in-order sequence."""
        p = x.parent
        if x is p.left:
            inner = x.right
            p.left = inner
            x.right = p
        else:
            inner = x.left
            p.right = inner
            x.left = p
        if inner is not None:
            inner.parent = p
        self._relink(p, x)
        p.parent = x

    def _rebalance_insert(self, x: WavlNode) -> None:
        """Fix the one possible violation after adding leaf `x`: a child with rank difference 0."""
        p = x.parent
        while p is not None and p.rank == x.rank:
            sibling = p.right if x is p.left else p.left
            if p.rank - _rank(sibling) == 1:  # p is 0,1: promote it and look one level up
                p.rank += 1
                x, p = p, p.parent
                continue
            # p is 0,2: one or two rotations end the fix-up
            inner = x.right if x is p.left else x.left
            if x.rank - _rank(inner) == 2:
                self._rotate_up(x)
                p.rank -= 1
            else:
                self._rotate_up(inner)
                self._rotate_up(inner)
                inner.rank += 1
                x.rank -= 1
                p.rank -= 1
            return

    def _rebalance_delete(self, p: WavlNode, x: WavlNode | None) -> None:
        """Fix the violations after `p` lost a child, `x` now being in its place (maybe None).

        Either p is a leaf of rank 1 (a 2,2-leaf), or x is a 3-child; demotions walk them up,
        and at most one single or double rotation ends the walk.
        """
        if p.left is None and p.right is None and p.rank == 1:
            p.rank = 0
            x, p = p, p.parent
        while p is not None and p.rank - _rank(x) == 3:
            sibling = p.right if p.left is x else p.left  # exists: its rank difference is <= 2
            if p.rank - sibling.rank == 2:  # 3,2: demote p
                p.rank -= 1
            elif (sibling.rank - _rank(sibling.left) == 2
                  and sibling.rank - _rank(sibling.right) == 2):  # 3,1 with a 2,2 sibling
                p.rank -= 1
                sibling.rank -= 1
            else:
                if sibling is p.right:
                    inner, outer = sibling.left, sibling.right
                else:
                    inner, outer = sibling.right, sibling.left
                if sibling.rank - _rank(outer) == 1:
                    self._rotate_up(sibling)
                    sibling.rank += 1
                    p.rank -= 1
                    if p.left is None and p.right is None:
                        p.rank = 0
                else:
                    self._rotate_up(inner)
                    self._rotate_up(inner)
                    inner.rank += 2
                    sibling.rank -= 1
                    p.rank -= 2
                return
            x, p = p, p.parent

    # ---- checking ----

    def verify(self) -> None:
        """Raise AssertionError unless ranks, key order, parent links and size are consistent."""
        _check(self.root is None or self.root.parent is None, "root has a parent")
        count = 0
        prev: WavlNode | None = None
        stack: list[WavlNode] = []
        node = self.root
        while stack or node is not None:  # in-order walk
            while node is not None:
                stack.append(node)
                node = node.left
            node = stack.pop()
            count += 1
            for child in (node.left, node.right):
                if child is not None:
                    _check(child.parent is node, f"parent link broken under key {node.key!r}")
                diff = node.rank - _rank(child)
                _check(diff in (1, 2), f"rank difference {diff} under key {node.key!r}")
            if node.left is None and node.right is None:
                _check(node.rank == 0, f"leaf of rank {node.rank} at key {node.key!r}")
            if prev is not None:
                _check(prev.key < node.key, f"keys out of order: {prev.key!r} before {node.key!r}")
            prev = node
            node = node.right
        _check(count == self._size, f"size {self._size} but {count} nodes")
