"""Full-graph node tasks sharded across ``torch.distributed`` processes (``hgattn train --nproc N``, or
``torchrun ... --distributed`` on a node task): each rank holds the nodes of its whole subtrees of the graph's
hierarchy (:func:`~hgattn.sharding.shard_graph`), trains on its labelled nodes, and the model computes exactly
what it computes on the whole graph in one process (sharded HSA, halo exchange, batch norm over all ranks).
The gradients of the loss over all ranks' nodes are summed by an all-reduce after each backward pass."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ..batching import batch_hierarchy
from ..sharding import shard_graph
from .tasks import Task

__all__ = ["SHARDED_MODELS", "shard_node_task", "is_sharded", "sum_gradients", "global_share", "gather_rows"]

#: Models of the node tasks that train sharded.
SHARDED_MODELS = ("gps-hsa",)

EDGE = ("node", "to", "node")


def shard_node_task(task: Task, model: str, device: torch.device | str = "cpu") -> Task:
    """This rank's part of the node task ``task`` (the default process group's rank and size), on ``device``:
    its nodes' features, labels and masks, its edges (with self loops and GCN's weights over the whole graph)
    and its :class:`~hgattn.sharding.GraphShard`, whose nodes' positions are rows of ``shard_pos``."""
    if model not in SHARDED_MODELS:
        raise ValueError(f"{task.name}: a node task trains sharded over processes with {SHARDED_MODELS}; "
                         f"{model!r} has no sharded form (run it in one process)")
    graph = task.graph
    hierarchy = batch_hierarchy(graph)
    num_nodes = graph["node"].num_nodes
    edge_index, edge_weight = gcn_norm(graph[EDGE].edge_index, None, num_nodes, add_self_loops=True)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    part = shard_graph(edge_index, hierarchy, world_size)[rank]
    rows = part.shard.leaf_rows
    local = HeteroData()
    for key, value in graph["node"].items():
        if isinstance(value, Tensor) and value.size(0) == num_nodes:
            local["node"][key] = value[rows]
    local["node"].num_nodes = rows.numel()
    local[EDGE].edge_index = part.edge_index
    local[EDGE].edge_weight = edge_weight[part.edge_ids]
    local.shard_pos = hierarchy.node_features({nt: graph[nt].pos for nt in hierarchy.node_slices
                                               if "pos" in graph[nt]})[part.shard.pos_nodes]
    local = local.to(device)
    local.graph_shard = part.to(device)
    return replace(task, graph=local)


def is_sharded(task: Task) -> bool:
    """Whether ``task`` is a rank's part of a sharded node task."""
    return task.kind == "node" and task.graph is not None and "graph_shard" in task.graph


def global_share(mask: Tensor) -> float:
    """This rank's share of the nodes selected by ``mask`` over all ranks (its mean loss times the share, summed
    over the ranks, is the mean over all nodes)."""
    counts = torch.tensor([float(mask.sum())])
    dist.all_reduce(counts)
    return float(mask.sum()) / max(float(counts), 1.0)


def sum_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks (one all-reduce of all of them, flattened)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for grad, summed in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(summed.view_as(grad))


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Every rank's rows of each tensor, concatenated in rank order (on the CPU)."""
    parts: list[tuple[Tensor, ...] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tuple(t.detach().cpu() for t in tensors))
    return tuple(torch.cat([part[i] for part in parts]) for i in range(len(tensors)))
