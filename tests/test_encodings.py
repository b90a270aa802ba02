import math

import networkx as nx
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE
from torch_geometric.utils import from_networkx

from hgattn.encodings import (FourierFeatures, KeyEmbedding, canonical_sign, family_laplacian_eigenvectors,
                              grid_sinusoidal, laplacian_eigenvectors, random_walk_encoding, set_encoding,
                              sinusoidal)


def normalized_laplacian(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    adj = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1.0
    degree = adj.sum(1)
    inv = torch.where(degree > 0, degree.clamp(min=1).rsqrt(), torch.zeros_like(degree))
    return torch.diag((degree > 0).double()) - inv[:, None] * adj * inv[None, :]


def graph(nx_graph: nx.Graph) -> tuple[torch.Tensor, int]:
    data = from_networkx(nx_graph)
    return data.edge_index, data.num_nodes


# ---------------------------------------------------------------------- sequences and grids
def test_sinusoidal_formula():
    pe = sinusoidal(torch.tensor([0, 3, 7]), 6)
    assert pe.shape == (3, 6)
    for row, p in enumerate([0, 3, 7]):
        for i in range(3):
            w = 10000.0 ** (-2 * i / 6)
            assert pe[row, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert pe[row, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-6)


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match="even"):
        sinusoidal(torch.arange(3), 5)
    with pytest.raises(ValueError, match="1-D"):
        sinusoidal(torch.zeros(2, 2), 4)


def test_grid_sinusoidal_halves():
    row, col = torch.tensor([0, 1, 2]), torch.tensor([5, 4, 3])
    pe = grid_sinusoidal(row, col, 8)
    assert torch.equal(pe[:, :4], sinusoidal(row, 4))
    assert torch.equal(pe[:, 4:], sinusoidal(col, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        grid_sinusoidal(row, col, 6)
    with pytest.raises(ValueError, match="shapes differ"):
        grid_sinusoidal(row, col[:2], 8)


def test_fourier_features_shapes_gradients_and_reset():
    torch.manual_seed(0)
    module = FourierFeatures(2, 16, num_features=8, hidden_dim=12, sigma=2.0)
    assert repr(module) == "FourierFeatures(2, 16, num_features=8, hidden_dim=12, sigma=2.0)"
    position = torch.rand(5, 2)
    out = module(position)
    assert out.shape == (5, 16)
    out.square().sum().backward()
    assert module.freq.weight.grad is not None and module.freq.weight.grad.abs().sum() > 0
    before = module.freq.weight.detach().clone()
    module.reset_parameters()
    assert not torch.equal(before, module.freq.weight)
    assert FourierFeatures(1, 4)(torch.arange(7)).shape == (7, 4)


def test_fourier_features_errors():
    with pytest.raises(ValueError, match="num_features"):
        FourierFeatures(1, 4, num_features=3)
    with pytest.raises(ValueError, match="sigma"):
        FourierFeatures(1, 4, sigma=0.0)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        FourierFeatures(2, 4)(torch.rand(3, 3))


# ---------------------------------------------------------------------- graphs
def test_laplacian_eigenvectors_are_eigenvectors_with_canonical_signs():
    edge_index, n = graph(nx.path_graph(7))
    pe = laplacian_eigenvectors(edge_index, n, 3).double()
    values, vectors = torch.linalg.eigh(normalized_laplacian(edge_index, n))
    for j in range(3):
        v = vectors[:, j + 1]
        assert torch.allclose(pe[:, j].abs(), v.abs(), atol=1e-5)
        assert pe[pe[:, j].abs().argmax(), j] > 0
    flipped = laplacian_eigenvectors(edge_index.flip(0), n, 3)
    assert torch.allclose(flipped, pe.float(), atol=1e-5)


def test_laplacian_eigenvectors_match_pyg_up_to_sign():
    edge_index, n = graph(nx.path_graph(9))
    ours = laplacian_eigenvectors(edge_index, n, 4)
    torch.manual_seed(0)
    pyg = AddLaplacianEigenvectorPE(4, attr_name="pe", is_undirected=True)(
        Data(edge_index=edge_index, num_nodes=n)).pe.float()
    sign = torch.sign((ours * pyg).sum(0))
    assert torch.allclose(ours, pyg * sign, atol=1e-5)


def test_laplacian_eigenvectors_small_graph_pads_with_zeros():
    edge_index, n = graph(nx.path_graph(3))
    pe = laplacian_eigenvectors(edge_index, n, 5)
    assert pe.shape == (3, 5)
    assert torch.equal(pe[:, 2:], torch.zeros(3, 3))
    assert (pe[:, :2].abs().sum(0) > 0).all()


def test_laplacian_eigenvectors_sparse_path():
    pytest.importorskip("scipy")
    edge_index, n = graph(nx.grid_2d_graph(41, 53))
    assert n > 2000
    pe = laplacian_eigenvectors(edge_index, n, 2).double()
    lap = normalized_laplacian(edge_index, n)
    for j in range(2):
        v = pe[:, j]
        value = v @ lap @ v
        assert torch.linalg.vector_norm(lap @ v - value * v) < 1e-4
        assert v.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert 0 < value < 0.05


def test_family_laplacian_eigenvectors_match_per_family():
    g = torch.Generator().manual_seed(1)
    family = torch.randint(0, 5, (40,), generator=g)
    family[0] = 5
    chains = [(family == f).nonzero().view(-1) for f in range(5)]
    path = torch.cat([torch.stack([c[:-1], c[1:]]) for c in chains], 1)
    edges = torch.cat([path, torch.randint(0, 40, (2, 60), generator=g)], 1)
    edges = torch.cat([edges, edges.flip(0)], 1)
    pe = family_laplacian_eigenvectors(family, edges, 3)
    assert pe.shape == (40, 3)
    assert torch.equal(pe[0], torch.zeros(3))
    for f in range(5):
        nodes = (family == f).nonzero().view(-1)
        local = torch.full((40,), -1)
        local[nodes] = torch.arange(nodes.numel())
        keep = (family[edges[0]] == f) & (family[edges[1]] == f) & (edges[0] != edges[1])
        expected = laplacian_eigenvectors(local[edges[:, keep]], nodes.numel(), 3)
        assert torch.allclose(pe[nodes], expected, atol=1e-4)


def test_family_laplacian_eigenvectors_weights_count_parallel_edges():
    family = torch.zeros(3, dtype=torch.long)
    doubled = torch.tensor([[0, 1, 0, 1, 1, 2], [1, 0, 1, 0, 2, 1]])
    weighted = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    a = family_laplacian_eigenvectors(family, doubled, 2)
    b = family_laplacian_eigenvectors(family, weighted, 2, torch.tensor([2.0, 2.0, 1.0, 1.0]))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, family_laplacian_eigenvectors(family, weighted, 2), atol=1e-3)


def test_graph_encoding_errors():
    edge_index = torch.tensor([[0, 1], [1, 5]])
    with pytest.raises(ValueError, match="outside"):
        laplacian_eigenvectors(edge_index, 3, 2)
    with pytest.raises(ValueError, match="k must be"):
        laplacian_eigenvectors(edge_index, 6, 0)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        family_laplacian_eigenvectors(torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long),
                                      2)


def test_canonical_sign():
    v = torch.tensor([[0.1, -0.5], [-0.9, 0.5 + 1e-9], [0.2, 0.0]], dtype=torch.float64)
    out = canonical_sign(v)
    assert torch.equal(out, torch.tensor([[-0.1, 0.5], [0.9, -0.5 - 1e-9], [-0.2, 0.0]], dtype=torch.float64))
    assert torch.equal(canonical_sign(torch.zeros(3, 1)), torch.zeros(3, 1))


def test_random_walk_encoding_matches_pyg_and_closed_form():
    edge_index, n = graph(nx.cycle_graph(6))
    pe = random_walk_encoding(edge_index, n, 4)
    expected = AddRandomWalkPE(4, attr_name="pe")(Data(edge_index=edge_index, num_nodes=n)).pe
    assert torch.equal(pe, expected)
    assert torch.allclose(pe, torch.tensor([0.0, 0.5, 0.0, 0.375]).expand(6, 4))


def test_set_encoding_is_empty():
    assert set_encoding(4).shape == (4, 0)
    with pytest.raises(ValueError):
        set_encoding(-1)


# ---------------------------------------------------------------------- key-value
def test_key_embedding():
    torch.manual_seed(0)
    module = KeyEmbedding(["image", "title", "body"], 8)
    assert repr(module) == "KeyEmbedding(['image', 'title', 'body'], 8)"
    by_name = module(["body", "image", "body"])
    assert by_name.shape == (3, 8)
    assert torch.equal(by_name, module(torch.tensor([2, 0, 2])))
    assert torch.equal(by_name[0], by_name[2]) and not torch.equal(by_name[0], by_name[1])
    by_name.sum().backward()
    grad = module.embedding.weight.grad
    assert grad[1].abs().sum() == 0 and grad[2].abs().sum() > 0


def test_key_embedding_errors():
    with pytest.raises(ValueError, match="distinct"):
        KeyEmbedding(["a", "a"], 4)
    with pytest.raises(ValueError, match="no keys"):
        KeyEmbedding([], 4)
    module = KeyEmbedding(["a", "b"], 4)
    with pytest.raises(ValueError, match="unknown key 'c'"):
        module(["a", "c"])
    with pytest.raises(ValueError, match="key ids"):
        module(torch.tensor([2]))


def test_isolated_nodes_get_zero_rows_and_do_not_change_the_others():
    edge_index, n = graph(nx.path_graph(6))
    alone = laplacian_eigenvectors(edge_index, n, 3)
    with_isolated = laplacian_eigenvectors(edge_index + 2, n + 3, 3)
    assert torch.equal(with_isolated[[0, 1, 8]], torch.zeros(3, 3))
    assert torch.allclose(with_isolated[2:8], alone, atol=1e-5)
    assert torch.equal(laplacian_eigenvectors(torch.zeros(2, 0, dtype=torch.long), 4, 2), torch.zeros(4, 2))


def test_sparse_path_agrees_with_dense(monkeypatch):
    pytest.importorskip("scipy")
    import hgattn.encodings as encodings

    edge_index, n = graph(nx.path_graph(30))
    edge_index = torch.cat([edge_index, torch.tensor([[3, 40], [40, 3]])], 1)
    dense = laplacian_eigenvectors(edge_index, n + 12, 3)
    monkeypatch.setattr(encodings, "DENSE_EIGEN_LIMIT", 10)
    sparse = laplacian_eigenvectors(edge_index, n + 12, 3)
    assert torch.allclose(dense, sparse, atol=1e-5)
