"""MoleculeHierarchy: molecule -> junction-tree cliques -> atoms."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy

pytest.importorskip("rdkit")
pytest.importorskip("ogb")

from hgattn.transforms.molecule import MoleculeHierarchy, junction_cliques, smiles_to_graph  # noqa: E402

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def _bonds(pairs):
    edges = torch.tensor(pairs).t()
    return torch.cat([edges, edges.flip(0)], 1)


def test_junction_cliques():
    naphthalene = smiles_to_graph("c1ccc2ccccc2c1")
    assert junction_cliques(naphthalene.edge_index, 10) == [[0, 1, 2, 3, 8, 9], [3, 4, 5, 6, 7, 8]]
    assert junction_cliques(_bonds([(0, 1), (1, 2)]), 4) == [[0, 1], [1, 2], [3]]
    norbornane = smiles_to_graph("C1CC2CCC1C2")
    assert junction_cliques(norbornane.edge_index, 7) == [list(range(7))]


def test_aspirin_tree_and_assignment_rule():
    data = MoleculeHierarchy().from_smiles(ASPIRIN)
    graph = smiles_to_graph(ASPIRIN)
    assert torch.equal(data["atom"].x, graph.x) and data.smiles == ASPIRIN
    assert torch.equal(data["atom", "bond", "atom"].edge_attr, graph.edge_attr)
    # ring atoms 4..9 join the ring; chain atoms join the first bond clique holding them
    assert data["atom", "in", "clique"].edge_index[1].tolist() == [1, 1, 2, 3, 0, 0, 0, 0, 0, 0, 4, 5, 6]
    assert data["clique"].num_nodes == 7 and data["atom"].pos.shape == (13, 4)
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == 13 and hierarchy.num_trees == 1
    assert hierarchy.node_slices == {"atom": (0, 13), "clique": (13, 20), "molecule": (20, 21)}


def test_ring_positions_are_laplacian_eigenvectors():
    data = MoleculeHierarchy(pos_dim=2).from_smiles("c1ccccc1")
    pos = data["atom"].pos
    assert data["clique"].num_nodes == 1
    assert torch.allclose(pos.norm(dim=1), torch.full((6,), 1 / 3 ** 0.5), atol=1e-5)


def test_ogb_style_data_keeps_order_and_labels():
    graph = smiles_to_graph("OCC1CC1")
    data = MoleculeHierarchy()(Data(x=graph.x, edge_index=graph.edge_index, edge_attr=graph.edge_attr,
                                    y=torch.tensor([[1]]), num_nodes=graph.num_nodes))
    assert data.y.tolist() == [[1]] and data["atom"].num_nodes == 5
    assert data["atom", "in", "clique"].edge_index[1].tolist() == [1, 1, 0, 0, 0]
    single = MoleculeHierarchy()(Data(x=torch.zeros(1, 9, dtype=torch.long),
                                      edge_index=torch.zeros(2, 0, dtype=torch.long)))
    assert Hierarchy.from_hetero(single).num_leaves == 1


def test_batching_and_determinism():
    builder = MoleculeHierarchy()
    items = [builder.from_smiles(s) for s in (ASPIRIN, "CCO", "c1ccc2ccccc2c1", "[Na+].[Cl-]")]
    again = builder.from_smiles(ASPIRIN)
    assert all(torch.equal(items[0][t].pos, again[t].pos) for t in ("atom", "clique", "molecule"))
    batch = next(iter(DataLoader(items, batch_size=4)))
    hierarchy = Hierarchy.from_hetero(batch)
    assert hierarchy.num_trees == 4 and hierarchy.num_leaves == 13 + 3 + 10 + 2
    assert torch.equal(hierarchy.batch, batch["atom"].batch)


def test_build_many_equals_one_by_one():
    builder = MoleculeHierarchy()
    graphs = [smiles_to_graph(s) for s in (ASPIRIN, "C", "c1ccc2ccccc2c1", "C12C3C4C1C5C2C3C45", "CCO")]
    together = builder.build_many(graphs)
    for graph, tree in zip(graphs, together):
        alone = builder(graph)
        for node_type in ("atom", "clique", "molecule"):
            assert torch.allclose(tree[node_type].pos, alone[node_type].pos, atol=1e-6)
        assert torch.equal(tree["atom", "in", "clique"].edge_index, alone["atom", "in", "clique"].edge_index)


def test_errors():
    builder = MoleculeHierarchy()
    with pytest.raises(ValueError, match="rdkit cannot parse the SMILES 'C1CC\\('"):
        builder.from_smiles("C1CC(")
    with pytest.raises(ValueError, match="cannot parse"):
        builder.from_smiles("")
    with pytest.raises(ValueError, match="no atoms"):
        builder(Data(x=torch.zeros(0, 9), edge_index=torch.zeros(2, 0, dtype=torch.long)))
    with pytest.raises(ValueError, match="past the 2 atoms"):
        builder(Data(x=torch.zeros(2, 9), edge_index=torch.tensor([[0], [5]])))
    with pytest.raises(ValueError, match="pos_dim"):
        MoleculeHierarchy(pos_dim=0)
