"""Layers over a graph sharded with its hierarchy (hgattn.sharding, HSAConv / HSAGPSConv with a Shard or a
GraphShard): each rank's rows, and the gradients summed over ranks, equal the single-process layer's.

The default suite checks the shards' edges and halo and the one-rank case in one process; the slow tests
spawn 2 and 4 gloo processes.
"""
from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import erdos_renyi_graph

from hgattn import GraphShard, Hierarchy, halo_exchange, shard_graph
from hgattn.attention import count_communication, shard_hierarchy
from hgattn.nn import GraphHSATransformer, HSAConv, HSAGPSConv

TOLERANCE = dict(atol=1e-10, rtol=1e-10)


def graph_and_tree(seed: int, nodes: int = 72) -> tuple[torch.Tensor, Hierarchy, torch.Tensor]:
    """A random directed graph, a random unbalanced tree over its nodes and raw positions of every tree node."""
    torch.manual_seed(seed)
    edge_index = erdos_renyi_graph(nodes, 0.06, directed=True)
    h = Hierarchy.random(nodes, (2, 5), skip=0.2, generator=torch.Generator().manual_seed(seed))
    return edge_index, h, torch.randn(h.num_nodes, 3, dtype=torch.float64)


#: The models compared: GIN with per-node layer norm, and GCN with batch norm (statistics over all ranks; the
#: sharded GCN takes the edge weights gcn_norm gives over the whole graph).
KINDS = {"gin-layer-norm": dict(conv="gin", norm="layer_norm", norm_kwargs={"mode": "node"}),
         "gcn-batch-norm": dict(conv="gcn", norm="batch_norm")}


def model(seed: int, include_self: bool, kind: str = "gin-layer-norm") -> GraphHSATransformer:
    torch.manual_seed(seed)
    return GraphHSATransformer(5, 8, 3, num_layers=2, heads=2, **KINDS[kind],
                               attn_kwargs={"pos_channels": 3, "include_self": include_self}).double()


def gcn_edges(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges with self loops and GCN's symmetric weights over the whole graph."""
    return gcn_norm(edge_index, None, num_nodes, add_self_loops=True, dtype=torch.float64)


# ---------------------------------------------------------------------- one process
@pytest.mark.parametrize("world_size", [1, 3])
def test_the_shards_hold_every_edge_once_with_its_halo(world_size):
    edge_index, h, _ = graph_and_tree(0)
    shards = shard_graph(edge_index, h, world_size)
    seen = torch.cat([graph.edge_ids for graph in shards]).sort().values
    assert torch.equal(seen, torch.arange(edge_index.size(1)))
    for graph in shards:
        nodes = torch.cat([graph.shard.leaf_rows, graph.halo_nodes])
        assert torch.equal(nodes[graph.edge_index], edge_index[:, graph.edge_ids])
        assert bool((graph.edge_index[1] < graph.num_nodes).all())
        owners = [other.shard.rank for other in shards for node in graph.halo_nodes.tolist()
                  if node in set(other.shard.leaf_rows.tolist())]
        assert graph.shard.rank not in owners and len(owners) == graph.num_halo
        width = max(graph.send_counts)
        table = torch.cat([torch.cat([other.shard.leaf_rows[other.send_rows],
                                      torch.full((width - other.send_rows.numel(),), -1)]) for other in shards])
        assert torch.equal(table[graph.halo_index], graph.halo_nodes)
    assert world_size > 1 or shards[0].num_halo == 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_rank_layers_equal_the_plain_layers(kind):
    edge_index, h, pos = graph_and_tree(1)
    edges, edge_weight = gcn_edges(edge_index, h.num_leaves) if kind.startswith("gcn") else (edge_index, None)
    graph = shard_graph(edges, h, 1)[0]
    x = torch.randn(h.num_leaves, 5, dtype=torch.float64)
    net = model(0, True, kind)
    want = net(x, edge_index, h, pos=pos)
    extra = {}
    if edge_weight is not None:
        for layer in net.layers:
            layer.conv.normalize = False
        extra["edge_weight"] = edge_weight[graph.edge_ids]
    got = net(x[graph.shard.leaf_rows], graph.edge_index, graph, pos=pos[graph.shard.pos_nodes], **extra)
    torch.testing.assert_close(got, want[graph.shard.leaf_rows], **TOLERANCE)
    assert halo_exchange(x, graph) is x


def test_what_a_sharded_layer_cannot_do_exactly_is_refused():
    edge_index, h, _ = graph_and_tree(2)
    graph = shard_graph(edge_index, h, 1)[0]
    x = torch.randn(h.num_leaves, 8)
    with pytest.raises(ValueError, match="GCNConv normalises by the degrees"):
        HSAGPSConv(8, GCNConv(8, 8), heads=2, norm=None)(x, graph.edge_index, graph)
    with pytest.raises(ValueError, match="LayerNorm normalises over the nodes"):
        HSAGPSConv(8, None, heads=2, norm="layer_norm")(x, graph.edge_index, graph)
    with pytest.raises(ValueError, match="pass batch=None"):
        HSAGPSConv(8, None, heads=2, norm=None)(x, graph.edge_index, graph, batch=torch.zeros(72, dtype=torch.long))
    with pytest.raises(ValueError, match="x has 5 rows"):
        HSAGPSConv(8, None, heads=2, norm=None)(x[:5], graph.edge_index, graph)
    with pytest.raises(ValueError, match="graph-level readout"):
        GraphHSATransformer(8, 8, 2, task="graph", norm=None)(x, graph.edge_index, graph)
    conv = HSAConv(8, 4, heads=2)
    with pytest.raises(ValueError, match="return_attention_weights needs the attention weights"):
        conv(x, graph.shard, return_attention_weights=True)
    with pytest.raises(ValueError, match="attention dropout in training"):
        HSAConv(8, 4, heads=2, dropout=0.1).train()(x, graph.shard)
    with pytest.raises(ValueError, match="homogeneous layer"):
        conv({"leaf": x}, graph.shard)
    with pytest.raises(ValueError, match="pos must be"):
        HSAConv(8, 4, heads=2, pos_channels=3)(x, graph.shard, pos=torch.randn(4, 3))
    with pytest.raises(ValueError, match="edge_index has node ids"):
        shard_graph(edge_index + 100, h, 2)
    with pytest.raises(ValueError, match=r"must be a \[2, E\] tensor"):
        shard_graph(edge_index[0], h, 2)
    with pytest.raises(ValueError, match="x must be"):
        halo_exchange(x[:3], graph)


# ---------------------------------------------------------------------- several processes
def _worker(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        _exact_suite(rank, world_size)
    finally:
        dist.destroy_process_group()


def _exact_suite(rank: int, world_size: int) -> None:
    edge_index, h, pos = graph_and_tree(3)
    x = torch.randn(h.num_leaves, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weight = torch.randn(h.num_leaves, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for kind in KINDS:
        gcn = kind.startswith("gcn")
        edges, edge_weight = gcn_edges(edge_index, h.num_leaves) if gcn else (edge_index, None)
        graph = shard_graph(edges, h, world_size)[rank]
        assert isinstance(graph, GraphShard) and graph.shard.world_size == world_size
        rows = graph.shard.leaf_rows
        for include_self in (False, True):
            single = model(6, include_self, kind)
            x_single = x.clone().requires_grad_(True)
            want = single(x_single, edge_index, h, pos=pos)
            (want * weight).sum().backward()

            sharded = model(6, include_self, kind)
            extra = {}
            if gcn:
                for layer in sharded.layers:
                    layer.conv.normalize = False
                extra["edge_weight"] = edge_weight[graph.edge_ids]
            x_rank = x[rows].clone().requires_grad_(True)
            with count_communication() as stats:
                got = sharded(x_rank, graph.edge_index, graph, pos=pos[graph.shard.pos_nodes], **extra)
                (got * weight[rows]).sum().backward()
            torch.testing.assert_close(got, want[rows].detach(), **TOLERANCE)
            torch.testing.assert_close(x_rank.grad, x_single.grad[rows], **TOLERANCE)
            for (name, p_single), p_rank in zip(single.named_parameters(), sharded.parameters()):
                grad = p_rank.grad.clone()
                dist.all_reduce(grad)
                torch.testing.assert_close(grad, p_single.grad, **TOLERANCE, msg=lambda m: f"{kind} {name}: {m}")
            for (name, b_single), b_rank in zip(single.named_buffers(), sharded.buffers()):
                torch.testing.assert_close(b_rank, b_single, **TOLERANCE, msg=lambda m: f"{kind} {name}: {m}")
            with torch.no_grad():
                want = single.eval()(x, edge_index, h, pos=pos)
                got = sharded.eval()(x[rows], graph.edge_index, graph, pos=pos[graph.shard.pos_nodes], **extra)
            torch.testing.assert_close(got, want[rows], **TOLERANCE)
            assert stats.forward_bytes > 0 and stats.backward_bytes > 0
        assert shard_hierarchy(h, world_size)[rank].tree_hash == graph.shard.tree_hash


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_a_sharded_graph_transformer_matches_the_single_process_one(tmp_path, world_size):
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init")), nprocs=world_size, join=True)
