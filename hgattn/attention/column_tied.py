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
``P`` over the ``|chd(P)|`` child summaries; families of similar shape are padded into one batch. A first
pass takes each leaf's log partition ``log Z_i`` over its ancestors' families and its self term (logsumexp of
the families' logits, which are kept); a second pass adds ``exp(logit - log Z_i)`` times the child value
summaries into the output. Autograd differentiates both passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from ..hierarchy import NEG, Hierarchy
from ..walks import node_means
from .inputs import prepare_inputs

__all__ = ["column_tied_hsa", "check_depth_first", "attended_summaries", "TIES"]

TIES = ("blocks", "columns")
"""``'blocks'``: HSA of section 4 (rows and columns tied per sibling block); ``'columns'``: section 4b."""

#: Elements of a family batch's logits or outputs per step (bounds the temporaries of one step).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class FamilyGroup:
    """Families padded to a common shape: ``F`` families, ``R`` leaves below each, ``W`` children each.

    Attributes:
        rows: ``[F, R]`` depth-first positions of the leaves below each family's parent (``N`` in padding).
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
        order: ``[N]`` leaf row at each depth-first position (``None`` when leaf rows are depth-first
            already).
        groups: the families, grouped by padded shape.
    """

    position: Tensor
    order: Tensor | None
    groups: list[FamilyGroup]


_LAYOUTS: WeakKeyDictionary = WeakKeyDictionary()


def column_tied_hsa(query: Tensor, key: Tensor, value: Tensor, hierarchy: Hierarchy, *,
                    pos: Tensor | None = None, include_self: bool = False, scale: float | None = None,
                    tie: str | None = "columns", causal: bool = False,
                    return_attention: bool = False) -> Tensor:
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
    q, k, v, pos, one_head, scale = prepare_inputs(query, key, value, hierarchy, pos, scale)
    if causal:
        check_depth_first(hierarchy)
    out_dtype = value.dtype

    h, layout = hierarchy, column_layout(hierarchy)
    heads_first = (q if layout.order is None else q[layout.order]).transpose(0, 1).contiguous()
    key_table = node_means(k, h).transpose(0, 1).contiguous()
    value_table = node_means(v, h).transpose(0, 1).contiguous()
    log_count = h.leaf_count.to(q.dtype).log()
    chunks = _chunks(layout.groups, q.size(1), max(q.size(-1), v.size(-1)))
    logits = [_family_logits(chunk, heads_first, key_table, log_count, pos, scale, causal)
              for chunk in chunks]
    self_logit = None
    if include_self:
        self_logit = (q * k).sum(-1) * scale
        if pos is not None:
            self_logit = self_logit + pos[h.leaf_node].square().sum(-1)
        self_logit = self_logit.t()
    total = _log_partition(chunks, logits, self_logit, layout.position, h.num_leaves)
    out = v.new_zeros(v.size(1), h.num_leaves + 1, v.size(-1))
    for chunk, (logit, allowed) in zip(chunks, logits):
        rows = chunk.rows.reshape(-1)
        weight = torch.exp(logit - total[:, rows].view(logit.shape[:3] + (1,))) * allowed
        out.index_add_(1, rows, torch.matmul(weight, value_table[:, chunk.members]).flatten(1, 2))
    if self_logit is not None:
        keep = torch.exp(self_logit - total[:, layout.position]).unsqueeze(-1)
        out.index_add_(1, layout.position, keep * v.transpose(0, 1))
    out = out[:, :h.num_leaves].transpose(0, 1)
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
        raise ValueError("causal HSA needs leaves numbered depth-first: the leaves below node "
                         f"{int(split[0])} are not consecutive leaf rows (renumber the tree in preorder)")
    children = h.child_index
    same_family = h.parent[children[1:]] == h.parent[children[:-1]]
    backwards = same_family & (first[children[1:]] < last[children[:-1]])
    if bool(backwards.any()):
        at = int(backwards.nonzero()[0])
        raise ValueError(f"causal HSA needs leaves numbered depth-first: node {int(children[at + 1])} holds "
                         f"earlier leaves than its sibling {int(children[at])}, which has a smaller id")


def attended_summaries(hierarchy: Hierarchy, *, causal: bool = False, include_self: bool = True) -> int:
    """How many summaries all leaves attend to together (column-tied HSA's work is ``4 H d`` times this)."""
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
    rows = torch.where(row_valid, start[parents, None] + offset, h.num_leaves)
    member_start = torch.where(member_valid, start[members], h.num_leaves)
    rank = (member_start[:, None, :] <= rows[:, :, None]).sum(-1) - 1
    return FamilyGroup(rows, row_valid, rank.clamp(min=0), members, member_valid)


def _chunks(groups: list[FamilyGroup], heads: int, dim: int) -> list[FamilyGroup]:
    """Split groups into pieces whose logits and outputs hold at most :data:`CHUNK_ELEMENTS` elements."""
    pieces = []
    for group in groups:
        fam, rows = group.rows.shape
        per_row = heads * max(group.members.size(1), dim)
        step_f = max(1, CHUNK_ELEMENTS // (rows * per_row))
        step_r = rows if step_f > 1 else max(1, CHUNK_ELEMENTS // per_row)
        for f in range(0, fam, step_f):
            for r in range(0, rows, step_r):
                pieces.append(FamilyGroup(group.rows[f:f + step_f, r:r + step_r],
                                          group.row_valid[f:f + step_f, r:r + step_r],
                                          group.rank[f:f + step_f, r:r + step_r],
                                          group.members[f:f + step_f], group.member_valid[f:f + step_f]))
    return pieces


def _family_logits(group: FamilyGroup, queries: Tensor, key_table: Tensor, log_count: Tensor,
                   pos: Tensor | None, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """Logits ``[H, F, R, W]`` of each leaf query below a family over its children's summaries (``log n(S)``
    prior, position term; :data:`NEG` where not allowed) and the allowed mask ``[1, F, R, W]``.

    ``queries`` ``[H, N, d]`` in depth-first order; ``key_table`` ``[H, T, d]``.
    """
    members = group.members
    fam, rows = group.rows.shape
    q = queries[:, group.rows.reshape(-1).clamp(max=queries.size(1) - 1)].view(queries.size(0), fam, rows, -1)
    logit = torch.matmul(q, key_table[:, members].transpose(-1, -2)).mul_(scale)
    logit = logit + log_count[members][None, :, None, :]
    if pos is not None:
        member_pos = pos[members].transpose(1, 2)                                # [F, Hp, W, C]
        pair = torch.matmul(member_pos, member_pos.transpose(-1, -2))            # [F, Hp, W, W]
        index = group.rank[:, None, :, None].expand(-1, pair.size(1), -1, pair.size(-1))
        logit = logit + torch.gather(pair, 2, index).transpose(0, 1)
    slot = torch.arange(members.size(1), device=members.device)
    allowed = slot < group.rank[..., None] if causal else slot != group.rank[..., None]
    allowed = (allowed & group.member_valid[:, None, :] & group.row_valid[..., None]).unsqueeze(0)
    return logit.masked_fill(~allowed, NEG), allowed


def _log_partition(chunks: list[FamilyGroup], logits: list[tuple[Tensor, Tensor]], self_logit: Tensor | None,
                   position: Tensor, num_leaves: int) -> Tensor:
    """``[H, N + 1]`` log of each leaf's total mass over all its families and its self term (depth-first
    order; the last row collects padding)."""
    parts = [(chunk.rows.reshape(-1), torch.logsumexp(logit, dim=-1).flatten(1))
             for chunk, (logit, _) in zip(chunks, logits)]
    if self_logit is not None:
        parts.append((position, self_logit))
    if not parts:
        return torch.zeros(1, num_leaves + 1, device=position.device)
    heads = parts[0][1].size(0)
    top = parts[0][1].new_full((heads, num_leaves + 1), NEG)
    for rows, lse in parts:
        top.scatter_reduce_(1, rows.expand(heads, -1), lse.detach(), "amax")
    mass = top.new_zeros(top.shape)
    for rows, lse in parts:
        mass.index_add_(1, rows, torch.exp(lse - top[:, rows]))
    return top + mass.log()
