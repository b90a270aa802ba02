"""GraphHierarchy and SequenceHierarchy: tree validity, row mappings, determinism, batching, errors."""
import shutil
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import remove_self_loops, to_undirected

import hgattn
from hgattn import Hierarchy
from hgattn.encodings import laplacian_eigenvectors, sinusoidal
from hgattn.transforms import GraphHierarchy, SequenceHierarchy
from hgattn.transforms import graph as graph_module
from hgattn.transforms.graph import branching_statistics, edge_cut, partition_graph

CORA_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid" / "Cora" / "raw"


def random_graph(num_nodes: int, num_edges: int, seed: int = 0, **attrs) -> Data:
    g = torch.Generator().manual_seed(seed)
    edge_index = to_undirected(torch.randint(0, num_nodes, (2, num_edges), generator=g), num_nodes=num_nodes)
    return Data(edge_index=edge_index, num_nodes=num_nodes, **attrs)


def method_params():
    return [pytest.param("metis", marks=pytest.mark.skipif(
        not graph_module._has_pymetis(), reason="pymetis not installed")), "spectral"]


def tree_edges(data) -> dict:
    return {et: data[et].edge_index for et in data.edge_types if et[1] == "in"}


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> Data:
    if not CORA_RAW.is_dir():
        pytest.skip(f"Cora raw files not found at {CORA_RAW}")
    from torch_geometric.datasets import Planetoid

    root = tmp_path_factory.mktemp("planetoid")
    shutil.copytree(CORA_RAW, root / "Cora" / "raw")
    return Planetoid(str(root), "Cora")[0]


# ---------------------------------------------------------------------- GraphHierarchy on Cora
@pytest.mark.parametrize("method", method_params())
def test_cora_tree_rows_and_attributes(cora, method):
    out = GraphHierarchy(16, method=method)(cora)
    h = Hierarchy.from_hetero(out)
    assert h.num_trees == 1 and h.num_leaves == cora.num_nodes == 2708
    assert h.node_slices["node"] == (0, 2708)
    assert torch.equal(h.node_leaf[:2708], torch.arange(2708))
    assert out.node_types == ["node", "cluster1", "cluster2", "root"]
    for key in ("x", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(out["node"][key], cora[key])
    assert torch.equal(out["node", "to", "node"].edge_index, cora.edge_index)
    assert torch.equal(h.leaf_features({"node": cora.x}), cora.x)
    for nt in out.node_types:
        assert out[nt].pos.shape == (out[nt].num_nodes, 4)
    assert torch.equal(out["root"].pos, torch.zeros(1, 4))


@pytest.mark.parametrize("method", method_params())
def test_cora_clusters_cut_fewer_edges_than_random(cora, method):
    out = GraphHierarchy(16, method=method)(cora)
    cluster = out["node", "in", "cluster1"].edge_index[1]
    g = torch.Generator().manual_seed(0)
    random_cuts = [edge_cut(cora.edge_index, cluster[torch.randperm(cluster.numel(), generator=g)])
                   for _ in range(5)]
    cut = edge_cut(cora.edge_index, cluster)
    assert min(random_cuts) > 5000
    assert cut < 0.7 * min(random_cuts)


def test_cora_metis_cut_is_far_below_random(cora):
    pytest.importorskip("pymetis")
    out = GraphHierarchy(16, method="metis")(cora)
    cluster = out["node", "in", "cluster1"].edge_index[1]
    random_cut = edge_cut(cora.edge_index, cluster[torch.randperm(cluster.numel())])
    assert edge_cut(cora.edge_index, cluster) < 0.45 * random_cut


# ---------------------------------------------------------------------- structure
@pytest.mark.parametrize("method", method_params())
@pytest.mark.parametrize("num_nodes,branching", [(1, 4), (5, 8), (8, 8), (9, 8), (700, 8), (1000, 3)])
def test_tree_shape_and_branching_bounds(method, num_nodes, branching):
    data = random_graph(num_nodes, 3 * num_nodes, seed=num_nodes)
    out = GraphHierarchy(branching, method=method)(data)
    h = Hierarchy.from_hetero(out)
    assert h.num_leaves == num_nodes and h.num_trees == 1
    assert torch.equal(h.node_leaf[:num_nodes], torch.arange(num_nodes))
    levels = 1
    while branching ** levels < num_nodes:
        levels += 1
    assert h.num_levels - 1 == levels
    assert (h.depth[h.leaf_node] == levels).all()
    counts = torch.bincount(h.parent[h.parent >= 0], minlength=h.num_nodes)[~h.is_leaf]
    assert int(counts.min()) >= 1
    slack = 1 if method == "spectral" else branching // 4 + 2
    assert int(counts.max()) <= branching + slack
    stats = branching_statistics(out)
    assert sum(row["parents"] for row in stats.values()) == h.num_nodes - h.num_leaves


@pytest.mark.parametrize("method", method_params())
def test_deterministic_for_a_seed(method):
    data = random_graph(600, 1500, seed=3)
    first = GraphHierarchy(6, method=method, seed=7)(data)
    second = GraphHierarchy(6, method=method, seed=7)(data)
    for et, edge_index in tree_edges(first).items():
        assert torch.equal(edge_index, second[et].edge_index)
    for nt in first.node_types:
        assert torch.equal(first[nt].pos, second[nt].pos)


@pytest.mark.parametrize("method", method_params())
def test_disconnected_graph_with_isolated_nodes(method):
    cliques = [torch.combinations(torch.arange(start, start + 5)).t() for start in (0, 5, 10)]
    edge_index = to_undirected(torch.cat(cliques, 1))
    data = Data(edge_index=edge_index, num_nodes=25, x=torch.randn(25, 3))
    out = GraphHierarchy(5, method=method)(data)
    h = Hierarchy.from_hetero(out)
    assert h.num_leaves == 25 and torch.equal(out["node"].x, data.x)
    cluster = out["node", "in", "cluster1"].edge_index[1]
    if method == "metis":
        assert edge_cut(edge_index, cluster) == 0
    assert torch.isfinite(out["node"].pos).all()


@pytest.mark.parametrize("method", method_params())
def test_graph_without_edges(method):
    out = GraphHierarchy(4, method=method)(Data(num_nodes=10))
    h = Hierarchy.from_hetero(out)
    assert h.num_leaves == 10
    assert torch.equal(out["node"].pos, torch.zeros(10, 4))


def test_auto_falls_back_to_spectral_without_pymetis(monkeypatch):
    data = random_graph(300, 900)
    expected = GraphHierarchy(8, method="spectral")(data)
    monkeypatch.setattr(graph_module, "_has_pymetis", lambda: False)
    out = GraphHierarchy(8)(data)
    for et, edge_index in tree_edges(expected).items():
        assert torch.equal(out[et].edge_index, edge_index)
    with pytest.raises(ImportError, match="pip install pymetis"):
        GraphHierarchy(8, method="metis")


def well_posed(edge_index: torch.Tensor, num_nodes: int, k: int) -> bool:
    """True when the graph is connected and its k + 2 smallest Laplacian eigenvalues are distinct (so its
    eigenvectors are unique up to sign)."""
    adj = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adj.index_put_((edge_index[0], edge_index[1]), torch.ones(edge_index.size(1), dtype=torch.float64),
                   accumulate=True)
    degree = adj.sum(1)
    if bool((degree == 0).any()):
        return False
    inv = degree.rsqrt()
    values = torch.linalg.eigvalsh(torch.eye(num_nodes, dtype=torch.float64) - inv[:, None] * adj * inv[None])
    return bool((values[1:k + 2] - values[:k + 1] > 1e-6).all())


def family_subgraph(child_of: torch.Tensor, family: torch.Tensor, edge_index: torch.Tensor, f: int):
    """Members of family ``f`` and the edges among them (children ``child_of[edge_index]``), in local ids."""
    members = (family == f).nonzero().view(-1)
    local = torch.full((family.numel(),), -1)
    local[members] = torch.arange(members.numel())
    src, dst = child_of[edge_index]
    keep = (family[src] == f) & (family[dst] == f) & (src != dst)
    return members, local[torch.stack([src[keep], dst[keep]])]


@pytest.mark.parametrize("method", method_params())
def test_positions_are_laplacian_eigenvectors_of_each_family_graph(method):
    data = random_graph(400, 3000, seed=5)
    out = GraphHierarchy(8, method=method, pe_dim=3)(data)
    to1 = out["node", "in", "cluster1"].edge_index[1]
    to2 = out["cluster1", "in", "cluster2"].edge_index[1]
    checked = {}
    for name, child_of, family in (("node", torch.arange(400), to1), ("cluster1", to1, to2)):
        checked[name] = 0
        for f in range(int(family.max()) + 1):
            members, edges = family_subgraph(child_of, family, data.edge_index, f)
            if members.numel() < 5 or not well_posed(edges, members.numel(), 3):
                continue
            expected = laplacian_eigenvectors(edges, members.numel(), 3)
            assert torch.allclose(out[name].pos[members], expected, atol=1e-4)
            checked[name] += 1
    assert checked["node"] >= 10 and checked["cluster1"] >= 3, checked


def test_hsa_runs_on_the_tree():
    data = random_graph(120, 400, x=torch.randn(120, 8))
    out = GraphHierarchy(5, method="spectral", pe_dim=2)(data)
    h = Hierarchy.from_hetero(out)
    x = h.leaf_features({"node": out["node"].x})
    pos = h.node_features({nt: out[nt].pos for nt in out.node_types})
    y = hgattn.hsa(x, x, x, h, pos=pos)
    assert y.shape == (120, 8) and torch.isfinite(y).all()


def test_batching_through_dataloader():
    transform = GraphHierarchy(4, num_levels=3, method="spectral")
    graphs = [transform(random_graph(n, 2 * n, seed=n, x=torch.full((n, 2), float(n)), y=torch.tensor([n])))
              for n in (5, 40, 64, 17)]
    assert all(g.node_types == graphs[0].node_types for g in graphs)
    batch = next(iter(DataLoader(graphs, batch_size=4)))
    h = Hierarchy.from_hetero(batch)
    assert h.num_trees == 4 and h.num_leaves == 5 + 40 + 64 + 17
    assert torch.equal(batch.y, torch.tensor([5, 40, 64, 17]))
    x = h.leaf_features({"node": batch["node"].x})
    assert torch.equal(x[:, 0], torch.repeat_interleave(torch.tensor([5.0, 40.0, 64.0, 17.0]),
                                                        torch.tensor([5, 40, 64, 17])))
    assert torch.equal(torch.unique_consecutive(h.batch), torch.arange(4))
    large = transform(random_graph(200, 400))
    assert int(torch.bincount(large["cluster2", "in", "root"].edge_index[1]).max()) == 200 // 16 + 1


def test_directed_graph_with_edge_attributes():
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 7], [1, 2, 3, 0, 5, 6, 7, 4, 7]])
    data = Data(edge_index=edge_index, edge_attr=torch.arange(9.0)[:, None], num_nodes=8, y=torch.arange(8))
    out = GraphHierarchy(4, method="metis" if graph_module._has_pymetis() else "spectral")(data)
    assert torch.equal(out["node", "to", "node"].edge_index, edge_index)
    assert torch.equal(out["node", "to", "node"].edge_attr, data.edge_attr)
    assert torch.equal(out["node"].y, data.y)
    cluster = out["node", "in", "cluster1"].edge_index[1]
    assert edge_cut(to_undirected(edge_index), cluster) == 0


def test_input_pos_is_kept_under_another_name():
    data = random_graph(30, 60, pos=torch.randn(30, 3))
    out = GraphHierarchy(4, method="spectral")(data)
    assert torch.equal(out["node"].input_pos, data.pos) and out["node"].pos.shape == (30, 4)


def test_partition_graph_matches_pyg_to_undirected():
    g = torch.Generator().manual_seed(2)
    edge_index = torch.randint(0, 50, (2, 300), generator=g)
    expected = to_undirected(remove_self_loops(edge_index)[0], num_nodes=50)
    assert torch.equal(partition_graph(edge_index, 50), expected)
    assert partition_graph(torch.zeros(2, 0, dtype=torch.long), 4).shape == (2, 0)


def test_cluster_csr_lists_each_nodes_neighbours_within_its_cluster():
    g = torch.Generator().manual_seed(0)
    edge_index = partition_graph(torch.randint(0, 300, (2, 2000), generator=g), 300)
    label = torch.randint(0, 7, (300,), generator=g)
    edge_index = edge_index[:, label[edge_index[0]] == label[edge_index[1]]]
    order, start, size, ptr, col = graph_module._cluster_csr(label, edge_index)
    assert torch.equal(label[order], torch.sort(label).values)
    assert torch.equal(size, torch.bincount(label))
    position = torch.empty_like(order)
    position[order] = torch.arange(300)
    for v in range(300):
        neighbours = edge_index[1][edge_index[0] == v]
        expected = torch.sort(position[neighbours] - start[label[neighbours]]).values
        p = position[v]
        assert torch.equal(torch.sort(col[ptr[p]:ptr[p + 1]]).values, expected)


def test_graph_errors():
    with pytest.raises(ValueError, match="empty graph"):
        GraphHierarchy(4)(Data(num_nodes=0))
    with pytest.raises(ValueError, match="empty graph"):
        GraphHierarchy(4)(Data(x=torch.zeros(0, 3)))
    with pytest.raises(ValueError, match="branching must be >= 2"):
        GraphHierarchy(1)
    with pytest.raises(ValueError, match="num_levels"):
        GraphHierarchy(4, num_levels=0)
    with pytest.raises(ValueError, match="method"):
        GraphHierarchy(4, method="louvain")
    with pytest.raises(ValueError, match="outside"):
        GraphHierarchy(4)(Data(edge_index=torch.tensor([[0, 1], [1, 9]]), num_nodes=5))
    with pytest.raises(ValueError, match="integer tensor"):
        GraphHierarchy(4)(Data(edge_index=torch.zeros(2, 3), num_nodes=5))
    with pytest.raises(ValueError, match="Data object"):
        GraphHierarchy(4)(torch.zeros(3))


def test_graph_repr():
    assert repr(GraphHierarchy(8, num_levels=3, pe_dim=2, method="spectral", seed=1)) == (
        "GraphHierarchy(branching=8, num_levels=3, pe_dim=2, method='spectral', seed=1, refine_iterations=1)")


# ---------------------------------------------------------------------- SequenceHierarchy
@pytest.mark.parametrize("branching", [(2, 4, 8, 16), 3, (2, 5)])
@pytest.mark.parametrize("length", [2, 3, 7, 16, 100, 1024, 1025, 3000])
def test_sequence_same_tree_as_from_windows(branching, length):
    out = SequenceHierarchy(branching)(length)
    h = Hierarchy.from_hetero(out)
    assert torch.equal(h.parent, Hierarchy.from_windows(length, branching).parent)
    assert h.num_leaves == length and torch.equal(h.node_leaf[:length], torch.arange(length))


def test_sequence_positions_and_attributes():
    data = Data(x=torch.randn(11, 3), token_id=torch.arange(11), y=torch.tensor([1]))
    out = SequenceHierarchy((2, 4), pe_dim=4)(data)
    assert out.node_types == ["token", "level1", "level2", "root"]
    assert torch.equal(out["token"].x, data.x) and torch.equal(out["token"].token_id, data.token_id)
    assert torch.equal(out.y, data.y)
    assert torch.equal(out["token"].pos, sinusoidal(torch.arange(11) % 2, 4))
    assert torch.equal(out["level1"].pos, sinusoidal(torch.arange(6) % 4, 4))
    assert torch.equal(out["level2"].pos, sinusoidal(torch.arange(2), 4))
    assert torch.equal(out["root"].pos, torch.zeros(1, 4))
    assert torch.equal(out["level1", "in", "level2"].edge_index, torch.tensor([[0, 1, 2, 3, 4, 5],
                                                                           [0, 0, 0, 0, 1, 1]]))


def test_sequence_of_one_element():
    out = SequenceHierarchy()(1)
    h = Hierarchy.from_hetero(out)
    assert out.node_types == ["token", "root"] and h.num_leaves == 1 and h.num_nodes == 2


def test_sequence_full_depth_batches_any_length():
    transform = SequenceHierarchy((2, 4), full_depth=True)
    items = [transform(Data(x=torch.full((n, 1), float(n)))) for n in (1, 3, 8, 9, 30)]
    assert all(item.node_types == ["token", "level1", "level2", "root"] for item in items)
    batch = next(iter(DataLoader(items, batch_size=5)))
    h = Hierarchy.from_hetero(batch)
    assert h.num_trees == 5 and h.num_leaves == 1 + 3 + 8 + 9 + 30
    assert torch.equal(h.leaf_features({"token": batch["token"].x}), batch["token"].x)
    top = batch["level2", "in", "root"].edge_index[1]
    assert torch.equal(torch.bincount(top), torch.tensor([1, 1, 1, 2, 4]))


def test_sequence_errors_and_repr():
    with pytest.raises(ValueError, match=">= 2"):
        SequenceHierarchy((2, 1))
    with pytest.raises(ValueError, match="even"):
        SequenceHierarchy(pe_dim=3)
    with pytest.raises(ValueError, match="full_depth"):
        SequenceHierarchy(4, full_depth=True)
    with pytest.raises(ValueError, match="empty sequence"):
        SequenceHierarchy()(0)
    with pytest.raises(ValueError, match="empty sequence"):
        SequenceHierarchy()(Data(x=torch.zeros(0, 2)))
    with pytest.raises(ValueError, match="Data object or a length"):
        SequenceHierarchy()("abc")
    with pytest.raises(ValueError, match="clashes"):
        SequenceHierarchy(leaf_type="root")
    assert repr(SequenceHierarchy((2, 4), pe_dim=4)) == (
        "SequenceHierarchy(branching=(2, 4), pe_dim=4, leaf_type='token', full_depth=False)")


# ---------------------------------------------------------------------- benchmark script
def test_benchmark_script_runs_small(cora, capsys):
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_graph_hierarchy.py"
    spec = importlib.util.spec_from_file_location("bench_graph_hierarchy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(num_nodes=3000, degree=10.0, branching=16, method="spectral", pe_dim=2, seed=0,
                              random_trials=2, cora_raw=CORA_RAW)
    random_row = bench.bench_random(args)
    assert random_row["stats"]["cluster2->root"]["max"] == 12
    assert random_row["stats"]["node->cluster1"] == {"parents": 12 * 16, "min": 15, "mean": 3000 / 192, "max": 16}
    cora_row = bench.bench_cora(args)
    assert cora_row["edges"] == 5278
    assert all(level["cut"] < level["random_cut"] for level in cora_row["levels"].values())
    assert "node->cluster1" in capsys.readouterr().out
