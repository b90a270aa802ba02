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

Computation: leaves are put in depth-first order, so that the leaves below any node are consecutive. Every
family (the children of one inner node ``P``) is a small dense attention of the ``n(P)`` leaf queries below
``P`` over the ``|chd(P)|`` child summaries; families of similar shape are padded into one batch. Each family
gives every leaf below it a partial softmax (log-mass and normalised output), and the partials of a leaf's
ancestors' families and of its self term are combined by logsumexp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from .functional import _check_inputs
from .hierarchy import NEG, Hierarchy

__all__ = ["column_tied_hsa", "check_depth_first", "attended_summaries", "TIES"]

TIES = ("blocks", "columns")
"""``'blocks'``: HSA of section 4 (rows and columns tied per sibling block); ``'columns'``: section 4b."""

#: Elements of a family batch's logits or outputs per step (bounds the temporaries of one step).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class FamilyGroup:
    """Families padded to a common shape: ``F`` families, ``R`` leaves below each, ``W`` children each.

    Attributes:
        rows: ``[F, R]`` depth-first positions of the leaves below each family's parent (0 in padding).
        row_valid: ``[F, R]`` False in padding.
        rank: ``[F, R]`` rank, among the family's children, of the child above each leaf.
        members: ``[F, W]`` the children's node ids, in increasing id (0 in padding).
        member_valid: ``[F, W]`` False in padding.
    """

    rows: Tensor
    row_valid: Tensor
    rank: Tensor
    members: Tensor
    member_valid: Tensor


@dataclass(frozen=True)
class ColumnLayout:
    """Depth-first leaf order and the family groups of one hierarchy.

    Attributes:
        position: ``[N]`` depth-first position of each leaf row.
        order: ``[N]`` leaf row at each depth-first position (``None`` when leaf rows are depth-first already).
        groups: the families, grouped by padded shape.
    """

    position: Tensor
    order: Tensor | None
    groups: list[FamilyGroup]


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

    h, layout = hierarchy, column_layout(hierarchy)
    key_table, value_table = _node_means(k, h), _node_means(v, h)
    log_count = h.leaf_count.to(dtype).log()
    q_dfs = q if layout.order is None else q[layout.order]
    partials = [_family_partials(group, q_dfs, key_table, value_table, log_count, pos, scale, causal)
                for group in layout.groups]
    if include_self:
        self_logit = (q * k).sum(-1) * scale
        if pos is not None:
            self_logit = self_logit + pos[h.leaf_node].square().sum(-1)
        partials.append((layout.position, self_logit, v))
    out = _combine(partials, h.num_leaves, v)
    out = (out if layout.order is None else out[layout.position]).to(out_dtype)
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


def attended_summaries(hierarchy: Hierarchy, *, causal: bool = False, include_self: bool = True) -> int:
    """How many summaries all leaves attend to together (the work of column-tied HSA is ``4 H d`` times this)."""
    h = hierarchy
    if causal:
        count = int((h.leaf_count * h.child_rank)[h.parent >= 0].sum())
    else:
        count = int((h.leaf_count * (h.family_size - 1)).sum())
    return count + (h.num_leaves if include_self else 0)


def column_layout(hierarchy: Hierarchy) -> ColumnLayout:
    """Depth-first order and family groups of ``hierarchy`` (cached per hierarchy object)."""
    if hierarchy not in _LAYOUTS:
        _LAYOUTS[hierarchy] = _build_layout(hierarchy)
    return _LAYOUTS[hierarchy]


def _leaf_ancestors(h: Hierarchy):
    """Yield ``(rows, node)``: the leaves themselves, then their ancestors one level up at a time."""
    rows, node = torch.arange(h.num_leaves, device=h.device), h.leaf_node
    while rows.numel():
        yield rows, node
        up = h.parent[node]
        alive = up >= 0
        rows, node = rows[alive], up[alive]


def _depth_first_start(h: Hierarchy) -> Tensor:
    """``[T]`` depth-first position of the first leaf below each node (children visited by increasing id)."""
    counts = h.leaf_count[h.child_index]
    before = counts.cumsum(0) - counts
    family_first = h.child_ptr[h.parent[h.child_index]]
    start = torch.zeros(h.num_nodes, dtype=torch.long, device=h.device)
    start[h.child_index] = before - before[family_first]
    roots = (h.parent < 0).nonzero().view(-1)
    root_counts = h.leaf_count[roots]
    start[roots] = root_counts.cumsum(0) - root_counts
    for depth in range(1, h.num_levels):
        nodes = h.level_nodes(depth)
        start[nodes] += start[h.parent[nodes]]
    return start


def _build_layout(h: Hierarchy) -> ColumnLayout:
    start = _depth_first_start(h)
    position = start[h.leaf_node]
    in_order = bool((position == torch.arange(h.num_leaves, device=h.device)).all())
    order = None if in_order else torch.argsort(position)
    inner = (~h.is_leaf).nonzero().view(-1)
    width = h.child_ptr[inner + 1] - h.child_ptr[inner]
    shape_key = _ceil_pow2(h.leaf_count[inner]) * (1 << 32) + _ceil_pow2(width)
    groups = [_family_group(h, start, inner[shape_key == key]) for key in torch.unique(shape_key)]
    return ColumnLayout(position, order, groups)


def _ceil_pow2(x: Tensor) -> Tensor:
    return torch.exp2(torch.ceil(torch.log2(x.double()))).long()


def _family_group(h: Hierarchy, start: Tensor, parents: Tensor) -> FamilyGroup:
    counts = h.leaf_count[parents]
    width = h.child_ptr[parents + 1] - h.child_ptr[parents]
    slot = torch.arange(int(width.max()), device=h.device)
    member_valid = slot < width[:, None]
    members = torch.where(member_valid, h.child_index[(h.child_ptr[parents, None] + slot).clamp(
        max=h.child_index.numel() - 1)], 0)
    offset = torch.arange(int(counts.max()), device=h.device)
    row_valid = offset < counts[:, None]
    rows = torch.where(row_valid, start[parents, None] + offset, 0)
    member_start = torch.where(member_valid, start[members], h.num_leaves)
    rank = (member_start[:, None, :] <= rows[:, :, None]).sum(-1) - 1
    return FamilyGroup(rows, row_valid, rank.clamp(min=0), members, member_valid)


def _node_means(x: Tensor, h: Hierarchy) -> Tensor:
    """``[T, H, d]`` mean of ``x`` ``[N, H, d]`` over the leaves below every node (a leaf's own row)."""
    sums = x.new_zeros((h.num_nodes,) + x.shape[1:]).index_add(0, h.leaf_node, x)
    for depth in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(depth)
        sums = sums.index_add(0, h.parent[nodes], sums[nodes])
    return sums / h.leaf_count.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def _family_partials(group: FamilyGroup, q: Tensor, key_table: Tensor, value_table: Tensor, log_count: Tensor,
                     pos: Tensor | None, scale: float, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per (leaf, family) entry: depth-first leaf position ``[M]``, log-mass ``[M, H]``, output ``[M, H, d]``."""
    fam, rows, width = group.rows.size(0), group.rows.size(1), group.members.size(1)
    heads, dim = q.size(1), max(q.size(-1), value_table.size(-1))
    step_f = max(1, CHUNK_ELEMENTS // (rows * heads * max(width, dim)))
    step_r = rows if step_f > 1 else max(1, CHUNK_ELEMENTS // (heads * max(width, dim)))
    parts = []
    for f in range(0, fam, step_f):
        for r in range(0, rows, step_r):
            chunk = FamilyGroup(*(x[f:f + step_f] for x in (group.rows, group.row_valid, group.rank)),
                                group.members[f:f + step_f], group.member_valid[f:f + step_f])
            chunk = FamilyGroup(chunk.rows[:, r:r + step_r], chunk.row_valid[:, r:r + step_r],
                                chunk.rank[:, r:r + step_r], chunk.members, chunk.member_valid)
            parts.append(_attend_family(chunk, q, key_table, value_table, log_count, pos, scale, causal))
    return tuple(torch.cat(items) for items in zip(*parts))


def _attend_family(group: FamilyGroup, q: Tensor, key_table: Tensor, value_table: Tensor, log_count: Tensor,
                   pos: Tensor | None, scale: float, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax of each leaf query over its family's child summaries (``log n(S)`` prior), heads-first."""
    members = group.members
    queries = q[group.rows].permute(0, 2, 1, 3)                                  # [F, H, R, d]
    keys = key_table[members].permute(0, 2, 3, 1)                                # [F, H, d, W]
    logit = torch.matmul(queries, keys) * scale + log_count[members][:, None, None, :]
    if pos is not None:
        member_pos = pos[members].transpose(1, 2)                                # [F, Hp, W, C]
        pair = torch.matmul(member_pos, member_pos.transpose(-1, -2))            # [F, Hp, W, W]
        index = group.rank[:, None, :, None].expand(-1, pair.size(1), -1, pair.size(-1))
        logit = logit + torch.gather(pair, 2, index)
    slot = torch.arange(members.size(1), device=members.device)
    allowed = slot < group.rank[..., None] if causal else slot != group.rank[..., None]
    allowed = (allowed & group.member_valid[:, None, :]).unsqueeze(1)           # [F, 1, R, W]
    logit = logit.masked_fill(~allowed, NEG)
    lse = torch.logsumexp(logit, dim=-1)
    weight = torch.exp(logit - lse.unsqueeze(-1)) * allowed
    lse = lse.masked_fill(~allowed.any(-1), NEG)
    out = torch.matmul(weight, value_table[members].transpose(1, 2))              # [F, H, R, d]
    valid = group.row_valid
    return group.rows[valid], lse.transpose(1, 2)[valid], out.transpose(1, 2)[valid]


def _combine(partials: list[tuple[Tensor, Tensor, Tensor]], num_leaves: int, like: Tensor) -> Tensor:
    """Logsumexp-weighted sum of the partial softmaxes of every leaf: ``[N, H, d]``."""
    if not partials:
        return like.new_zeros(like.shape)
    rows, lse, out = (torch.cat(items) for items in zip(*partials))
    top = lse.new_full((num_leaves, lse.size(1)), NEG).scatter_reduce(
        0, rows[:, None].expand_as(lse), lse.detach(), "amax")
    shifted = torch.exp(lse - top[rows])
    total = top + lse.new_zeros(top.shape).index_add(0, rows, shifted).log()
    weight = torch.exp(lse - total[rows]).unsqueeze(-1)
    return out.new_zeros((num_leaves,) + out.shape[1:]).index_add(0, rows, weight * out)
