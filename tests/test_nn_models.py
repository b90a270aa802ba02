"""HTEBlock, HSAGPSConv and GraphHSATransformer: exact forms on flat trees, shapes, batching, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data, HeteroData
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINConv, MLP

from hgattn import Hierarchy
from hgattn.nn import GraphHSATransformer, HSAConv, HSAGPSConv, HTEBlock


def flat(num_leaves: int) -> Hierarchy:
    return Hierarchy.from_parent([-1] + [0] * num_leaves)


def windows_forest(sizes: list[int], branching: int = 3) -> Hierarchy:
    """One fixed-window tree per graph; leaf rows follow the graphs' node order."""
    return Hierarchy.cat([Hierarchy.from_windows(size, branching) for size in sizes])


def dense_heads(conv: HSAConv, x: torch.Tensor, mask_diagonal: bool) -> torch.Tensor:
    """Softmax attention of every head with the layer's own projections, ``[N, H, d]``, plus queries."""
    proj = conv.lin(x) + conv.bias[0]
    width = conv.heads * conv.out_channels
    q, k, v = (t.reshape(x.size(0), conv.heads, -1) for t in proj[:, :3 * width].chunk(3, dim=-1))
    if conv.qk_norm:
        q, k = conv.q_norm(q), conv.k_norm(k)
    logits = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(conv.out_channels)
    if mask_diagonal:
        logits = logits.masked_fill(torch.eye(x.size(0), dtype=torch.bool), float("-inf"))
    return torch.einsum("hij,jhd->ihd", logits.softmax(-1), v), q


def random_graph(seed: int, num_nodes: int, channels: int = 6) -> Data:
    gen = torch.Generator().manual_seed(seed)
    return Data(x=torch.randn(num_nodes, channels, generator=gen),
                edge_index=torch.randint(0, num_nodes, (2, 3 * num_nodes), generator=gen))


# ---------------------------------------------------------------------- HTEBlock
@pytest.mark.parametrize("norm_first", [False, True])
def test_hte_on_flat_tree_is_the_transformer_layer(norm_first: bool) -> None:
    """On a one-level tree HSA is softmax attention: the block equals its formula written densely."""
    torch.manual_seed(0)
    block = HTEBlock(5, 8, heads=2, norm_first=norm_first).double()
    x = torch.randn(7, 5).double()
    out_heads, q = dense_heads(block.attn, x, mask_diagonal=True)
    h = block.lin_out((out_heads + q).reshape(7, -1))
    expected = h + block.ffn(block.norm(h)) if norm_first else block.norm(h) + block.ffn(block.norm(h))
    torch.testing.assert_close(block(x, flat(7)), expected)
    assert str(block) == f"HTEBlock(5, 8, heads=2, norm_first={norm_first})"


def test_hte_stacks_on_hetero_input_and_trains() -> None:
    torch.manual_seed(1)
    data = HeteroData()
    data["token"].x = torch.randn(5, 6)
    data["token"].pos = torch.arange(5.0).view(-1, 1)
    data["patch"].x = torch.randn(4, 3)
    data["patch"].pos = torch.randn(4, 2)
    data["doc"].num_nodes = 1
    data["token", "in", "doc"].edge_index = torch.stack([torch.arange(5), torch.zeros(5, dtype=torch.long)])
    data["patch", "in", "doc"].edge_index = torch.stack([torch.arange(4), torch.zeros(4, dtype=torch.long)])
    h = Hierarchy.from_hetero(data)
    first = HTEBlock(-1, 8, data.metadata(), heads=2, pos_channels=2)
    second = HTEBlock(8, 8, data.metadata(), heads=2, pos_channels=2, norm_first=True)
    out = second(first(data.x_dict, h, data.pos_dict), h, data.pos_dict)
    assert {nt: o.shape for nt, o in out.items()} == {"token": (5, 8), "patch": (4, 8)}
    sum(o.square().sum() for o in out.values()).backward()
    for name, param in [*first.named_parameters(), *second.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    out, attention = first(data.x_dict, h, data.pos_dict, return_attention_weights=True)
    assert attention.sibling_weight.shape == (h.sibling_index.size(1), 2)


# ---------------------------------------------------------------------- HSAGPSConv
def test_gps_on_flat_tree_is_dense_gps() -> None:
    """With a one-level tree, include_self and no QK norm the global term is multi-head softmax attention."""
    torch.manual_seed(2)
    layer = HSAGPSConv(8, None, heads=2, norm=None, attn_kwargs=dict(include_self=True, qk_norm=False)).double()
    x = torch.randn(9, 8).double()
    out_heads, _ = dense_heads(layer.attn, x, mask_diagonal=False)
    h = x + layer.lin_attn(out_heads.reshape(9, -1))
    torch.testing.assert_close(layer(x, torch.empty(2, 0, dtype=torch.long), flat(9)), h + layer.mlp(h))


def test_gps_shapes_repr_and_gradients() -> None:
    torch.manual_seed(3)
    graph = random_graph(0, 40, channels=8)
    layer = HSAGPSConv(8, GINConv(MLP([8, 8, 8])), heads=2, dropout=0.1,
                       attn_kwargs=dict(pos_channels=3, dropout=0.1))
    assert str(layer) == "HSAGPSConv(8, conv=GINConv(nn=MLP(8, 8, 8)), heads=2)"
    h = Hierarchy.from_windows(40, 4)
    out = layer(graph.x, graph.edge_index, h, pos=torch.randn(h.num_nodes, 3))
    assert out.shape == (40, 8)
    out.square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gps_rejects_a_hierarchy_over_other_rows() -> None:
    layer = HSAGPSConv(4, None)
    with pytest.raises(ValueError, match="the hierarchy has 5 leaves for 6 nodes"):
        layer(torch.randn(6, 4), torch.empty(2, 0, dtype=torch.long), flat(5))
    with pytest.raises(ValueError, match="x must be \\[N, 4\\]"):
        layer(torch.randn(5, 3), torch.empty(2, 0, dtype=torch.long), flat(5))


# ---------------------------------------------------------------------- GraphHSATransformer
@pytest.mark.parametrize("task, conv", [("graph", "gin"), ("node", "gcn"), ("node", "sage"), ("graph", "none")])
def test_model_batching_equals_per_graph_runs(task: str, conv: str) -> None:
    torch.manual_seed(4)
    graphs = [random_graph(seed, n) for seed, n in enumerate((11, 7, 16))]
    model = GraphHSATransformer(-1, 8, 3, num_layers=2, heads=2, task=task, conv=conv).eval()
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    out = model(batch.x, batch.edge_index, windows_forest([11, 7, 16]), batch.batch)
    singles = [model(g.x, g.edge_index, windows_forest([g.num_nodes]),
                     torch.zeros(g.num_nodes, dtype=torch.long)) for g in graphs]
    assert out.shape == ((3, 3) if task == "graph" else (34, 3))
    torch.testing.assert_close(out, torch.cat(singles), rtol=1e-5, atol=1e-5)


def test_model_trains_every_parameter() -> None:
    torch.manual_seed(5)
    graphs = [random_graph(seed, n) for seed, n in enumerate((12, 9))]
    batch = next(iter(DataLoader(graphs, batch_size=2)))
    h = windows_forest([12, 9])
    model = GraphHSATransformer(6, 8, 2, num_layers=2, heads=2, task="graph",
                                attn_kwargs=dict(pos_channels=2, include_self=True))
    assert str(model) == "GraphHSATransformer(6, 8, 2, num_layers=2, task=graph)"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    target = torch.tensor([0, 1])
    pos = torch.randn(h.num_nodes, 2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch.x, batch.edge_index, h, batch.batch, pos), target)
        loss.backward()
        if not losses:
            for name, param in model.named_parameters():
                assert param.grad is not None and param.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_model_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="task must be"):
        GraphHSATransformer(4, 8, 2, task="edge")
    with pytest.raises(ValueError, match="conv must be"):
        GraphHSATransformer(4, 8, 2, conv="gat")
    with pytest.raises(ValueError, match="divisible"):
        HSAGPSConv(6, None, heads=4)


def node_graph(num_nodes: int = 40) -> HeteroData:
    """A random graph as a GraphHierarchy tree (node features, labels, positions)."""
    from torch_geometric.utils import erdos_renyi_graph

    from hgattn.transforms import GraphHierarchy

    torch.manual_seed(0)
    data = Data(x=torch.randn(num_nodes, 6), edge_index=erdos_renyi_graph(num_nodes, 0.1),
                y=torch.randint(0, 3, (num_nodes,)))
    return GraphHierarchy(4, method="spectral", pe_dim=2)(data)


def test_gcn_hsa_is_the_gcn_plus_an_attention_residual_and_trains_every_parameter() -> None:
    from hgattn.nn import NodeGCN, NodeGCNHSA

    graph = node_graph()
    torch.manual_seed(1)
    model = NodeGCNHSA(6, 8, 3, num_layers=3, heads=2, pos_channels=2, dropout=0.0)
    out = model(graph)
    assert out.shape == (40, 3) and len(model.attns) == 2
    F.cross_entropy(out, graph["node"].y).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())

    for attn in model.attns:                     # attention off: the plain GCN with the same layers
        torch.nn.init.zeros_(attn.lin.weight)
        torch.nn.init.zeros_(attn.bias)
        torch.nn.init.zeros_(attn.lin_pos.weight)
    gcn = NodeGCN(6, 8, 3, num_layers=3, dropout=0.0)
    for mine, theirs in zip(model.convs, gcn.gcn.convs):
        theirs.load_state_dict(mine.state_dict())
    x, edge_index = graph["node"].x, graph["node", "to", "node"].edge_index
    torch.testing.assert_close(model(graph), gcn.gcn(x, edge_index), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers >= 2"):
        NodeGCNHSA(6, 8, 3, num_layers=1)
    assert repr(model) == "NodeGCNHSA(3 GCN layers, 2 HSA layers)"
