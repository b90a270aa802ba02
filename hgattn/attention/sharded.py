r"""Exact HSA sharded across processes with ``torch.distributed``: whole subtrees per rank, summaries exchanged.

The forest is cut at a set of *cut nodes* (every leaf lies below exactly one): each rank owns whole subtrees
rooted at cut nodes, and the nodes above the cut (the *top tree*, whose leaves are the cut nodes) are known to
every rank. For a leaf ``i`` below cut node ``C = B_c`` on its path ``B_1 .. B_m`` (spec section 4):

.. math::
    o_i = y(C) + g(C)\, \ell_i, \qquad
    y(C) = \sum_{k \le c} \Big[\prod_{t<k} \mu(B_t)\Big] (1 - \mu(B_k))\, \theta(B_k), \qquad
    g(C) = \prod_{t \le c} \mu(B_t) = e^{u(C) + a(C) - z(C)},

where :math:`\ell_i` is plain HSA of the standalone subtree rooted at ``C``: ``mu``, ``e`` and ``theta`` of
every node strictly inside that subtree depend on it alone. ``y`` and ``g`` are HSA on the top tree in which
every cut node ``C`` is a leaf of weight ``n(C)`` carrying ``rho_q, rho_k, rho_v(C)`` (means over its leaves)
and its self mass ``a(C) = sum_children n(c) / n(C) z(c)``. So a rank sends, per cut node it owns, three means
and one scalar per head: one ``all_gather`` in the forward pass and one reduce-scatter in the backward pass,
``O(cut nodes x H x d)`` bytes whatever the number of leaves.

Work per rank: HSA on its subtrees; the self mass of their roots, which needs the sibling logits of the
subtrees once more (a forward and a backward family pass without values: 0.20 s against HSA's 0.35 s for
forward + backward at 64k leaves, 4 heads x 32, one CPU thread); and the top tree, replicated on every rank
(``O(P_top H d)``, ``P_top`` its sibling pairs). Memory: about 1.8x one plain HSA call's at one rank (1M
leaves), falling as ``1 / P`` with ``P`` ranks (``benchmarks/bench_sharded.py``).
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import math
import struct
from dataclasses import dataclass, fields
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import walks
from ..hierarchy import NEG, Hierarchy
from . import dp
from .inputs import self_logits
from .numerics import exp
from .operator import _grouped_logsumexp, hsa
from .plan import FamilyBlock, family_blocks

__all__ = ["Shard", "TopTree", "CommStats", "shard_hierarchy", "sharded_hsa", "count_communication",
           "all_gather_rows"]


# ---------------------------------------------------------------------- shards
@dataclass
class TopTree:
    """The nodes above the cut, the same on every rank: a forest whose leaves are the cut nodes, in cut order.

    Attributes:
        hierarchy: the top tree; top node ``t`` is global node ``nodes[t]``; its leaf row ``c`` is cut node
            ``c``.
        nodes: ``[T_top]`` global node ids (the nodes above the cut by increasing id, then the cut nodes).
        count: ``[T_top]`` float64 leaf counts ``n(A)`` in the full hierarchy.
        child_weight: per depth of the top tree, ``[n_level]`` float64 ``n(C) / n(parent(C))`` in level order.
    """

    hierarchy: Hierarchy
    nodes: Tensor
    count: Tensor
    child_weight: list[Tensor]

    def to(self, device: torch.device | str) -> "TopTree":
        return TopTree(self.hierarchy.to(device), self.nodes.to(device), self.count.to(device),
                       [w.to(device) for w in self.child_weight])


@dataclass
class Shard:
    """What rank ``rank`` of ``world_size`` needs for its rows of HSA over the full hierarchy
    (:func:`shard_hierarchy` builds them, :func:`sharded_hsa` uses them).

    Attributes:
        rank, world_size: the process this shard is for, and the number of shards.
        tree_hash: digest of the full hierarchy's parent array and of the cut (equal across one call's shards).
        num_leaves, num_nodes: ``N`` and ``T`` of the full hierarchy.
        leaf_rows: ``[N_r]`` the global leaf rows of this rank, ascending: its query/key/value rows are
            ``x[leaf_rows]`` and :func:`sharded_hsa` returns the output rows in that order.
        local: the rank's subtrees as a forest; local node ``j`` is global node ``local_nodes[j]``; its roots
            are the rank's cut nodes.
        local_nodes: ``[T_r]`` global node ids, ascending.
        top: the top tree (:class:`TopTree`).
        cut_ptr: ``world_size + 1`` offsets: rank ``r`` owns cut nodes ``cut_ptr[r] .. cut_ptr[r + 1] - 1``.
        cut_root: ``[c_r]`` tree index in ``local`` of each cut node of this rank, in cut order.
        leaf_cut: ``[N_r]`` index (among this rank's cut nodes, cut order) of the cut node above each leaf.
        pos_nodes: ``[T_top + T_r - c_r]`` global node ids of the rows of ``pos`` this rank passes: the top
            tree's nodes (``top.nodes``, the same on every rank), then its own nodes below the cut nodes.
        local_pos_index: ``[T_r]`` row of ``pos`` (as passed) of every local node.
    """

    rank: int
    world_size: int
    tree_hash: int
    num_leaves: int
    num_nodes: int
    leaf_rows: Tensor
    local: Hierarchy
    local_nodes: Tensor
    top: TopTree
    cut_ptr: tuple[int, ...]
    cut_root: Tensor
    leaf_cut: Tensor
    pos_nodes: Tensor
    local_pos_index: Tensor

    @property
    def num_local_leaves(self) -> int:
        return self.leaf_rows.numel()

    @property
    def leaf_range(self) -> tuple[int, int] | None:
        """``(start, stop)`` when the rank's leaf rows are the contiguous range ``start .. stop - 1``, else
        None (its rows are then ``x[leaf_rows]``)."""
        rows = self.leaf_rows
        start, stop = int(rows[0]), int(rows[-1]) + 1
        return (start, stop) if stop - start == rows.numel() else None

    def to(self, device: torch.device | str) -> "Shard":
        """A copy on ``device`` (the process's accelerator, e.g. ``cuda:<LOCAL_RANK>`` with NCCL)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device) if isinstance(value, (Tensor, Hierarchy, TopTree)) else value
        return Shard(**moved)


def shard_hierarchy(hierarchy: Hierarchy, world_size: int, *, imbalance: float = 0.05) -> list[Shard]:
    """Split ``hierarchy`` into ``world_size`` shards of whole subtrees, balanced by leaves.

    The cut starts at the roots and repeatedly replaces the cut node with the most leaves by its children,
    until there are at least ``world_size`` cut nodes and none holds more than ``imbalance * N / world_size``
    leaves. The cut nodes, ordered depth-first (children by their first leaf row, so that on a tree whose
    subtrees cover contiguous leaf rows every rank gets a contiguous range), are split into ``world_size``
    consecutive groups of about ``N / world_size`` leaves each: every rank's count is within about
    ``imbalance * N / world_size`` of that. Smaller ``imbalance`` cuts deeper: better balance, more nodes in
    the top tree and in the exchanged summaries. On a graph hierarchy
    (:class:`~hgattn.transforms.GraphHierarchy`) the cut follows the graph partition: each rank gets whole
    clusters, siblings next to each other.

    Build the shards once (every rank from the same hierarchy, or one process that saves ``shards[r]`` for
    rank ``r`` with ``torch.save``); they live on the CPU, move one with :meth:`Shard.to`.

    Raises:
        ValueError: ``world_size`` below 1, more ranks than leaves (each rank needs a subtree), or
            ``imbalance`` not positive.
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError("shard_hierarchy: hierarchy must be a hgattn.Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"shard_hierarchy: world_size must be an int >= 1, got {world_size!r}")
    if not (isinstance(imbalance, (int, float)) and math.isfinite(imbalance) and imbalance > 0):
        raise ValueError(f"shard_hierarchy: imbalance must be a positive number, got {imbalance!r}")
    h = hierarchy.to("cpu")
    if h.num_leaves < world_size:
        raise ValueError(f"shard_hierarchy: the hierarchy has {h.num_leaves} leaves, fewer than world_size="
                         f"{world_size}: it cannot be cut into {world_size} shards of whole subtrees (each "
                         f"needs a leaf); use at most {h.num_leaves} ranks")
    above = _nodes_above_cut(h, world_size, imbalance)
    cuts = _depth_first_cuts(h, above)
    cut_ptr = _balanced_ranges(h.leaf_count[cuts], world_size)
    cut_of = _cut_of_nodes(h, cuts)
    top, top_id = _top_tree(h, cuts, above)
    digest = _tree_hash(h, cuts, cut_ptr)
    return [_rank_shard(h, rank, cut_ptr, cut_of, top, top_id, digest) for rank in range(world_size)]


def _nodes_above_cut(h: Hierarchy, world_size: int, imbalance: float) -> list[int]:
    """The nodes above the cut: starting from the roots, split the cut node with the most leaves until the
    stopping rule of :func:`shard_hierarchy` holds (at the latest when every leaf is a cut node, as
    ``N >= world_size``)."""
    limit = max(1.0, imbalance * h.num_leaves / world_size)
    roots = (h.parent < 0).nonzero().view(-1)
    heap = list(zip((-h.leaf_count[roots]).tolist(), roots.tolist()))
    heapq.heapify(heap)
    above: list[int] = []
    while len(heap) < world_size or -heap[0][0] > limit:
        _, node = heapq.heappop(heap)
        above.append(node)
        children = h.child_index[int(h.child_ptr[node]):int(h.child_ptr[node + 1])]
        for item in zip((-h.leaf_count[children]).tolist(), children.tolist()):
            heapq.heappush(heap, item)
    return above


def _depth_first_cuts(h: Hierarchy, above: list[int]) -> Tensor:
    """The cut nodes (the children of ``above`` and the roots that are not in it) in depth-first order of the
    top tree, roots and children by their first leaf row."""
    first = torch.where(h.is_leaf, h.node_leaf, h.num_leaves)
    for level in range(h.num_levels - 1, 0, -1):
        nodes = h.level_nodes(level)
        first = first.scatter_reduce(0, h.parent[nodes], first[nodes], "amin")

    def by_first_leaf(nodes: Tensor) -> list[int]:
        return nodes[torch.argsort(first[nodes], descending=True, stable=True)].tolist()

    inner, order = set(above), []
    stack = by_first_leaf((h.parent < 0).nonzero().view(-1))
    while stack:
        node = stack.pop()
        if node in inner:
            stack.extend(by_first_leaf(h.child_index[int(h.child_ptr[node]):int(h.child_ptr[node + 1])]))
        else:
            order.append(node)
    return torch.tensor(order, dtype=torch.long)


def _balanced_ranges(counts: Tensor, world_size: int) -> tuple[int, ...]:
    """Offsets splitting the cut nodes into ``world_size`` non-empty consecutive groups, each boundary at the
    prefix sum of leaves nearest ``r * N / world_size``."""
    prefix = [0] + counts.cumsum(0).tolist()
    total, num_cuts = prefix[-1], counts.numel()
    bounds = [0]
    for r in range(1, world_size):
        target = r * total / world_size
        j = bisect.bisect_left(prefix, target)
        if target - prefix[j - 1] < prefix[j] - target:
            j -= 1
        bounds.append(min(max(j, bounds[-1] + 1), num_cuts - (world_size - r)))
    return tuple(bounds + [num_cuts])


def _cut_of_nodes(h: Hierarchy, cuts: Tensor) -> Tensor:
    """``[T]`` index of the cut node at or above every node, ``-1`` for the nodes above the cut."""
    cut_of = torch.full((h.num_nodes,), -1, dtype=torch.long)
    cut_of[cuts] = torch.arange(cuts.numel())
    for level in range(1, h.num_levels):
        nodes = h.level_nodes(level)
        own = cut_of[nodes]
        cut_of[nodes] = torch.where(own >= 0, own, cut_of[h.parent[nodes]])
    return cut_of


def _top_tree(h: Hierarchy, cuts: Tensor, above: list[int]) -> tuple[TopTree, Tensor]:
    """The top tree and the ``[T]`` map from global node id to top node id (``-1`` below the cut)."""
    nodes = torch.cat([torch.tensor(sorted(above), dtype=torch.long), cuts])
    top_id = torch.full((h.num_nodes,), -1, dtype=torch.long)
    top_id[nodes] = torch.arange(nodes.numel())
    up = h.parent[nodes]
    tree = Hierarchy.from_parent(torch.where(up >= 0, top_id[up.clamp(min=0)], -1))
    count = h.leaf_count[nodes].double()
    weights = [torch.zeros(0, dtype=torch.double)]
    for depth in range(1, tree.num_levels):
        level = tree.level_nodes(depth)
        weights.append(count[level] / count[tree.parent[level]])
    return TopTree(tree, nodes, count, weights), top_id


def _tree_hash(h: Hierarchy, cuts: Tensor, cut_ptr: tuple[int, ...]) -> int:
    """A 63-bit digest of the parent array, the cut nodes and their split into ranks."""
    digest = hashlib.sha256(h.parent.numpy().tobytes())
    digest.update(cuts.numpy().tobytes())
    digest.update(repr(cut_ptr).encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def _rank_shard(h: Hierarchy, rank: int, cut_ptr: tuple[int, ...], cut_of: Tensor, top: TopTree,
                top_id: Tensor, digest: int) -> Shard:
    low, high = cut_ptr[rank], cut_ptr[rank + 1]
    local_nodes = ((cut_of >= low) & (cut_of < high)).nonzero().view(-1)
    local_id = torch.full((h.num_nodes,), -1, dtype=torch.long)
    local_id[local_nodes] = torch.arange(local_nodes.numel())
    up = h.parent[local_nodes]
    is_cut = top_id[local_nodes] >= 0
    local = Hierarchy.from_parent(torch.where(is_cut, -1, local_id[up.clamp(min=0)]))
    root_cut = cut_of[local_nodes[is_cut]] - low          # per local tree (roots by increasing id)
    below = ~is_cut
    pos_index = torch.empty(local_nodes.numel(), dtype=torch.long)
    pos_index[is_cut] = top_id[local_nodes[is_cut]]
    pos_index[below] = top.nodes.numel() + torch.arange(int(below.sum()))
    return Shard(rank=rank, world_size=len(cut_ptr) - 1, tree_hash=digest, num_leaves=h.num_leaves,
                 num_nodes=h.num_nodes, leaf_rows=h.node_leaf[local_nodes[local.leaf_node]], local=local,
                 local_nodes=local_nodes, top=top, cut_ptr=cut_ptr, cut_root=torch.argsort(root_cut),
                 leaf_cut=root_cut[local.batch], pos_nodes=torch.cat([top.nodes, local_nodes[below]]),
                 local_pos_index=pos_index)


# ---------------------------------------------------------------------- communication
@dataclass
class CommStats:
    """Bytes that reached this rank from the others in :func:`sharded_hsa`'s collectives, as the
    bandwidth-optimal algorithms move them: ``(P - 1)`` chunks per ``all_gather`` (the summaries in the forward
    pass and the agreement check) and per reduce-scatter (their gradients in the backward pass)."""

    forward_bytes: int = 0
    backward_bytes: int = 0
    collectives: int = 0

    @property
    def total_bytes(self) -> int:
        return self.forward_bytes + self.backward_bytes


_COUNTERS: list[CommStats] = []


@contextlib.contextmanager
def count_communication() -> Iterator[CommStats]:
    """Count the bytes of the collectives :func:`sharded_hsa` runs (forward and backward) inside a ``with
    count_communication() as stats:`` block; afterwards ``stats.forward_bytes`` and ``stats.backward_bytes``
    hold them."""
    stats = CommStats()
    _COUNTERS.append(stats)
    try:
        yield stats
    finally:
        _COUNTERS.remove(stats)


def _count(direction: str, nbytes: int) -> None:
    for stats in _COUNTERS:
        setattr(stats, f"{direction}_bytes", getattr(stats, f"{direction}_bytes") + nbytes)
        stats.collectives += 1


def _all_gather(chunk: Tensor, group, world_size: int) -> Tensor:
    """``[world_size * m, ...]``: the ``[m, ...]`` chunks of every rank, in rank order (counted)."""
    chunk = chunk.contiguous()
    parts = [torch.empty_like(chunk) for _ in range(world_size)]
    dist.all_gather(parts, chunk, group=group)
    _count("forward", (world_size - 1) * chunk.numel() * chunk.element_size())
    return torch.cat(parts)


_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherSummaries(torch.autograd.Function):
    """All ranks' ``[m, F]`` summaries stacked ``[P * m, F]``; the backward pass reduce-scatters (sums) the
    gradient, so each rank gets the gradient of every rank's loss with respect to its own rows."""

    @staticmethod
    def forward(ctx, chunk: Tensor, group, world_size: int) -> Tensor:
        ctx.group, ctx.world_size = group, world_size
        return _all_gather(chunk, group, world_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        own = grad.new_empty((grad.size(0) // ctx.world_size,) + grad.shape[1:])
        _reduce_scatter(own, grad, group=ctx.group)
        _count("backward", (ctx.world_size - 1) * own.numel() * own.element_size())
        return own, None, None


def all_gather_rows(chunk: Tensor, group, world_size: int) -> Tensor:
    """``[world_size * m, F]``: every rank's ``[m, F]`` chunk (the same ``m`` on all ranks), in rank order;
    differentiable (the backward pass sums the gradients of all ranks' losses into each rank's own rows by a
    reduce-scatter). Both collectives are counted by :func:`count_communication`."""
    return _GatherSummaries.apply(chunk, group, world_size)


_DTYPE_CODES = {torch.float64: 64, torch.float32: 32}


def _agree(shard: Shard, signature: dict[str, int], problem: str | None, group, device: torch.device) -> None:
    """All-gather every rank's shard identity, input signature and whether its inputs are valid; raise the same
    clear error on every rank when they do not agree (so no rank waits in a later collective)."""
    names = list(signature)
    row = torch.tensor([int(problem is not None), shard.rank, shard.world_size, shard.tree_hash,
                        *signature.values()], dtype=torch.long, device=device)
    size = dist.get_world_size(group)
    rows = _all_gather(row[None], group, size).cpu().tolist()
    me = dist.get_rank(group)
    if problem is not None:
        raise ValueError(f"sharded_hsa on rank {me}: {problem}")
    bad = [r for r in range(size) if rows[r][0]]
    if bad:
        raise ValueError(f"sharded_hsa: rank(s) {bad} gave invalid inputs (their own error says how); every "
                         "rank stops here")
    if any(r[2] != size for r in rows):
        raise ValueError(f"sharded_hsa: the shards were built for world_size {[r[2] for r in rows]} but the "
                         f"process group has {size} ranks; build them with shard_hierarchy(h, {size})")
    wrong = [r for r in range(size) if rows[r][1] != r]
    if wrong:
        raise ValueError("sharded_hsa: " + ", ".join(f"process rank {r} holds the shard of rank {rows[r][1]}"
                                                     for r in wrong) + "; pass shards[dist.get_rank()]")
    differ = [r for r in range(size) if rows[r][3] != rows[0][3]]
    if differ:
        raise ValueError(f"sharded_hsa: rank(s) {differ} hold shards of a different hierarchy or cut than rank "
                         "0; build every rank's shard with shard_hierarchy from the same hierarchy, world_size "
                         "and imbalance")
    for column, name in enumerate(names, start=4):
        values = [r[column] for r in rows]
        if len(set(values)) > 1:
            shown = ", ".join(f"rank {r}: {_show(name, v)}" for r, v in enumerate(values))
            raise ValueError(f"sharded_hsa: the ranks disagree on {name} ({shown}); every rank must call it "
                             "with the same heads, sizes, dtype, pos layout, include_self, scale and need for "
                             "gradients")


def _show(name: str, value: int) -> str:
    if name == "scale":
        return repr(struct.unpack("<d", struct.pack("<q", value))[0])
    if name == "pos channels" and value < 0:
        return "no pos"
    return str(value)


# ---------------------------------------------------------------------- the operator
def sharded_hsa(query: Tensor, key: Tensor, value: Tensor, shard: Shard, *, pos: Tensor | None = None,
                include_self: bool = False, scale: float | None = None, group=None,
                check: bool = True) -> Tensor:
    r"""This rank's rows of :func:`hgattn.hsa` over the full hierarchy, exactly, from this rank's rows only.

    Every rank of the process group calls it at the same time with its own shard (``shards[rank]`` of
    :func:`shard_hierarchy`): per call one ``all_gather`` of ``c_r x H x (2 d + d_v + 1)`` summaries (``c_r``:
    the rank's cut nodes) and, in the backward pass, one reduce-scatter of their gradients, both independent of
    the number of leaves. The backward pass is a collective too: run it on every rank. ``group=None`` is the
    default group; a shard with ``world_size == 1`` needs no process group.

    Args:
        query, key, value: ``[N_r, H, d]`` (or ``[N_r, d]``): the rows ``shard.leaf_rows`` of the full inputs.
        shard: this rank's :class:`Shard` (on the inputs' device).
        pos: optional ``[R, C]`` or ``[R, H, C]`` position embeddings of the nodes ``shard.pos_nodes``
            (``R = len(shard.pos_nodes)``): the top tree's nodes, the same rows on every rank, then this rank's
            nodes below its cut nodes. Gradients: the rows below the cut get their exact gradient; the top
            tree's rows get this rank's share, and the sum over ranks is the exact gradient (what a sum
            all-reduce of replicated parameters' gradients computes).
        include_self, scale: as in :func:`hgattn.hsa`.
        group: the ``torch.distributed`` process group (NCCL with CUDA tensors, gloo with CPU ones).
        check: first all-gather a short signature of every rank's shard and inputs, so that all ranks raise one
            clear error when they disagree (different trees or cuts, swapped shards, different heads, sizes,
            dtype, pos, include_self, scale, or need for gradients) or when one rank's inputs are invalid,
            instead of some ranks waiting forever; ``False`` saves that collective's latency.

    Returns:
        ``[N_r, H, d_v]`` (the shape of ``value``): ``hsa(q, k, v, h, ...)[shard.leaf_rows]``. Gradients reach
        ``query``, ``key``, ``value`` and ``pos`` for the loss summed over all ranks.
    """
    if not isinstance(shard, Shard):
        raise TypeError(f"sharded_hsa: shard must be a Shard from shard_hierarchy, got {type(shard).__name__}")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"sharded_hsa: {name} must be a Tensor, got {type(x).__name__}")
    problem = _input_problem(query, key, value, shard, pos)
    distributed = _uses_process_group(shard)
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    if distributed and check:
        signature = _signature(query, key, value, pos, include_self, scale, dtype)
        _agree(shard, signature, problem, group, query.device)
    elif problem is not None:
        raise ValueError(f"sharded_hsa: {problem}")
    one_head = query.dim() == 2
    q, k, v = (x.unsqueeze(1) if one_head else x for x in (query, key, value))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    pos = None if pos is None else pos.to(dtype)
    pos3 = None if pos is None else (pos.unsqueeze(1) if pos.dim() == 2 else pos)
    local_pos = None if pos is None else pos[shard.local_pos_index]

    local = hsa(q, k, v, shard.local, pos=local_pos, include_self=include_self, scale=scale)
    summary = _cut_summaries(q, k, v, None if pos is None else pos3[shard.local_pos_index], include_self,
                             shard, scale)
    summaries = _exchange(summary, shard, group) if distributed else summary
    heads, dim, dim_v = q.size(1), q.size(-1), v.size(-1)
    rho_q, rho_k, rho_v, a_cut = summaries.split([heads * dim, heads * dim, heads * dim_v, heads], dim=1)
    y, gate = _top_outputs(rho_q.view(-1, heads, dim), rho_k.view(-1, heads, dim), rho_v.view(-1, heads, dim_v),
                           a_cut, None if pos is None else pos3[:shard.top.nodes.numel()], shard.top, scale)
    low, high = shard.cut_ptr[shard.rank], shard.cut_ptr[shard.rank + 1]
    out = _Combine.apply(local, y[low:high], gate[low:high], shard.leaf_cut).to(value.dtype)
    return out.squeeze(1) if one_head else out


def _uses_process_group(shard: Shard) -> bool:
    if shard.world_size == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"sharded_hsa: shard {shard.rank} of {shard.world_size} needs torch.distributed "
                         f"initialised with {shard.world_size} ranks (torchrun, or dist.init_process_group); "
                         "none is")
    return True


def _input_problem(query: Tensor, key: Tensor, value: Tensor, shard: Shard, pos: Tensor | None) -> str | None:
    """What is wrong with this rank's inputs, or None (checked before any collective)."""
    dims = 2 if query.dim() == 2 else 3
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.dim() != dims:
            return f"{name} must be [N_r, H, d] or [N_r, d] like query, got {_shape(x)}"
        if x.size(0) != shard.num_local_leaves:
            return (f"{name} has {x.size(0)} rows but shard {shard.rank} holds {shard.num_local_leaves} leaves "
                    "(pass the rows shard.leaf_rows of the full tensor)")
        if not x.is_floating_point():
            return f"{name} must be a floating-point tensor, got {x.dtype}"
        if x.device != shard.local.device:
            return f"{name} is on {x.device} but the shard is on {shard.local.device}; use shard.to(device)"
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            return f"{name} contains NaN or infinite values"
    if query.shape != key.shape:
        return f"query {list(query.shape)} and key {list(key.shape)} must have the same shape"
    if value.shape[:-1] != query.shape[:-1]:
        return f"value {list(value.shape)} must match query {list(query.shape)} but in the last dim"
    if pos is None:
        return None
    heads = 1 if dims == 2 else query.size(1)
    rows = shard.pos_nodes.numel()
    if not isinstance(pos, Tensor) or pos.dim() not in (2, 3) or pos.size(0) != rows or (
            pos.dim() == 3 and pos.size(1) != heads):
        return (f"pos must be [R, C] or [R, H, C] with R={rows} rows (the nodes shard.pos_nodes) and "
                f"H={heads}, got {_shape(pos)}")
    if not pos.is_floating_point() or pos.device != shard.local.device:
        return f"pos must be a floating-point tensor on {shard.local.device}, got {pos.dtype} on {pos.device}"
    if not bool(torch.isfinite(pos).all()):
        return "pos contains NaN or infinite values"
    return None


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _signature(query: Tensor, key: Tensor, value: Tensor, pos: Tensor | None, include_self: bool, scale: float,
               dtype: torch.dtype) -> dict[str, int]:
    """What every rank must agree on, as integers (placeholders for invalid inputs: their rank fails)."""
    valid = query.dim() in (2, 3) and value.dim() >= 1
    heads = (1 if query.dim() == 2 else query.size(1)) if valid else -1
    pos_ok = isinstance(pos, Tensor) and pos.dim() in (2, 3)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, Tensor) and x.requires_grad for x in (query, key, value, pos))
    return {"heads": heads, "query/key size": query.size(-1) if valid else -1,
            "value size": value.size(-1) if valid else -1, "dtype": _DTYPE_CODES[dtype],
            "pos channels": pos.size(-1) if pos_ok else -1, "pos per head": int(pos_ok and pos.dim() == 3),
            "include_self": int(bool(include_self)), "scale": struct.unpack("<q", struct.pack("<d", scale))[0],
            "need for gradients": int(needs_grad)}


def _exchange(summary: Tensor, shard: Shard, group) -> Tensor:
    """``[C, F]`` summaries of all cut nodes (cut order) from this rank's ``[c_r, F]``: chunks padded to the
    largest rank's count, gathered, padding dropped."""
    counts = [high - low for low, high in zip(shard.cut_ptr[:-1], shard.cut_ptr[1:])]
    width = max(counts)
    padded = torch.cat([summary, summary.new_zeros(width - summary.size(0), summary.size(1))])
    gathered = all_gather_rows(padded, group, shard.world_size)
    keep = torch.cat([torch.arange(r * width, r * width + c, device=summary.device)
                      for r, c in enumerate(counts)])
    return gathered[keep]


def _cut_summaries(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, include_self: bool, shard: Shard,
                   scale: float) -> Tensor:
    """``[c_r, H (2 d + d_v + 1)]`` per cut node of this rank (cut order): ``rho_q, rho_k, rho_v`` and the self
    mass ``a(C) = sum_children n(c) / n(C) z(c)`` (steps 3-4 of the DP on the sibling masses of the subtree)."""
    h = shard.local
    *means, e, self_logit = _LocalSummaries.apply(q, k, v, pos, h, scale, include_self)
    mass = dp.compute_gates(e, self_logit if include_self else None, h).a[0]
    return torch.cat([x.flatten(1) for x in means] + [mass], dim=1)[shard.cut_root]


class _LocalSummaries(torch.autograd.Function):
    """From a forest's leaf ``q, k, v`` ``[N, H, d]`` and ``pos`` ``[T, Hp, C]``: the means of q, k, v over each
    tree ``[num_trees, H, d]``, the sibling masses ``e(B)`` ``[T, H]`` of all nodes (level order, ``NEG``
    without siblings) and the self logits ``[N, H]`` (``[0, H]`` without ``include_self``).

    One autograd node, so that its backward pass adds into one gradient buffer per input; the family blocks of
    the DP's plan are recomputed there, so only the inputs are kept (no ``[P, H]`` logits)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, h: Hierarchy, scale: float,
                include_self: bool):
        count = _tree_counts(h, q.dtype)
        means = [x.new_zeros((h.num_trees,) + x.shape[1:]).index_add_(0, h.batch, x).div_(count)
                 for x in (q, k, v)]
        inner = walks.inner_means(q, h), walks.inner_means(k, h)
        e = q.new_full((h.num_nodes, q.size(1)), NEG)
        for block in family_blocks(h):
            logit = _block_logits(block, q, k, *inner, pos, scale)[0]
            dp._write_rows(block.rows, torch.logsumexp(logit, dim=-1), e)
        self_logit = self_logits(q, k, pos, h, scale) if include_self else q.new_zeros(0, q.size(1))
        ctx.save_for_backward(q, k, pos)
        ctx.hierarchy, ctx.scale, ctx.include_self, ctx.value_shape = h, scale, include_self, v.shape
        return (*means, e, self_logit)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean_q, grad_mean_k, grad_mean_v, grad_e, grad_self):
        q, k, pos = ctx.saved_tensors
        h, scale = ctx.hierarchy, ctx.scale
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), q.new_zeros(ctx.value_shape)
        count = _tree_counts(h, q.dtype)
        for grad, grad_mean in ((grad_q, grad_mean_q), (grad_k, grad_mean_k), (grad_v, grad_mean_v)):
            _add_rows(grad, grad_mean / count, h.batch)
        grad_pos = torch.zeros_like(pos) if pos is not None else None
        _family_backward(q, k, pos, h, scale, grad_e.contiguous(), grad_q, grad_k, grad_pos)
        if ctx.include_self:
            _self_logits_backward(q, k, pos, h, scale, grad_self, grad_q, grad_k, grad_pos)
        return grad_q, grad_k, grad_v, grad_pos, None, None, None


def _tree_counts(h: Hierarchy, dtype: torch.dtype) -> Tensor:
    """``[num_trees, 1, 1]`` leaves per tree of the forest ``h``."""
    return h.leaf_count[h.parent < 0].to(dtype).view(-1, 1, 1)


def _add_rows(out: Tensor, rows: Tensor, index: Tensor) -> None:
    """``out[i] += rows[index[i]]`` for every row ``i`` of ``out``, in chunks of :data:`walks.LEAF_CHUNK`."""
    for start in range(0, out.size(0), walks.LEAF_CHUNK):
        out[start:start + walks.LEAF_CHUNK] += rows[index[start:start + walks.LEAF_CHUNK]]


def _family_backward(q: Tensor, k: Tensor, pos: Tensor | None, h: Hierarchy, scale: float, grad_e: Tensor,
                     grad_q: Tensor, grad_k: Tensor, grad_pos: Tensor | None) -> None:
    """Add the gradients of the sibling masses ``e`` (block by block, recomputed) into ``grad_q``, ``grad_k``
    and ``grad_pos``."""
    inner = walks.inner_means(q, h), walks.inner_means(k, h)
    grad_q_in, grad_k_in = torch.zeros_like(inner[0]), torch.zeros_like(inner[1])
    for block in family_blocks(h):
        logit, q_rows, k_cols, pos_rows, pos_cols = _block_logits(block, q, k, *inner, pos, scale)
        grad_rows = dp._read_rows(block.rows, grad_e, block.families)
        g_logit = torch.softmax(logit, dim=-1).mul_(grad_rows[..., None])
        dp._scatter_add(block.rows, torch.matmul(g_logit, k_cols).mul_(scale), grad_q, grad_q_in)
        dp._scatter_add(block.cols, torch.matmul(g_logit.transpose(-1, -2), q_rows).mul_(scale), grad_k,
                        grad_k_in)
        if grad_pos is not None:
            g_pos = g_logit if pos_rows.size(0) > 1 else g_logit.sum(0, keepdim=True)
            dp._add_pos_grad(block.rows, torch.matmul(g_pos, pos_cols), grad_pos)
            dp._add_pos_grad(block.cols, torch.matmul(g_pos.transpose(-1, -2), pos_rows), grad_pos)
    walks.add_inner_means_grad(grad_q_in, h, grad_q)
    walks.add_inner_means_grad(grad_k_in, h, grad_k)


def _self_logits_backward(q: Tensor, k: Tensor, pos: Tensor | None, h: Hierarchy, scale: float,
                          grad_self: Tensor, grad_q: Tensor, grad_k: Tensor, grad_pos: Tensor | None) -> None:
    """Adjoint of :func:`~hgattn.attention.inputs.self_logits` (``s_ii = q_i . k_i * scale + |pos_i|^2``), added
    into the gradients in chunks of leaf rows."""
    weight = (grad_self * scale).unsqueeze(-1)
    for start in range(0, q.size(0), walks.LEAF_CHUNK):
        rows = slice(start, start + walks.LEAF_CHUNK)
        grad_q[rows].addcmul_(weight[rows], k[rows])
        grad_k[rows].addcmul_(weight[rows], q[rows])
    if grad_pos is not None:
        leaf_pos = pos[h.leaf_node]
        g = grad_self if pos.size(1) > 1 else grad_self.sum(1, keepdim=True)
        grad_pos.index_add_(0, h.leaf_node, 2 * g.unsqueeze(-1) * leaf_pos)


class _Combine(torch.autograd.Function):
    """``out_i = y(C_i) + g(C_i) * local_i`` ``[N, H, d_v]`` from the local outputs, the cut nodes' ``y``
    ``[c, H, d_v]`` and ``g`` ``[c, H]``, and every leaf's cut node ``C_i``: one output buffer, and in the
    backward pass one gradient buffer, rows in chunks."""

    @staticmethod
    def forward(ctx, local: Tensor, y: Tensor, gate: Tensor, leaf_cut: Tensor) -> Tensor:
        out = torch.empty_like(local)
        for start in range(0, local.size(0), walks.LEAF_CHUNK):
            rows = slice(start, start + walks.LEAF_CHUNK)
            cut = leaf_cut[rows]
            torch.addcmul(y[cut], gate[cut].unsqueeze(-1), local[rows], out=out[rows])
        ctx.save_for_backward(local, gate, leaf_cut)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        local, gate, leaf_cut = ctx.saved_tensors
        grad_local = torch.empty_like(local)
        grad_y = grad.new_zeros((gate.size(0),) + grad.shape[1:])
        grad_gate = torch.zeros_like(gate)
        for start in range(0, local.size(0), walks.LEAF_CHUNK):
            rows = slice(start, start + walks.LEAF_CHUNK)
            cut, g = leaf_cut[rows], grad[rows]
            torch.mul(g, gate[cut].unsqueeze(-1), out=grad_local[rows])
            grad_y.index_add_(0, cut, g)
            grad_gate.index_add_(0, cut, (g * local[rows]).sum(-1))
        return grad_local, grad_y, grad_gate, None


def _block_logits(block: FamilyBlock, q: Tensor, k: Tensor, q_in: Tensor, k_in: Tensor, pos: Tensor | None,
                  scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """One family block's ``[H, F, R, W]`` logits with the ``log n(S)`` prior and the self pairs masked, and its
    operands (query rows, key columns, their position rows)."""
    fam = block.families
    q_rows, k_cols = dp._gather(block.rows, q, q_in, fam), dp._gather(block.cols, k, k_in, fam)
    logit = torch.matmul(q_rows, k_cols.transpose(-1, -2)).mul_(scale)
    pos_rows = pos_cols = None
    if pos is not None:
        pos_rows, pos_cols = dp._gather_pos(block.rows, pos, fam), dp._gather_pos(block.cols, pos, fam)
        logit += torch.matmul(pos_rows, pos_cols.transpose(-1, -2))
    logit += block.log_count.to(logit.dtype)[None, :, None, :]
    logit.diagonal(offset=block.row_start, dim1=-2, dim2=-1).fill_(NEG)
    return logit, q_rows, k_cols, pos_rows, pos_cols


# ---------------------------------------------------------------------- the top tree
def _top_outputs(rho_q: Tensor, rho_k: Tensor, rho_v: Tensor, a_cut: Tensor, pos: Tensor | None, top: TopTree,
                 scale: float) -> tuple[Tensor, Tensor]:
    """HSA on the top tree with cut node ``C`` a leaf of weight ``n(C)``: ``y(C)`` ``[C, H, d_v]`` and
    ``g(C)`` ``[C, H]`` for every cut node (cut order), with plain autograd ops over the top tree's nodes."""
    h = top.hierarchy
    count = top.count.to(rho_q.dtype)
    mq, mk, mv = (_weighted_means(x, h, count) for x in (rho_q, rho_k, rho_v))
    b, s = h.sibling_index
    logit = (mq[b] * mk[s]).sum(-1) * scale + count.log()[s, None]
    if pos is not None:
        logit = logit + (pos[b] * pos[s]).sum(-1)
    e = _grouped_logsumexp(logit, b, h.num_nodes)
    theta = mv.new_zeros(mv.shape).index_add(0, b, exp(logit - e[b]).unsqueeze(-1) * mv[s])
    e_levels, theta_levels = e[h.level_node].split(h.level_sizes), theta[h.level_node].split(h.level_sizes)
    a, z = _top_masses(e_levels, a_cut, top)
    return _top_downward(e_levels, theta_levels, a, z, h)


def _weighted_means(x: Tensor, h: Hierarchy, count: Tensor) -> Tensor:
    """``[T_top, ...]`` ``n``-weighted means of the cut nodes' means ``x`` ``[C, ...]`` below every top node."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return walks.leaf_sums(x * count[h.leaf_node].view(shape), h) / count.view(shape)


def _top_masses(e: tuple[Tensor, ...], a_cut: Tensor, top: TopTree) -> tuple[list[Tensor], list[Tensor]]:
    """Per depth ``a`` and ``z = logaddexp(a, e)`` ``[n_level, H]``: the cut nodes' ``a`` as given, above them
    ``a(A) = sum_C n(C) / n(A) z(C)``."""
    h = top.hierarchy
    a, z = [None] * h.num_levels, [None] * h.num_levels
    for depth in range(h.num_levels - 1, -1, -1):
        level = h.levels[depth]
        mass = e[depth].new_zeros(e[depth].shape)
        if level.leaf_local.numel():
            mass = mass.index_copy(0, level.leaf_local, a_cut[level.leaf_row])
        if depth + 1 < h.num_levels:
            weight = top.child_weight[depth + 1].to(mass.dtype)[:, None]
            mass = mass.index_add(0, h.levels[depth + 1].parent_local, z[depth + 1] * weight)
        a[depth], z[depth] = mass, torch.logaddexp(mass, e[depth])
    return a, z


def _top_downward(e: tuple[Tensor, ...], theta: tuple[Tensor, ...], a: list[Tensor], z: list[Tensor],
                  h: Hierarchy) -> tuple[Tensor, Tensor]:
    """The downward pass: ``y(B) = y(parent) + exp(u + e - z) theta(B)``, and ``g = exp(u + a - z)``, read at
    the top tree's leaves (the cut nodes), in cut order."""
    u = e[0].new_zeros(e[0].shape)
    y = theta[0].new_zeros(theta[0].shape)
    ys, gates, rows = [], [], []
    for depth, level in enumerate(h.levels):
        if depth:
            u = (u + a[depth - 1] - z[depth - 1])[level.parent_local]
            y = y[level.parent_local]
        y = y + exp(u + e[depth] - z[depth]).unsqueeze(-1) * theta[depth]
        if level.leaf_local.numel():
            ys.append(y[level.leaf_local])
            gates.append(exp(u + a[depth] - z[depth])[level.leaf_local])
            rows.append(level.leaf_row)
    order = torch.argsort(torch.cat(rows))
    return torch.cat(ys)[order], torch.cat(gates)[order]
