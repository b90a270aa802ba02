"""Tree walks shared by every module: sums and means of leaf rows over subtrees, sums along root paths.

Two index spaces: node order (``[T, ...]``, node ids; :func:`leaf_sums`, :func:`node_means`,
:func:`push_down`) and inner order (``[K, ...]``, the inner nodes in level order, as the DP kernel keeps them;
:func:`inner_sums`, :func:`inner_means`, :func:`add_path_sums`). One scatter or gather per tree level.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .hierarchy import Hierarchy

__all__ = ["leaf_sums", "node_means", "push_down", "inner_sums", "inner_means", "add_path_sums",
           "add_inner_means_grad"]

#: Leaf rows per step when sums along root paths are added to the leaves (bounds the temporary).
LEAF_CHUNK = 1 << 15


def leaf_sums(x: Tensor, hierarchy: Hierarchy) -> Tensor:
    """``[T, ...]`` sum of the leaf rows ``x`` ``[N, ...]`` below every tree node, :math:`n(A)\\,\\bar{x}_A`."""
    h = hierarchy
    sums = x.new_zeros((h.num_nodes,) + x.shape[1:]).index_copy(0, h.leaf_node, x)
    for level in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(level)
        sums = sums.index_add(0, h.parent[nodes], sums[nodes])
    return sums


def node_means(x: Tensor, hierarchy: Hierarchy) -> Tensor:
    """``[T, ...]`` mean of the leaf rows ``x`` ``[N, ...]`` below every tree node (a leaf's own row);
    differentiable by autograd."""
    count = hierarchy.leaf_count.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    return leaf_sums(x, hierarchy) / count


def inner_sums(x: Tensor, h: Hierarchy) -> Tensor:
    """``[K, H, d]`` sum of ``x`` ``[N, H, d]`` over the leaves below each inner node (inner order), one
    scatter per level."""
    base = x.new_zeros((h.num_inner + 1,) + x.shape[1:]).index_add(0, h.leaf_parent_inner, x)
    sums = list(base[:h.num_inner].split(h.inner_level_sizes))
    for depth in range(h.num_levels - 2, -1, -1):
        below = sums[depth + 1]
        if below.numel():
            sums[depth] = sums[depth].index_add(0, h.levels[depth + 1].inner_parent_local, below)
    return torch.cat(sums)


def inner_means(x: Tensor, h: Hierarchy) -> Tensor:
    """``[K, H, d]`` mean of ``x`` over the leaves below each inner node (inner order)."""
    return inner_sums(x, h) / h.inner_leaf_count.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def add_path_sums(inner: Tensor, h: Hierarchy, leaf: Tensor) -> None:
    """Add to every leaf row of ``leaf`` ``[N, ...]`` the rows ``inner`` ``[K, ...]`` of all its inner
    ancestors. One gather per level, then leaf rows in chunks of :data:`LEAF_CHUNK`.

    The sums along the paths are built out of place: inductor (torch 2.13) miscompiles the in-place version
    (level views of one buffer reading each other)."""
    totals, above = [], None
    for level, part in zip(h.levels, inner.split(h.inner_level_sizes)):
        if above is not None and part.numel():
            part = part + above.index_select(0, level.inner_parent_local)
        totals.append(part)
        above = part
    total = torch.cat(totals + [inner.new_zeros((1,) + inner.shape[1:])])   # row K: the parent of root leaves
    for start in range(0, h.num_leaves, LEAF_CHUNK):
        rows = h.leaf_parent_inner[start:start + LEAF_CHUNK]
        leaf[start:start + rows.numel()] += total.index_select(0, rows)


def add_inner_means_grad(grad_mean: Tensor, h: Hierarchy, grad_leaf: Tensor) -> None:
    """Adjoint of :func:`inner_means`: add to ``grad_leaf`` ``[N, H, d]`` what reaches each leaf through the
    means of its inner ancestors, given their gradient ``[K, H, d]``."""
    add_path_sums(grad_mean / h.inner_leaf_count.to(grad_mean.dtype).view(-1, 1, 1), h, grad_leaf)


def push_down(node_x: Tensor, hierarchy: Hierarchy) -> Tensor:
    """``[N, ...]``: for every leaf, the sum of ``node_x`` ``[T, ...]`` over the leaf and all its ancestors."""
    h = hierarchy
    for level in range(1, h.num_levels):
        nodes = h.level_nodes(level)
        node_x = node_x.index_add(0, nodes, node_x[h.parent[nodes]])
    return node_x[h.leaf_node]
