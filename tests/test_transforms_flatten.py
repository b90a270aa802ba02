"""FlattenHierarchy: one-level trees (every leaf a child of its root), on which HSA is flat softmax."""
import pytest
import torch
from torch_geometric.data import Data, HeteroData
from torch_geometric.loader import DataLoader

import hgattn
from hgattn import Hierarchy
from hgattn.transforms import FlattenHierarchy, ImageHierarchy
from hgattn.transforms.multimodal import compose_key_value


def _token_tree(sizes: list[int]) -> HeteroData:
    """document -> sentences of the given sizes -> tokens, with features and positions."""
    tree = HeteroData()
    sentence = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    tree["token"].x = torch.randn(sentence.numel(), 3)
    tree["token"].pos = torch.randn(sentence.numel(), 2)
    tree["sentence"].num_nodes = len(sizes)
    tree["document"].num_nodes = 1
    tree["token", "in", "sentence"].edge_index = torch.stack([torch.arange(sentence.numel()), sentence])
    tree["sentence", "in", "document"].edge_index = torch.stack(
        [torch.arange(len(sizes)), torch.zeros(len(sizes), dtype=torch.long)])
    return tree


def _item(seed: int) -> HeteroData:
    torch.manual_seed(seed)
    item = compose_key_value({"image": ImageHierarchy(patch_size=4).build(torch.rand(1, 16, 16)),
                              "name": _token_tree([2, 3]), "keywords": _token_tree([1 + seed])})
    item.y = torch.tensor([seed])
    return item


def test_flattens_a_multimodal_item() -> None:
    item = _item(0)
    flat = FlattenHierarchy()(item)
    assert flat.node_types == ["patch", "token", "item"]
    assert flat.edge_types == [("patch", "in", "item"), ("token", "in", "item")]
    assert flat["patch", "in", "item"].edge_index.tolist() == [list(range(16)), [0] * 16]
    assert torch.equal(flat["token"].x, item["token"].x) and torch.equal(flat["patch"].pos, item["patch"].pos)
    assert torch.equal(flat.y, item.y) and "sentence" in item.node_types
    hierarchy = Hierarchy.from_hetero(flat)
    assert hierarchy.num_trees == 1 and int(hierarchy.depth.max()) == 1
    assert hierarchy.num_leaves == Hierarchy.from_hetero(item).num_leaves == 16 + 6


def test_flattened_batch_links_each_leaf_to_its_own_root() -> None:
    flat = next(iter(DataLoader([FlattenHierarchy()(_item(seed)) for seed in range(3)], batch_size=3)))
    for leaf_type in ("patch", "token"):
        assert torch.equal(flat[leaf_type, "in", "item"].edge_index[1], flat[leaf_type].batch)
    batch = next(iter(DataLoader([_item(seed) for seed in range(3)], batch_size=3)))
    batched_then_flattened = FlattenHierarchy()(batch)
    for leaf_type in ("patch", "token"):
        assert torch.equal(batched_then_flattened[leaf_type, "in", "item"].edge_index,
                           flat[leaf_type, "in", "item"].edge_index)


@pytest.mark.parametrize("include_self", [False, True])
def test_hsa_on_the_flattened_forest_is_softmax_over_each_trees_leaves(include_self: bool) -> None:
    batch = next(iter(DataLoader([_item(seed) for seed in range(3)], batch_size=3)))
    hierarchy = Hierarchy.from_hetero(FlattenHierarchy()(batch))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(hierarchy.num_leaves, 2, 4, generator=generator, dtype=torch.float64)
               for _ in range(3))
    out = hgattn.hsa(q, k, v, hierarchy, include_self=include_self)
    logits = torch.einsum("ihd,jhd->hij", q, k) / 2
    allowed = hierarchy.batch[:, None] == hierarchy.batch[None, :]
    if not include_self:
        allowed &= ~torch.eye(hierarchy.num_leaves, dtype=torch.bool)
    weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    torch.testing.assert_close(out, torch.einsum("hij,jhd->ihd", weights, v))


def test_errors() -> None:
    single = HeteroData()
    single["leaf"].num_nodes = 1
    single["root"].num_nodes = 1
    single["leaf", "in", "root"].edge_index = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="'leaf' row 0.* has no parent"):
        FlattenHierarchy()(single)
    mixed = _token_tree([2])
    mixed["other"].num_nodes = 1
    mixed["token"].x = torch.randn(3, 3)
    mixed["token", "in", "other"].edge_index = torch.tensor([[2], [0]])
    mixed["token", "in", "sentence"].edge_index = torch.tensor([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"one node type, got \['document', 'other'\]"):
        FlattenHierarchy()(mixed)
    nested = HeteroData()
    nested["leaf"].num_nodes, nested["doc"].num_nodes = 2, 2
    nested["leaf", "in", "doc"].edge_index = torch.tensor([[0, 1], [0, 0]])
    nested["doc", "in", "doc"].edge_index = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match="root type 'doc' has nodes that are not roots"):
        FlattenHierarchy()(nested)
    with pytest.raises(ValueError, match="no tree edge types"):
        FlattenHierarchy(relation="under")(_token_tree([2]))
    with pytest.raises(ValueError, match="needs a HeteroData tree, got Data"):
        FlattenHierarchy()(Data(x=torch.randn(2, 3)))
    assert repr(FlattenHierarchy()) == "FlattenHierarchy(relation='in')"
