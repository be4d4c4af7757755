"""WAVL tree: unit tests, the rank bounds, and a hypothesis state machine against a sorted list."""

from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tattletale.cache.wavl import WavlNode, WavlTree


class CountingTree(WavlTree):
    """Counts rotations, to check the at-most-two-per-update bound."""

    __slots__ = ("rotations",)

    def __init__(self) -> None:
        super().__init__()
        self.rotations = 0

    def _rotate_up(self, x: WavlNode) -> None:
        self.rotations += 1
        super()._rotate_up(x)


def height(node: WavlNode | None) -> int:
    """Edges on the longest root-to-leaf path (-1 for an empty tree)."""
    return -1 if node is None else 1 + max(height(node.left), height(node.right))


def build(keys) -> tuple[WavlTree, dict]:
    tree, nodes = WavlTree(), {}
    for k in keys:
        nodes[k] = WavlNode(k)
        tree.insert(nodes[k])
    return tree, nodes


def test_empty_tree():
    tree = WavlTree()
    assert len(tree) == 0 and list(tree) == []
    assert tree.min() is None and tree.max() is None and tree.find(3) is None
    tree.verify()


def test_single_node_insert_find_delete():
    tree, nodes = build([5])
    assert tree.find(5) is nodes[5] and tree.min() is tree.max() is nodes[5]
    assert nodes[5].rank == 0 and tree.successor(nodes[5]) is None
    tree.delete(nodes[5])
    tree.verify()
    assert len(tree) == 0 and tree.root is None


@pytest.mark.parametrize("order", ["ascending", "descending", "random"])
def test_insert_only_is_an_avl_tree(order):
    keys = list(range(2000))
    if order == "descending":
        keys.reverse()
    elif order == "random":
        random.Random(1).shuffle(keys)
    tree, _ = build(keys)
    tree.verify()
    assert [n.key for n in tree] == sorted(keys)
    for node in tree:  # no 2,2 node without deletions: the ranks are AVL heights
        diffs = sorted(node.rank - (c.rank if c else -1) for c in (node.left, node.right))
        assert diffs in ([1, 1], [1, 2])
    assert height(tree.root) <= 1.4405 * math.log2(len(keys) + 2)


def test_duplicate_key_is_rejected():
    tree, nodes = build([1, 2, 3])
    with pytest.raises(KeyError):
        tree.insert(WavlNode(2))
    tree.verify()
    assert len(tree) == 3 and tree.find(2) is nodes[2]


def test_min_max_successor_and_tuple_keys():
    keys = [(3, 1), (1, 9), (2, 0), (1, 2), (7,), ()]
    tree, nodes = build(keys)
    tree.verify()
    assert tree.min().key == () and tree.max().key == (7,)
    assert tree.successor(nodes[(1, 2)]) is nodes[(1, 9)]
    assert tree.successor(nodes[(7,)]) is None
    assert [n.key for n in tree] == sorted(keys)
    assert tree.find((1, 9)) is nodes[(1, 9)] and tree.find((1, 5)) is None


def test_replace_takes_the_position():
    tree, nodes = build(range(10))
    new = WavlNode(4)
    tree.replace(nodes[4], new)
    tree.verify()
    assert tree.find(4) is new and nodes[4].parent is None and len(tree) == 10
    new_root = WavlNode(tree.root.key)
    tree.replace(tree.root, new_root)
    tree.verify()
    assert tree.root is new_root


def test_delete_everything_in_random_order_with_bounded_rotations():
    rng = random.Random(7)
    keys = list(range(3000))
    rng.shuffle(keys)
    tree = CountingTree()
    nodes = {}
    for k in keys:
        nodes[k] = WavlNode(k)
        before = tree.rotations
        tree.insert(nodes[k])
        assert tree.rotations - before <= 2
    rng.shuffle(keys)
    remaining = sorted(keys)
    for i, k in enumerate(keys):
        before = tree.rotations
        tree.delete(nodes[k])
        assert tree.rotations - before <= 2
        remaining.remove(k)
        if i % 97 == 0:
            tree.verify()
            assert [n.key for n in tree] == remaining
        n = len(tree)
        assert tree.root is None or tree.root.rank <= 2 * math.log2(n + 1)
    assert len(tree) == 0 and tree.root is None


def test_rank_bound_under_mixed_updates():
    """Height <= rank <= 2 log2(n+1) in any WAVL tree, with deletions too."""
    rng = random.Random(3)
    tree, live = WavlTree(), []
    for _ in range(20000):
        if live and rng.random() < 0.5:
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            tree.delete(live.pop())
        else:
            live.append(WavlNode(rng.random()))
            tree.insert(live[-1])
        if tree.root is not None:
            assert height(tree.root) <= tree.root.rank <= 2 * math.log2(len(tree) + 1)
    tree.verify()


def test_verify_catches_a_broken_tree():
    tree, nodes = build(range(7))
    tree.verify()
    leaf = next(n for n in tree if n.left is None and n.right is None)
    leaf.rank = 1
    with pytest.raises(AssertionError, match="leaf of rank"):
        tree.verify()
    leaf.rank = 0
    nodes[3].key, nodes[4].key = nodes[4].key, nodes[3].key
    with pytest.raises(AssertionError, match="out of order"):
        tree.verify()
    nodes[3].key, nodes[4].key = nodes[4].key, nodes[3].key
    child = tree.root.left
    child.parent = None
    with pytest.raises(AssertionError, match="parent link"):
        tree.verify()


class WavlAgainstSortedList(RuleBasedStateMachine):
    """Random inserts/deletes/queries; the tree must always equal a sorted list and verify()."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = CountingTree()
        self.nodes: dict[int, WavlNode] = {}
        self.keys: list[int] = []

    @rule(key=st.integers(-50, 50))
    def insert(self, key):
        node = WavlNode(key)
        if key in self.nodes:
            with pytest.raises(KeyError):
                self.tree.insert(node)
            return
        before = self.tree.rotations
        self.tree.insert(node)
        assert self.tree.rotations - before <= 2
        self.nodes[key] = node
        bisect.insort(self.keys, key)

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def delete(self, data):
        key = data.draw(st.sampled_from(self.keys))
        before = self.tree.rotations
        self.tree.delete(self.nodes.pop(key))
        assert self.tree.rotations - before <= 2
        self.keys.remove(key)

    @rule(key=st.integers(-55, 55))
    def find(self, key):
        found = self.tree.find(key)
        assert (found is None) == (key not in self.nodes)
        assert found is None or found is self.nodes[key]

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def successor(self, data):
        i = data.draw(st.integers(0, len(self.keys) - 1))
        nxt = self.tree.successor(self.nodes[self.keys[i]])
        assert (nxt.key if nxt else None) == (self.keys[i + 1] if i + 1 < len(self.keys) else None)

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def replace(self, data):
        key = data.draw(st.sampled_from(self.keys))
        new = WavlNode(key)
        self.tree.replace(self.nodes[key], new)
        self.nodes[key] = new

    @invariant()
    def matches_sorted_list(self):
        self.tree.verify()
        assert [n.key for n in self.tree] == self.keys
        assert len(self.tree) == len(self.keys)
        assert (self.tree.min().key if self.keys else None) == (self.keys[0] if self.keys else None)
        assert (self.tree.max().key if self.keys else None) == (self.keys[-1] if self.keys else None)


WavlAgainstSortedList.TestCase.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
TestWavlAgainstSortedList = WavlAgainstSortedList.TestCase
