r"""Column-tied and causal HSA (spec section 4b).

Column tying constrains each attention row separately: row ``i`` must be uniform over the leaves of every
sibling subtree ``S`` of every ancestor ``B_k`` on the path ``B_1 ... B_m = i`` (root excluded). Its KL
projection of the softmax row is a softmax of ``q_i`` over the subtree summaries:

.. math::
    \Theta_{ij} = \exp\big(q_i^\top \rho_k(S) \cdot \mathrm{scale} + p(B_k, S)\big) / Z_i
    \quad (j \text{ below } S), \qquad
    \Theta_{ii} = \exp(s_{ii}) / Z_i \text{ (with include\_self)},

with ``Z_i`` the sum over all entries, each block counted ``n(S)`` times. The causal variant keeps only the
left siblings ``sibL(B_k)`` (smaller node id) and always keeps the self term, so row ``i`` sees only earlier
leaves. Each leaf reads at most ``b - 1`` summaries per level: time and memory ``O(N b D d)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from .functional import _check_inputs
from .hierarchy import NEG, Hierarchy

__all__ = ["column_tied_hsa", "check_depth_first", "TIES"]

TIES = ("blocks", "columns")
"""``'blocks'``: HSA of section 4 (rows and columns tied per sibling block); ``'columns'``: section 4b."""

#: Gathered summary elements per chunk of leaves (bounds the temporaries of one step).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ColumnLayout:
    """The summaries each leaf row attends to, padded to the longest row.

    Attributes:
        column: ``[N, L]`` node ``S`` of each entry (a leaf itself for the self term; 0 in padding).
        query_node: ``[N, L]`` the ancestor ``B_k`` whose sibling ``S`` is (the leaf itself for the self term);
            gives the position term ``<pos[B_k], pos[S]>``.
        valid: ``[N, L]`` False in padding.
    """

    column: Tensor
    query_node: Tensor
    valid: Tensor


_LAYOUTS: WeakKeyDictionary = WeakKeyDictionary()


def column_tied_hsa(query: Tensor, key: Tensor, value: Tensor, hierarchy: Hierarchy, *, pos: Tensor | None = None,
                    include_self: bool = False, scale: float | None = None, tie: str | None = "columns",
                    causal: bool = False, return_attention: bool = False) -> Tensor:
    """Column-tied HSA; ``hgattn.hsa(..., tie='columns')`` and ``hgattn.hsa(..., causal=True)`` call this.

    Args:
        query, key, value: ``[N, H, d]`` (or ``[N, d]``), rows in leaf order.
        hierarchy: the tree or forest. With ``causal``, leaves must be numbered depth-first left to right
            (children in increasing id order), see :func:`check_depth_first`.
        pos: optional ``[T, C]`` or ``[T, H, C]`` position embedding per tree node.
        include_self: let a leaf attend to itself; required with ``causal``.
        scale: logit scale, default ``1 / sqrt(d)``.
        tie: ``'columns'`` (or ``None``, which means the same here).
        causal: attend only to the left siblings of each ancestor and to the leaf itself.
        return_attention: not available for column tying (raises ``ValueError``).

    Returns:
        ``[N, H, d_v]`` (the shape of ``value``); half-precision inputs are computed in float32.
    """
    _check_variant(tie, causal, include_self, return_attention)
    q, k, v, pos, one_head = _check_inputs(query, key, value, hierarchy, pos)
    if causal:
        check_depth_first(hierarchy)
    out_dtype = value.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    pos = pos.to(dtype) if pos is not None else None
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)

    layout = column_layout(hierarchy, causal=causal, include_self=include_self)
    key_table, value_table = _node_means(k, hierarchy), _node_means(v, hierarchy)
    log_count = hierarchy.leaf_count.to(dtype).log()
    width, heads = layout.column.size(1), q.size(1)
    chunk = max(1, CHUNK_ELEMENTS // (width * heads * max(q.size(-1), v.size(-1))))
    outs = []
    for start in range(0, hierarchy.num_leaves, chunk):
        rows = slice(start, start + chunk)
        outs.append(_attend_rows(q[rows], layout.column[rows], layout.query_node[rows], layout.valid[rows],
                                 key_table, value_table, log_count, pos, scale))
    out = torch.cat(outs).to(out_dtype)
    return out.squeeze(1) if one_head else out


def _check_variant(tie: str | None, causal: bool, include_self: bool, return_attention: bool) -> None:
    if tie is not None and tie not in TIES:
        raise ValueError(f"tie must be one of {TIES}, got {tie!r}")
    if causal and tie == "blocks":
        raise ValueError("causal HSA ties columns only (tying the rows of a block leaks future queries, spec "
                         "section 4b): use tie='columns' or leave tie unset with causal=True")
    if tie == "blocks":
        raise ValueError("tie='blocks' is hgattn.hsa's default operator, not the column-tied one")
    if causal and not include_self:
        raise ValueError("causal HSA needs include_self=True (the first leaf of a sequence has nothing else "
                         "to attend to)")
    if return_attention:
        raise ValueError("return_attention is only available for tie='blocks'; for column tying, pass an "
                         "identity value ([N, N]) to read the attention rows")


def check_depth_first(hierarchy: Hierarchy) -> None:
    """Raise ``ValueError`` unless leaf order is the depth-first, left-to-right order of the tree.

    That holds when the leaves below every node are consecutive rows and, inside every family, children in
    increasing id cover increasing row ranges; then ``sibL(B)`` (smaller id) holds exactly earlier leaves.
    """
    h = hierarchy
    first = torch.full((h.num_nodes,), h.num_leaves, dtype=torch.long, device=h.device)
    last = torch.full((h.num_nodes,), -1, dtype=torch.long, device=h.device)
    for rows, node in _leaf_ancestors(h):
        first.scatter_reduce_(0, node, rows, "amin")
        last.scatter_reduce_(0, node, rows, "amax")
    split = (last - first + 1 != h.leaf_count).nonzero().view(-1)
    if split.numel():
        raise ValueError(f"causal HSA needs leaves numbered depth-first: the leaves below node {int(split[0])} "
                         "are not consecutive leaf rows (renumber the tree in preorder)")
    children = h.child_index
    same_family = h.parent[children[1:]] == h.parent[children[:-1]]
    backwards = same_family & (first[children[1:]] < last[children[:-1]])
    if bool(backwards.any()):
        at = int(backwards.nonzero()[0])
        raise ValueError(f"causal HSA needs leaves numbered depth-first: node {int(children[at + 1])} holds "
                         f"earlier leaves than its sibling {int(children[at])}, which has a smaller id")


def column_layout(hierarchy: Hierarchy, *, causal: bool, include_self: bool) -> ColumnLayout:
    """The padded per-leaf summary lists (cached per hierarchy object)."""
    cache = _LAYOUTS.setdefault(hierarchy, {})
    if (causal, include_self) not in cache:
        cache[causal, include_self] = _build_layout(hierarchy, causal, include_self)
    return cache[causal, include_self]


def _leaf_ancestors(h: Hierarchy):
    """Yield ``(rows, node)``: the leaves themselves, then their ancestors one level up at a time."""
    rows, node = torch.arange(h.num_leaves, device=h.device), h.leaf_node
    while rows.numel():
        yield rows, node
        up = h.parent[node]
        alive = up >= 0
        rows, node = rows[alive], up[alive]


def _build_layout(h: Hierarchy, causal: bool, include_self: bool) -> ColumnLayout:
    entries = []
    if include_self:
        entries.append((torch.arange(h.num_leaves, device=h.device), h.leaf_node, h.leaf_node))
    for rows, node in _leaf_ancestors(h):
        up = h.parent[node]
        rows, node, up = rows[up >= 0], node[up >= 0], up[up >= 0]
        start = h.child_ptr[up]
        size = h.child_ptr[up + 1] - start
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=h.device), size)
        offset = torch.arange(owner.numel(), device=h.device) - torch.repeat_interleave(size.cumsum(0) - size, size)
        sibling, own = h.child_index[start[owner] + offset], node[owner]
        keep = sibling < own if causal else sibling != own
        entries.append((rows[owner][keep], sibling[keep], own[keep]))
    row, column, query_node = (torch.cat(parts) for parts in zip(*entries))
    order = torch.argsort(row, stable=True)
    row, column, query_node = row[order], column[order], query_node[order]
    length = torch.bincount(row, minlength=h.num_leaves)
    width = max(1, int(length.max()) if length.numel() else 1)
    slot = torch.arange(row.numel(), device=h.device) - (length.cumsum(0) - length)[row]
    padded = torch.zeros(h.num_leaves, width, dtype=torch.long, device=h.device)
    valid = torch.zeros(h.num_leaves, width, dtype=torch.bool, device=h.device)
    valid[row, slot] = True
    return ColumnLayout(padded.index_put((row, slot), column), padded.index_put((row, slot), query_node), valid)


def _node_means(x: Tensor, h: Hierarchy) -> Tensor:
    """``[T, H, d]`` mean of ``x`` ``[N, H, d]`` over the leaves below every node (a leaf's own row)."""
    sums = x.new_zeros((h.num_nodes,) + x.shape[1:]).index_add(0, h.leaf_node, x)
    for depth in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(depth)
        sums = sums.index_add(0, h.parent[nodes], sums[nodes])
    return sums / h.leaf_count.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def _attend_rows(q: Tensor, column: Tensor, query_node: Tensor, valid: Tensor, key_table: Tensor,
                 value_table: Tensor, log_count: Tensor, pos: Tensor | None, scale: float) -> Tensor:
    """Softmax of ``q`` ``[C, H, d]`` over its ``[C, L]`` summaries (with ``log n(S)`` prior): ``[C, H, d_v]``."""
    logit = torch.einsum("chd,clhd->chl", q, key_table[column]) * scale
    logit = logit + log_count[column].unsqueeze(1)
    if pos is not None:
        logit = logit + (pos[query_node] * pos[column]).sum(-1).transpose(1, 2)
    keep = valid.unsqueeze(1)
    weight = torch.softmax(logit.masked_fill(~keep, NEG), dim=-1) * keep
    return torch.einsum("chl,clhd->chd", weight, value_table[column])
