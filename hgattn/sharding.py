"""Graphs sharded across processes with their hierarchy, for full-graph training with each rank holding its
part of the nodes.

Each rank owns whole subtrees of the hierarchy over the graph's nodes (:func:`~hgattn.attention.shard_hierarchy`: on a
:class:`~hgattn.transforms.GraphHierarchy` the cut follows the graph partition, so few edges cross ranks), the
edges into its nodes, and receives, once per message-passing layer, the features of the nodes of other ranks
that send into its nodes (the *halo*): every rank gathers the rows the others need, padded to the largest
rank's count, in one ``all_gather`` (and the backward pass sums their gradients back in one reduce-scatter).
Message passing that aggregates over a node's incoming edges (GIN, SAGE, GAT, ...) is then exact (GCN with
the edge weights normalised over the whole graph, as :func:`shard_graph` gives them); so is
:func:`~hgattn.attention.sharded_hsa` for the global attention, and batch normalisation with statistics summed
over the ranks (:func:`synced_batch_norm`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .attention.sharded import Shard, _count, all_gather_rows, shard_hierarchy
from .hierarchy import Hierarchy

__all__ = ["GraphShard", "shard_graph", "halo_exchange", "synced_batch_norm"]


@dataclass
class GraphShard:
    """Rank ``shard.rank``'s part of a graph and of its hierarchy (:func:`shard_graph`).

    Attributes:
        shard: the hierarchy's :class:`~hgattn.attention.Shard`; this rank's nodes are ``shard.leaf_rows`` (global node
            ids, ascending), its local rows ``0 .. N_r - 1`` in that order.
        edge_index: ``[2, E_r]`` the graph's edges into this rank's nodes, renumbered: targets are local rows,
            sources local rows or halo rows ``N_r + j`` (halo node ``j``).
        edge_ids: ``[E_r]`` position of each of these edges in the global ``edge_index`` (their attributes are
            ``edge_attr[edge_ids]``).
        halo_nodes: ``[M_r]`` global ids of the halo nodes: nodes of other ranks with an edge into this rank.
        send_rows: ``[S_r]`` local rows of this rank's nodes that other ranks receive as halo, ascending.
        send_counts: ``S_q`` of every rank ``q``.
        halo_index: ``[M_r]`` row of each halo node in the gathered table (rank ``q``'s rows start at
            ``q * max(send_counts)``).
    """

    shard: Shard
    edge_index: Tensor
    edge_ids: Tensor
    halo_nodes: Tensor
    send_rows: Tensor
    send_counts: tuple[int, ...]
    halo_index: Tensor

    @property
    def num_nodes(self) -> int:
        """``N_r``: this rank's nodes."""
        return self.shard.num_local_leaves

    @property
    def num_halo(self) -> int:
        """``M_r``: the halo nodes."""
        return self.halo_nodes.numel()

    def to(self, device: torch.device | str) -> "GraphShard":
        """A copy on ``device``."""
        return GraphShard(**{f.name: (getattr(self, f.name).to(device)
                                      if isinstance(getattr(self, f.name), (Tensor, Shard))
                                      else getattr(self, f.name)) for f in fields(self)})


def shard_graph(edge_index: Tensor, hierarchy: Hierarchy, world_size: int, *,
                imbalance: float = 0.05) -> list[GraphShard]:
    """Split a graph whose nodes are the leaves of ``hierarchy`` (node ``i`` = leaf row ``i``) into
    ``world_size`` shards: the hierarchy as :func:`~hgattn.attention.shard_hierarchy` cuts it, each rank's edges (those
    into its nodes) and its halo.

    Args:
        edge_index: ``[2, E]`` edges source -> target over the ``N = hierarchy.num_leaves`` nodes.
        hierarchy: the tree (or forest) over the nodes.
        world_size, imbalance: as :func:`~hgattn.attention.shard_hierarchy`.

    Raises:
        ValueError: ``edge_index`` not ``[2, E]`` integers within ``[0, N)``, or a hierarchy that cannot be cut
            into ``world_size`` shards.
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"shard_graph: hierarchy must be a hgattn.Hierarchy, got {type(hierarchy).__name__}")
    num_nodes = hierarchy.num_leaves
    _check_edges(edge_index, num_nodes)
    edge_index = edge_index.to("cpu", torch.long)
    shards = shard_hierarchy(hierarchy, world_size, imbalance=imbalance)
    owner = torch.empty(num_nodes, dtype=torch.long)
    local_row = torch.empty(num_nodes, dtype=torch.long)
    for shard in shards:
        owner[shard.leaf_rows] = shard.rank
        local_row[shard.leaf_rows] = torch.arange(shard.num_local_leaves)
    source, target = edge_index
    crossing = owner[source] != owner[target]
    halo = [torch.unique(source[crossing & (owner[target] == rank)]) for rank in range(world_size)]
    needed = torch.zeros(num_nodes, dtype=torch.bool)
    for nodes in halo:
        needed[nodes] = True
    sent = [shard.leaf_rows[needed[shard.leaf_rows]] for shard in shards]
    send_counts = tuple(nodes.numel() for nodes in sent)
    width = max(send_counts)
    table_row = torch.empty(num_nodes, dtype=torch.long)
    for rank, nodes in enumerate(sent):
        table_row[nodes] = rank * width + torch.arange(nodes.numel())
    return [_graph_shard(shard, edge_index, owner, local_row, halo[shard.rank], sent[shard.rank], send_counts,
                         table_row) for shard in shards]


def _check_edges(edge_index: Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        got = list(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ValueError(f"shard_graph: edge_index must be a [2, E] tensor, got {got}")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise ValueError(f"shard_graph: edge_index must hold integer node ids, got {edge_index.dtype}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"shard_graph: edge_index has node ids in [{int(edge_index.min())}, "
                         f"{int(edge_index.max())}], outside the hierarchy's {num_nodes} leaves (node i must be "
                         "leaf row i)")


def _graph_shard(shard: Shard, edge_index: Tensor, owner: Tensor, local_row: Tensor, halo_nodes: Tensor,
                 sent: Tensor, send_counts: tuple[int, ...], table_row: Tensor) -> GraphShard:
    source, target = edge_index
    edge_ids = (owner[target] == shard.rank).nonzero().view(-1)
    halo_row = torch.full_like(owner, -1)
    halo_row[halo_nodes] = shard.num_local_leaves + torch.arange(halo_nodes.numel())
    src = source[edge_ids]
    local_src = torch.where(owner[src] == shard.rank, local_row[src], halo_row[src])
    return GraphShard(shard, torch.stack([local_src, local_row[target[edge_ids]]]), edge_ids, halo_nodes,
                      local_row[sent], send_counts, table_row[halo_nodes])


def halo_exchange(x: Tensor, graph: GraphShard, group=None) -> Tensor:
    """``[N_r + M_r, F]``: this rank's node rows ``x`` (``[N_r, F]``) followed by its halo nodes' rows, received
    from their ranks (one ``all_gather`` of the rows the other ranks need; a collective: every rank calls it).
    Differentiable: the halo rows' gradients return to their ranks in the backward pass."""
    if not isinstance(graph, GraphShard):
        raise TypeError(f"halo_exchange: graph must be a GraphShard from shard_graph, got {type(graph).__name__}")
    if x.dim() != 2 or x.size(0) != graph.num_nodes:
        raise ValueError(f"halo_exchange: x must be [N_r, F] with N_r={graph.num_nodes} rows of rank "
                         f"{graph.shard.rank}, got {list(x.shape)}")
    world_size = graph.shard.world_size
    width = max(graph.send_counts)
    if world_size == 1 or width == 0:
        return x
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"halo_exchange: shard {graph.shard.rank} of {world_size} needs torch.distributed "
                         "initialised (dist.init_process_group) with one process per shard")
    chunk = x[graph.send_rows]
    chunk = torch.cat([chunk, chunk.new_zeros(width - chunk.size(0), x.size(1))])
    return torch.cat([x, all_gather_rows(chunk, group, world_size)[graph.halo_index]])


def synced_batch_norm(norm: torch.nn.Module, x: Tensor, group=None) -> Tensor:
    """Batch normalisation of this rank's rows ``x`` ``[N_r, C]`` with the statistics of all ranks' rows, as
    ``norm`` (a PyG ``BatchNorm`` or a ``torch.nn.BatchNorm1d``) computes them over the whole batch in one
    process: in training, the mean and biased variance over the ``sum N_r`` rows normalise, and the running
    statistics move by ``momentum`` towards the mean and the unbiased variance (two sum all-reduces of ``C + 1``
    and ``C`` values, differentiable; a collective: every rank calls it); in eval mode the running statistics alone."""
    module = getattr(norm, "module", norm)
    if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"synced_batch_norm needs a batch norm module, got {type(norm).__name__}")
    if not module.training and module.track_running_stats:
        return module(x)
    totals = _sum_over_ranks(torch.cat([x.sum(0), x.new_tensor([float(x.size(0))])]), group)
    count = totals[-1:]
    mean = totals[:-1] / count
    var = _sum_over_ranks((x - mean).square().sum(0), group) / count
    if module.track_running_stats:
        with torch.no_grad():
            module.num_batches_tracked.add_(1)
            momentum = (1.0 / float(module.num_batches_tracked) if module.momentum is None
                        else module.momentum)
            module.running_mean.lerp_(mean.detach(), momentum)
            module.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), momentum)
    out = (x - mean) * torch.rsqrt(var + module.eps)
    return out * module.weight + module.bias if module.affine else out


def _sum_over_ranks(x: Tensor, group) -> Tensor:
    """``x`` summed over the ranks (differentiable; the identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    return _AllReduceSum.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of the sum of all ranks' losses is the sum of their gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        _count("forward", _all_reduce_bytes(out, group))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        _count("backward", _all_reduce_bytes(grad, ctx.group))
        return grad, None


def _all_reduce_bytes(x: Tensor, group) -> int:
    """Bytes reaching a rank in a bandwidth-optimal all-reduce (reduce-scatter, then all-gather)."""
    world_size = dist.get_world_size(group)
    return 2 * (world_size - 1) * x.numel() * x.element_size() // world_size
