"""The DP kernel's execution plan: the family-attention blocks of a :class:`~hgattn.Hierarchy`.

Families (the children of one node) with two or more children are grouped by size into padded dense blocks;
each block says where its rows and columns come from (:class:`GatherSpec`). The plan depends on the tree
only, so it is built on the first call of the operator and cached on the hierarchy (:func:`family_blocks`);
``Hierarchy.to`` moves it with the tree. Under ``torch.compile`` the build runs eagerly (a graph break on the
first call); :func:`hgattn.attention.build_plans` builds every plan ahead, e.g. in a loader's collate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..hierarchy import NEG, Hierarchy

__all__ = ["FamilyBlock", "GatherSpec", "BlockPlan", "family_blocks"]

#: Upper bound on ``families x rows x columns`` of one dense family-attention block (per head): keeps each
#: block's temporaries small enough (a few MB) for the allocator to recycle them instead of mapping fresh pages.
BLOCK_BUDGET = 1 << 18
#: Families whose sizes differ by at most this factor share one padded block.
BUCKET_GROWTH = 1.25
#: Fewest leaves a run of adjacent all-leaf families must cover to get blocks of its own that read the leaf rows
#: as a view: below it, copying the rows costs less than the extra blocks.
MIN_CONTIGUOUS_LEAVES = 4096


@dataclass(frozen=True)
class GatherSpec:
    """Where the rows of one dense block come from.

    Rows live in the *combined* index space ``[leaves (N) | inner nodes (K)]``; positions of the block that
    are padding stay zero.

    Attributes:
        size: number of rows (padding included).
        leaf_pos, leaf_row: block positions filled from leaf rows (query/key/value order).
        inner_pos, inner_row: block positions filled from inner-node rows.
        node: node id per block position (0 for padding), for gathering position embeddings.
        valid_pos, valid_slot: block positions that hold a real node, and that node's slot in level order.
        leaf_start: when the block is exactly the leaf rows ``leaf_start .. leaf_start + size - 1`` (no
            padding, no inner node), their first row, so gathering is a view; otherwise ``-1``.
    """

    size: int
    leaf_pos: Tensor
    leaf_row: Tensor
    inner_pos: Tensor
    inner_row: Tensor
    node: Tensor
    valid_pos: Tensor
    valid_slot: Tensor
    leaf_start: int

    def to(self, device: torch.device | str) -> "GatherSpec":
        return GatherSpec(self.size, *(getattr(self, f).to(device) for f in _SPEC_TENSORS), self.leaf_start)


_SPEC_TENSORS = ("leaf_pos", "leaf_row", "inner_pos", "inner_row", "node", "valid_pos", "valid_slot")


@dataclass(frozen=True)
class FamilyBlock:
    """A dense block of family attention: ``families`` families padded to ``width`` children.

    ``rows`` covers child ranks ``row_start .. row_start + num_rows - 1`` of each family (large families are
    split by rows); ``cols`` covers all ``width`` ranks.

    Attributes:
        families, width, row_start, num_rows: block geometry.
        rows, cols: where the query rows and key/value columns come from.
        log_count: ``log n(S)`` per column ``[families, width]``, a large negative number for padding.
    """

    families: int
    width: int
    row_start: int
    num_rows: int
    rows: GatherSpec
    cols: GatherSpec
    log_count: Tensor

    def to(self, device: torch.device | str) -> "FamilyBlock":
        cols = self.cols.to(device)
        rows = cols if self.rows is self.cols else self.rows.to(device)
        return FamilyBlock(self.families, self.width, self.row_start, self.num_rows, rows, cols,
                           self.log_count.to(device))


@dataclass(frozen=True)
class BlockPlan:
    """The family blocks of one hierarchy, in the order the kernel runs them."""

    blocks: list[FamilyBlock]

    def to(self, device: torch.device | str) -> "BlockPlan":
        return BlockPlan([block.to(device) for block in self.blocks])


def family_blocks(h: Hierarchy) -> list[FamilyBlock]:
    """The family blocks of ``h``, built on first use and cached on the hierarchy."""
    plan = h._plans.get("blocks")
    if plan is None:
        plan = h._plans["blocks"] = BlockPlan(_family_blocks(h))
    return plan.blocks


def _bucket_widths(sizes: list[int]) -> dict[int, int]:
    """Map each family size to the padded width of its bucket (sizes within BUCKET_GROWTH share one)."""
    widths, bucket = {}, []
    for size in sorted(sizes, reverse=True):
        if bucket and bucket[0] > size * BUCKET_GROWTH:
            bucket = []
        bucket.append(size)
        widths[size] = bucket[0]
    return widths


@torch.compiler.disable
def _family_blocks(h: Hierarchy) -> list[FamilyBlock]:
    """Group the families with two or more children into padded dense blocks (see :class:`FamilyBlock`).

    Within a width, runs of families of exactly ``width`` leaves whose leaf rows follow each other, covering at
    least :data:`MIN_CONTIGUOUS_LEAVES` leaves, get blocks of their own that gather contiguous leaf rows (a view
    instead of a copy); all other families of the width share blocks (fewer blocks for small inputs).
    """
    parent = h.parent
    counts = h.child_ptr[1:] - h.child_ptr[:-1]
    families = (counts >= 2).nonzero().view(-1)
    if families.numel() == 0:
        return []
    sizes = counts[families]
    widths_of = _bucket_widths(torch.unique(sizes).tolist())
    widths = torch.tensor([widths_of[s] for s in sizes.tolist()], device=parent.device)
    leaf_children = torch.bincount(parent[h.leaf_node].clamp(min=0), minlength=h.num_nodes)[families]
    first_leaf = h.node_leaf[h.child_index[h.child_ptr[families]]]
    blocks = []
    for width in sorted(set(widths_of.values())):
        in_bucket = widths == width
        full_leaf = (in_bucket & (leaf_children == sizes) & (sizes == width)).nonzero().view(-1)
        full_leaf = full_leaf[torch.argsort(first_leaf[full_leaf])]
        in_long_run = torch.zeros_like(in_bucket)
        for start, stop in _contiguous_runs(first_leaf[full_leaf], width):
            blocks += _bucket_blocks(h, families[full_leaf[start:stop]], width)
            in_long_run[full_leaf[start:stop]] = True
        blocks += _bucket_blocks(h, families[in_bucket & ~in_long_run], width)
    return blocks


def _contiguous_runs(first_leaf: Tensor, width: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of sorted family first-leaf rows that follow each other by ``width``, covering
    at least :data:`MIN_CONTIGUOUS_LEAVES` leaves."""
    if first_leaf.numel() == 0:
        return []
    breaks = ((first_leaf[1:] - first_leaf[:-1]) != width).nonzero().view(-1) + 1
    bounds = [0] + breaks.tolist() + [first_leaf.numel()]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if (b - a) * width >= MIN_CONTIGUOUS_LEAVES]


def _bucket_blocks(h: Hierarchy, members: Tensor, width: int) -> list[FamilyBlock]:
    """Blocks of at most :data:`BLOCK_BUDGET` entries over ``members``, families padded to ``width``."""
    blocks = []
    rows = min(width, max(1, BLOCK_BUDGET // width))
    per_block = max(1, BLOCK_BUDGET // (rows * width))
    for f0 in range(0, members.numel(), per_block):
        fam = members[f0:f0 + per_block]
        cols = _family_slots(h, fam, width)
        col_spec = _gather_spec(h, cols)
        log_count = torch.where(cols >= 0, h.leaf_count[cols.clamp(min=0)].double().log(),
                                torch.tensor(NEG, dtype=torch.double, device=cols.device))
        for r0 in range(0, width, rows):
            r1 = min(width, r0 + rows)
            row_spec = col_spec if (r0, r1) == (0, width) else _gather_spec(h, cols[:, r0:r1])
            blocks.append(FamilyBlock(fam.numel(), width, r0, r1 - r0, row_spec, col_spec, log_count))
    return blocks


def _family_slots(h: Hierarchy, fam: Tensor, width: int) -> Tensor:
    """``[F, width]`` node ids of each family's children by rank, ``-1`` for padding."""
    ranks = torch.arange(width, device=fam.device)
    start, stop = h.child_ptr[fam], h.child_ptr[fam + 1]
    pos = start[:, None] + ranks[None, :]
    valid = pos < stop[:, None]
    return torch.where(valid, h.child_index[pos.clamp(max=h.child_index.numel() - 1)], -1)


def _gather_spec(h: Hierarchy, slots: Tensor) -> GatherSpec:
    flat = slots.reshape(-1)
    valid = flat >= 0
    node = flat.clamp(min=0)
    is_leaf = valid & h.is_leaf[node]
    is_inner = valid & ~h.is_leaf[node]
    leaf_pos, inner_pos = is_leaf.nonzero().view(-1), is_inner.nonzero().view(-1)
    leaf_row, inner_row = h.node_leaf[flat[leaf_pos]], h.inner_index[flat[inner_pos]]
    valid_pos = valid.nonzero().view(-1)
    contiguous = leaf_pos.numel() == flat.numel() and bool(
        (leaf_row == leaf_row[0] + torch.arange(leaf_row.numel(), device=leaf_row.device)).all())
    return GatherSpec(flat.numel(), leaf_pos, leaf_row, inner_pos, inner_row, node, valid_pos,
                      h.node_slot[flat[valid_pos]], int(leaf_row[0]) if contiguous else -1)
