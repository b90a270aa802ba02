"""Random and hand-made parent arrays for tests.

A parent array lists every tree node's parent id, ``-1`` for a root. Generated trees are numbered in
preorder (a parent's id is below its children's, leaves left to right), have unbalanced shapes, leaves at
different depths and unary chains (nodes with a single child); a one-leaf tree may be a lone root.
"""
from __future__ import annotations

import random

UNBALANCED = [-1, 0, 0, 2, 2, 4, 4, 4]
"""Leaves 1, 3, 5, 6, 7 at depths 1, 2, 3, 3, 3."""

UNARY_CHAIN = [-1, 0, 1, 2, 2, 0, 0, 6]
"""Node 1 is a unary link above node 2 (leaves 3, 4); leaf 7 is the only child of node 6."""

LONE_LEAF = [-1, 0, 0, 2]
"""Leaf 3 has no sibling: without include_self it attends only to leaf 1."""

ONE_LEAF_ROOT = [-1]
"""A tree that is a single leaf."""

ONE_LEAF_CHAIN = [-1, 0, 1]
"""A single leaf below a unary chain."""


def flat_tree(num_leaves: int) -> list[int]:
    """All leaves children of one root (node 0)."""
    return [-1] + [0] * num_leaves


def forest(*trees: list[int]) -> list[int]:
    """Concatenate parent arrays into one forest, shifting node ids."""
    parent: list[int] = []
    for tree in trees:
        offset = len(parent)
        parent.extend(up if up < 0 else up + offset for up in tree)
    return parent


def _random_composition(rng: random.Random, total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` positive integers, uniformly over compositions."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    bounds = [0] + cuts + [total]
    return [hi - lo for lo, hi in zip(bounds, bounds[1:])]


def random_tree(
    rng: random.Random, num_leaves: int, *, max_children: int = 4, chain_prob: float = 0.2
) -> list[int]:
    """A random tree with ``num_leaves`` leaves, in preorder.

    Each node becomes a unary link with probability ``chain_prob``; otherwise it is a leaf (one leaf to
    place) or splits its leaves among 2..max_children children at random.
    """
    parent: list[int] = []

    def grow(up: int, leaves: int) -> None:
        node = len(parent)
        parent.append(up)
        if rng.random() < chain_prob:
            grow(node, leaves)
        elif leaves > 1:
            parts = rng.randint(2, min(leaves, max_children))
            for part in _random_composition(rng, leaves, parts):
                grow(node, part)

    grow(-1, num_leaves)
    return parent


def random_forest(rng: random.Random, leaf_counts: list[int], **tree_options: float) -> list[int]:
    """One random tree per entry of ``leaf_counts``, concatenated."""
    return forest(*(random_tree(rng, count, **tree_options) for count in leaf_counts))


def leaves_of(parent: list[int]) -> list[int]:
    """Leaf node ids in row order (increasing id)."""
    internal = set(parent)
    return [node for node in range(len(parent)) if node not in internal]


def relabel(parent: list[int], new_id: list[int]) -> list[int]:
    """The same forest with node ``v`` renamed ``new_id[v]``."""
    relabelled = [0] * len(parent)
    for node, up in enumerate(parent):
        relabelled[new_id[node]] = -1 if up < 0 else new_id[up]
    return relabelled
