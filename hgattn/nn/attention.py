r"""HSA's attention in factored form over sibling edges, differentiable, for :class:`~hgattn.nn.HSAConv`'s
message path (explain mode, message hooks, attention dropout).

The fused operator :func:`hgattn.hsa` computes outputs without materialising the per-pair weights; these
helpers compute the weights themselves with plain autograd ops (spec section 4), in ``O(P H d + T H d)``:

- :func:`sibling_attention`: per ordered sibling pair ``(B, S)`` the per-entry weight
  :math:`\alpha_{BS} = \exp(u(B) + s(B, S) - z(B))` ``[P, H]``, and the leaves' self weights ``[N, H]``;
- :func:`leaf_sums` / :func:`push_down`: the upward sums :math:`n(S)\,\bar{\mathbf{v}}_S` that travel along
  sibling edges and the downward pass that adds every ancestor's aggregate to the leaves below it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from ..functional import HSAAttention
from ..hierarchy import NEG, Hierarchy

__all__ = ["sibling_edge_index", "leaf_sums", "push_down", "sibling_attention"]


def sibling_edge_index(hierarchy: Hierarchy) -> Tensor:
    """``[2, P]`` sibling edges ``S -> B`` (row 0 source ``S``, row 1 target ``B``), in the pair order of
    :attr:`Hierarchy.sibling_index` (sorted by ``B``): the edges :class:`~hgattn.nn.HSAConv` passes messages
    over and the edges an :class:`~torch_geometric.explain.AttentionExplainer` mask refers to."""
    return hierarchy.sibling_index.flip(0)


def leaf_sums(x: Tensor, hierarchy: Hierarchy) -> Tensor:
    """``[T, ...]`` sum of the leaf rows ``x`` ``[N, ...]`` below every tree node, :math:`n(A)\\,\\bar{x}_A`."""
    h = hierarchy
    sums = x.new_zeros((h.num_nodes,) + x.shape[1:]).index_copy(0, h.leaf_node, x)
    for level in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(level)
        sums = sums.index_add(0, h.parent[nodes], sums[nodes])
    return sums


def push_down(node_x: Tensor, hierarchy: Hierarchy) -> Tensor:
    """``[N, ...]``: for every leaf, the sum of ``node_x`` ``[T, ...]`` over the leaf and all its ancestors."""
    h = hierarchy
    for level in range(1, h.num_levels):
        nodes = h.level_nodes(level)
        node_x = node_x.index_add(0, nodes, node_x[h.parent[nodes]])
    return node_x[h.leaf_node]


def sibling_attention(query: Tensor, key: Tensor, hierarchy: Hierarchy, pos: Tensor | None = None,
                      include_self: bool = False, scale: float | None = None) -> HSAAttention:
    r"""HSA's attention in factored form, differentiable in ``query``, ``key`` and ``pos``.

    Args:
        query, key: ``[N, H, d]`` in leaf order.
        hierarchy: the tree or forest.
        pos: ``[T, H, C]`` position embeddings per tree node (sibling term :math:`\langle p_B, p_S\rangle`).
        include_self: whether leaves attend to themselves.
        scale: logit scale, default ``1 / sqrt(d)``.

    Returns:
        :class:`~hgattn.HSAAttention` with ``sibling_weight`` ``[P, H]`` (pairs of
        :attr:`Hierarchy.sibling_index`) and ``self_weight`` ``[N, H]``; the same values as
        ``hsa(..., return_attention=True)``.
    """
    h = hierarchy
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    count = h.leaf_count.to(query.dtype)
    mean_q = leaf_sums(query, h) / count[:, None, None]
    mean_k = leaf_sums(key, h) / count[:, None, None]
    b, s = h.sibling_index
    logit = (mean_q[b] * mean_k[s]).sum(-1) * scale
    if pos is not None:
        logit = logit + (pos[b] * pos[s]).sum(-1)
    sibling_mass = _grouped_logsumexp(logit + count[s].log()[:, None], b, h.num_nodes)
    self_logit = None
    if include_self:
        self_logit = (query * key).sum(-1) * scale
        if pos is not None:
            self_logit = self_logit + pos[h.leaf_node].square().sum(-1)
    self_mass, partition = _masses(sibling_mass, self_logit, h)
    reach = _reach(self_mass - partition, h)
    weight = torch.exp(reach[b] + logit - partition[b])
    if include_self:
        leaf = h.leaf_node
        self_weight = torch.exp(reach[leaf] + self_mass[leaf] - partition[leaf])
    else:
        self_weight = query.new_zeros(h.num_leaves, query.size(1))
    return HSAAttention(h.sibling_index, weight, self_weight, h)


def _grouped_logsumexp(x: Tensor, index: Tensor, size: int) -> Tensor:
    """``[size, H]`` logsumexp of the rows of ``x`` ``[P, H]`` grouped by ``index``; ``NEG`` for empty groups."""
    top = scatter(x.detach(), index, dim=0, dim_size=size, reduce="max")
    total = scatter(torch.exp(x - top[index]), index, dim=0, dim_size=size, reduce="sum")
    has_pairs = (torch.bincount(index, minlength=size) > 0)[:, None]
    return torch.where(has_pairs, top + total.clamp(min=1e-300).log(), NEG)


def _masses(sibling_mass: Tensor, self_logit: Tensor | None, h: Hierarchy) -> tuple[Tensor, Tensor]:
    """Self mass ``a`` and partition ``z`` ``[T, H]`` (spec section 4), bottom-up by depth."""
    self_mass = sibling_mass.new_zeros(sibling_mass.shape).masked_fill(h.is_leaf[:, None], NEG)
    if self_logit is not None:
        self_mass = self_mass.index_copy(0, h.leaf_node, self_logit)
    partition = torch.logaddexp(self_mass, sibling_mass)
    count = h.leaf_count.to(sibling_mass.dtype)
    share = (count / count[h.parent.clamp(min=0)])[:, None]
    for level in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(level)
        self_mass = self_mass.index_add(0, h.parent[nodes], share[nodes] * partition[nodes])
        parents = torch.unique(h.parent[nodes])
        partition = partition.index_copy(0, parents, torch.logaddexp(self_mass[parents], sibling_mass[parents]))
    return self_mass, partition


def _reach(log_stay: Tensor, h: Hierarchy) -> Tensor:
    """``[T, H]`` :math:`u(B) = \\sum \\log \\mu(A)` over the strict ancestors ``A`` of ``B`` below the root."""
    reach = log_stay.new_zeros(log_stay.shape)
    for level in range(2, h.num_levels):
        nodes = h.level_nodes(level)
        parents = h.parent[nodes]
        reach = reach.index_copy(0, nodes, reach[parents] + log_stay[parents])
    return reach
