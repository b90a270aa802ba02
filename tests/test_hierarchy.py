"""`hgattn.Hierarchy`: derived structure, constructors and validation."""
from __future__ import annotations

import random

import networkx as nx
import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from hgattn.attention.plan import family_blocks
from hgattn import Hierarchy, hsa
from trees import UNARY_CHAIN, UNBALANCED, forest, random_forest


def brute_structure(parent: list[int]) -> dict:
    """Depth, height, leaf counts, roots and sibling pairs by plain Python walks."""
    nodes = range(len(parent))
    children = {v: [c for c in nodes if parent[c] == v] for v in nodes}

    def depth(v: int) -> int:
        return 0 if parent[v] < 0 else 1 + depth(parent[v])

    def height(v: int) -> int:
        return 0 if not children[v] else 1 + max(height(c) for c in children[v])

    def leaves(v: int) -> int:
        return 1 if not children[v] else sum(leaves(c) for c in children[v])

    def root(v: int) -> int:
        return v if parent[v] < 0 else root(parent[v])

    pairs = sorted((b, s) for b in nodes for s in nodes
                   if b != s and parent[b] >= 0 and parent[b] == parent[s])
    return {"depth": [depth(v) for v in nodes], "height": [height(v) for v in nodes],
            "leaf_count": [leaves(v) for v in nodes], "root": [root(v) for v in nodes], "pairs": pairs,
            "leaves": [v for v in nodes if not children[v]]}


@pytest.mark.parametrize("seed", range(15))
def test_derived_structure_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    parent = random_forest(rng, [rng.randint(1, 15) for _ in range(rng.randint(1, 3))], chain_prob=0.3)
    order = list(range(len(parent)))
    rng.shuffle(order)
    new_of = {old: new for new, old in enumerate(order)}
    parent = [-1 if parent[old] < 0 else new_of[parent[old]] for old in order]
    h = Hierarchy.from_parent(parent)
    expected = brute_structure(parent)
    assert h.depth.tolist() == expected["depth"]
    assert h.height.tolist() == expected["height"]
    assert h.leaf_count.tolist() == expected["leaf_count"]
    assert h.root.tolist() == expected["root"]
    assert h.leaf_node.tolist() == expected["leaves"]
    assert [tuple(p) for p in h.sibling_index.t().tolist()] == expected["pairs"]
    assert h.num_trees == sum(p < 0 for p in parent)
    roots = sorted(v for v in range(len(parent)) if parent[v] < 0)
    assert h.batch.tolist() == [roots.index(expected["root"][v]) for v in expected["leaves"]]
    for v in range(len(parent)):
        kids = h.child_index[h.child_ptr[v]:h.child_ptr[v + 1]].tolist()
        assert kids == [c for c in range(len(parent)) if parent[c] == v]
    ptr = h.sibling_ptr
    assert int(ptr[-1]) == len(expected["pairs"])


@pytest.mark.parametrize("seed", range(3))
def test_derived_structure_of_deep_trees_matches_brute_force(seed: int) -> None:
    """Long unary chains and deep families: depth, height and leaf counts come from pointer jumping and
    doubling, ``log2(depth)`` rounds, so deep trees are the ones to check them on."""
    rng = random.Random(100 + seed)
    parent = random_forest(rng, [rng.randint(20, 40), 1, rng.randint(2, 5)], chain_prob=0.85)
    h = Hierarchy.from_parent(parent)
    expected = brute_structure(parent)
    assert h.num_levels > 40
    assert h.depth.tolist() == expected["depth"]
    assert h.height.tolist() == expected["height"]
    assert h.leaf_count.tolist() == expected["leaf_count"]
    assert h.root.tolist() == expected["root"]


def test_from_nested_numbers_nodes_in_reading_order() -> None:
    h = Hierarchy.from_nested([["a", "b"], "c", [["d"], "e"]])
    assert h.parent.tolist() == [-1, 0, 1, 1, 0, 0, 5, 6, 5]
    assert h.leaf_node.tolist() == [2, 3, 4, 7, 8]
    f = Hierarchy.from_nested([["a", "b"], ["c"]], forest=True)
    assert f.parent.tolist() == [-1, 0, 0, -1, 3]
    assert f.num_trees == 2


def test_from_windows_is_fixed_bottom_up_windows() -> None:
    h = Hierarchy.from_windows(10, (2, 4))
    assert h.parent.tolist() == [10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15, 15, 15, 16, 17, 17, -1]
    assert Hierarchy.from_windows(1, 4).parent.tolist() == [-1]
    h = Hierarchy.from_windows(100, 3)
    assert h.num_trees == 1 and h.leaf_node.tolist() == list(range(100))
    assert int((h.child_ptr[1:] - h.child_ptr[:-1]).max()) == 3


def test_random_hierarchy_is_valid_and_unbalanced() -> None:
    h = Hierarchy.random(500, (1, 6), skip=0.2, generator=torch.Generator().manual_seed(0))
    assert h.num_leaves == 500 and h.num_trees == 1
    assert h.leaf_node.tolist() == list(range(500))
    leaf_depths = h.depth[h.leaf_node]
    assert leaf_depths.min() < leaf_depths.max()
    assert bool(((h.child_ptr[1:] - h.child_ptr[:-1]) == 1).any())


def test_from_networkx_directed_and_undirected() -> None:
    g = nx.DiGraph([("doc", "s1"), ("doc", "s2"), ("s1", "t1"), ("s1", "t2"), ("s2", "t3")])
    h = Hierarchy.from_networkx(g)
    names = list(g.nodes)
    assert [names[v] for v in h.leaf_node.tolist()] == ["t1", "t2", "t3"]
    assert names[int(h.parent[names.index("t3")])] == "s2"
    u = Hierarchy.from_networkx(g.to_undirected(), root="doc")
    assert u.parent.tolist() == h.parent.tolist()
    two = nx.Graph([(0, 1), (0, 2), (3, 4)])
    assert Hierarchy.from_networkx(two, root=[0, 3]).num_trees == 2


def test_from_edge_index_round_trips_parent() -> None:
    parent = torch.tensor(UNBALANCED)
    child = (parent >= 0).nonzero().view(-1)
    h = Hierarchy.from_edge_index(torch.stack([child, parent[child]]), num_nodes=len(parent))
    assert h.parent.tolist() == UNBALANCED


def document(num_sentences: int, tokens_per_sentence: int, num_patches: int, seed: int) -> HeteroData:
    """A document: tokens in sentences, patches in an image, sentences and image in one doc."""
    gen = torch.Generator().manual_seed(seed)
    data = HeteroData()
    num_tokens = num_sentences * tokens_per_sentence
    data["token"].x = torch.randn(num_tokens, 8, generator=gen)
    data["patch"].x = torch.randn(num_patches, 8, generator=gen)
    data["sentence"].num_nodes = num_sentences
    data["image"].num_nodes = 1
    data["doc"].num_nodes = 1
    data["token", "in", "sentence"].edge_index = torch.stack(
        [torch.arange(num_tokens), torch.arange(num_tokens) // tokens_per_sentence])
    data["patch", "in", "image"].edge_index = torch.stack(
        [torch.arange(num_patches), torch.zeros(num_patches, dtype=torch.long)])
    data["sentence", "in", "doc"].edge_index = torch.stack(
        [torch.arange(num_sentences), torch.zeros(num_sentences, dtype=torch.long)])
    data["image", "in", "doc"].edge_index = torch.tensor([[0], [0]])
    return data


def test_from_hetero_maps_types_to_nodes() -> None:
    data = document(3, 4, 5, seed=0)
    h = Hierarchy.from_hetero(data)
    assert h.num_leaves == 17 and h.num_trees == 1
    assert set(h.node_slices) == {"token", "patch", "sentence", "image", "doc"}
    x = h.leaf_features(data.x_dict)
    assert x.shape == (17, 8)
    parts = h.split_leaves(x)
    torch.testing.assert_close(parts["token"], data["token"].x)
    torch.testing.assert_close(parts["patch"], data["patch"].x)
    leaf_depth = h.depth[h.leaf_node]
    assert set(leaf_depth.tolist()) == {2}
    pos = h.node_features({"sentence": torch.ones(3, 2)})
    assert pos.shape == (h.num_nodes, 2) and pos.sum() == 6


def test_from_hetero_batch_equals_separate_examples() -> None:
    examples = [document(2, 3, 4, seed=1), document(4, 2, 1, seed=2), document(1, 5, 3, seed=3)]
    batch = next(iter(DataLoader(examples, batch_size=3)))
    h = Hierarchy.from_hetero(batch)
    assert h.num_trees == 3
    x = h.leaf_features(batch.x_dict).unsqueeze(1)
    out = h.split_leaves(hsa(x, x, x, h, include_self=True))
    for i, data in enumerate(examples):
        hi = Hierarchy.from_hetero(data)
        xi = hi.leaf_features(data.x_dict).unsqueeze(1)
        alone = hi.split_leaves(hsa(xi, xi, xi, hi, include_self=True))
        for nt in ("token", "patch"):
            rows = batch[nt].batch == i
            torch.testing.assert_close(out[nt][rows], alone[nt])


def test_to_device_keeps_structure() -> None:
    h = Hierarchy.from_parent(UNARY_CHAIN)
    same = h.to("cpu")
    assert same is h
    family_blocks(h)
    moved = h.to("meta")
    assert moved.parent.device.type == "meta" and family_blocks(moved)[0].cols.node.device.type == "meta"
    assert h.parent.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    parent = forest(UNBALANCED, UNARY_CHAIN)
    h = Hierarchy.from_parent(parent)
    q, k, v = (torch.randn(h.num_leaves, 2, 4, dtype=torch.float64) for _ in range(3))
    pos = torch.randn(h.num_nodes, 3, dtype=torch.float64)
    out = hsa(q, k, v, h, pos=pos, include_self=True)
    cuda = hsa(q.cuda(), k.cuda(), v.cuda(), h.to("cuda"), pos=pos.cuda(), include_self=True)
    torch.testing.assert_close(cuda.cpu(), out)
    built_on_gpu = Hierarchy.from_parent(torch.tensor(parent, device="cuda"))
    torch.testing.assert_close(hsa(q.cuda(), k.cuda(), v.cuda(), built_on_gpu, pos=pos.cuda(),
                                   include_self=True).cpu(), out)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("parent, message", [
    ([], "empty hierarchy"),
    ([-1, 0, 5], "node 2 has parent 5, out of range"),
    ([-1, -2], "node 1 has parent -2"),
    ([-1, 1], "cycle: node 1 is its own parent"),
    ([-1, 2, 3, 1, 0], "cycle in the hierarchy: node 1 -> node 2 -> node 3 -> node 1"),
    ([[-1, 0]], "1-D"),
    ([-1.0, 0.0], "integer"),
])
def test_from_parent_rejects_bad_input(parent, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_parent(torch.tensor(parent) if parent else torch.zeros(0, dtype=torch.long))


def test_from_edge_index_rejects_two_parents_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="node 2 has two parents: node 0, node 1"):
        Hierarchy.from_edge_index(torch.tensor([[1, 2, 2], [0, 0, 1]]))
    with pytest.raises(ValueError, match="out of range"):
        Hierarchy.from_edge_index(torch.tensor([[1, -3], [0, 0]]), num_nodes=3)
    with pytest.raises(ValueError, match="cycle"):
        Hierarchy.from_edge_index(torch.tensor([[1, 2, 3], [2, 3, 1]]), num_nodes=4)
    with pytest.raises(ValueError, match="shape"):
        Hierarchy.from_edge_index(torch.tensor([1, 2]))


def test_from_nested_and_networkx_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="empty list"):
        Hierarchy.from_nested([["a"], []])
    with pytest.raises(ValueError, match="empty input"):
        Hierarchy.from_nested([], forest=True)
    with pytest.raises(ValueError, match="two parents"):
        Hierarchy.from_networkx(nx.DiGraph([(0, 2), (1, 2)]))
    with pytest.raises(ValueError, match="cycle"):
        Hierarchy.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0)]))
    with pytest.raises(ValueError, match="cycle"):
        Hierarchy.from_networkx(nx.cycle_graph(4), root=0)
    with pytest.raises(ValueError, match="needs a root per tree"):
        Hierarchy.from_networkx(nx.Graph([(0, 1), (2, 3)]), root=0)
    with pytest.raises(ValueError, match="no nodes"):
        Hierarchy.from_networkx(nx.DiGraph())


def test_from_hetero_rejects_bad_input() -> None:
    data = document(2, 2, 2, seed=0)
    data["token", "in", "sentence"].edge_index = torch.tensor([[0, 1, 2, 3, 3], [0, 0, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"node 3 \('token' row 3\) has two parents"):
        Hierarchy.from_hetero(data)

    data = document(2, 2, 2, seed=0)
    data["sentence"].num_nodes = 3
    with pytest.raises(ValueError, match=r"\('sentence' row 2\) has no children.*not a leaf type"):
        Hierarchy.from_hetero(data)

    data = document(2, 2, 2, seed=0)
    data["caption"].x = torch.randn(2, 8)
    data["caption", "of", "image"].edge_index = torch.tensor([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="'caption' has no tree edge type to a parent type"):
        Hierarchy.from_hetero(data)

    data = document(2, 2, 2, seed=0)
    data["token", "in", "sentence"].edge_index = torch.tensor([[0, 1, 2], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"'token' row 3\) of leaf type 'token' has no parent"):
        Hierarchy.from_hetero(data)

    data = document(2, 2, 2, seed=0)
    data["token", "in", "sentence"].edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 7]])
    with pytest.raises(ValueError, match="points to 'sentence' row 7, but 'sentence' has 2 nodes"):
        Hierarchy.from_hetero(data)

    data = document(2, 2, 2, seed=0)
    data["sentence", "in", "token"].edge_index = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match="cycle|two parents|not a leaf type"):
        Hierarchy.from_hetero(data)

    with pytest.raises(ValueError, match="no tree edge types"):
        Hierarchy.from_hetero(document(1, 1, 1, seed=0), relation="part_of")


def test_leaf_features_reject_bad_input() -> None:
    data = document(2, 3, 2, seed=0)
    h = Hierarchy.from_hetero(data)
    with pytest.raises(ValueError, match="leaf node type 'patch' has no features"):
        h.leaf_features({"token": data["token"].x})
    with pytest.raises(ValueError, match="'sentence' holds features but its nodes are not leaves"):
        h.leaf_features({**data.x_dict, "sentence": torch.randn(2, 8)})
    with pytest.raises(ValueError, match="'token': 5 feature rows for 6 nodes"):
        h.leaf_features({**data.x_dict, "token": torch.randn(5, 8)})
    with pytest.raises(ValueError, match="unknown node type 'word'"):
        h.leaf_features({**data.x_dict, "word": torch.randn(5, 8)})
    with pytest.raises(ValueError, match="built with from_hetero"):
        Hierarchy.from_parent(UNBALANCED).leaf_features(data.x_dict)


def test_cat_puts_forests_side_by_side() -> None:
    """Hierarchy.cat shifts node ids; leaves keep their order and the result equals one hierarchy built from
    the concatenated parent arrays; bad input is named."""
    a = Hierarchy.from_parent([-1, 0, 0, 1, 1])
    b = Hierarchy.from_windows(5, 2)
    joined = Hierarchy.cat([a, b, a])
    offset = a.num_nodes
    expected = torch.cat([a.parent, torch.where(b.parent >= 0, b.parent + offset, -1),
                          torch.where(a.parent >= 0, a.parent + offset + b.num_nodes, -1)])
    assert torch.equal(joined.parent, expected)
    assert joined.num_trees == 2 * a.num_trees + b.num_trees
    assert joined.num_leaves == 2 * a.num_leaves + b.num_leaves
    assert torch.equal(Hierarchy.cat([b]).parent, b.parent)
    with pytest.raises(ValueError, match="at least one"):
        Hierarchy.cat([])
    with pytest.raises(TypeError, match="item 1 is a list"):
        Hierarchy.cat([a, [-1, 0]])
