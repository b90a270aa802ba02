"""Multimodal composition: one tree whose top family is a key-value set."""
import pytest
import torch
from torch_geometric.data import Data, HeteroData
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.transforms import ImageHierarchy
from hgattn.transforms.multimodal import MultimodalHierarchy, compose_key_value, root_type_of


def _chain(leaf: str, root: str, leaves: int, width: int = 2) -> HeteroData:
    tree = HeteroData()
    tree[leaf].x = torch.arange(leaves * width, dtype=torch.float).view(leaves, width)
    tree[leaf].pos = torch.zeros(leaves, 1)
    tree[root].num_nodes = 1
    tree[root].pos = torch.zeros(1, 1)
    tree[leaf, "in", root].edge_index = torch.stack([torch.arange(leaves), torch.zeros(leaves, dtype=torch.long)])
    return tree


def test_compose_shares_types_and_sets_key_positions():
    name, keywords = _chain("token", "document", 2), _chain("token", "document", 3)
    image = ImageHierarchy(patch_size=4).build(torch.rand(1, 8, 8))
    item = compose_key_value({"image": image, "name": name, "keywords": keywords})
    assert item.node_types == ["patch", "image", "token", "name", "keywords", "item"]
    assert item["token"].num_nodes == 5 and torch.equal(item["token"].x[2:], keywords["token"].x)
    assert item["token", "in", "keywords"].edge_index.tolist() == [[2, 3, 4], [0, 0, 0]]
    assert item["name"].pos.tolist() == [[0, 1, 0]] and item["keywords"].pos.tolist() == [[0, 0, 1]]
    assert item["item"].pos.tolist() == [[0, 0, 0]]
    hierarchy = Hierarchy.from_hetero(item)
    assert hierarchy.num_leaves == 4 + 5 and hierarchy.num_trees == 1
    root = hierarchy.node_slices["item"][0]
    assert hierarchy.child_index[hierarchy.child_ptr[root]:hierarchy.child_ptr[root + 1]].tolist() == [
        hierarchy.node_slices[k][0] for k in ("image", "name", "keywords")]
    assert "token" in name.node_types and "document" in name.node_types


def test_transform_batches_into_a_forest():
    builder = MultimodalHierarchy({"image": ImageHierarchy(patch_size=8), "mask": ImageHierarchy(patch_size=8)})
    items = [builder(Data(image=torch.rand(3, 32, 32), mask=torch.rand(3, 16, 16), y=torch.tensor([i])))
             for i in range(3)]
    assert items[0].node_types == ["patch", "region1", "image", "mask", "item"]
    batch = next(iter(DataLoader(items, batch_size=3)))
    hierarchy = Hierarchy.from_hetero(batch)
    assert hierarchy.num_trees == 3 and hierarchy.num_leaves == 3 * (16 + 4) and batch.y.tolist() == [0, 1, 2]


def test_errors():
    with pytest.raises(ValueError, match="no field"):
        compose_key_value({})
    with pytest.raises(ValueError, match="different shapes"):
        compose_key_value({"a": _chain("token", "doc", 2, width=2), "b": _chain("token", "doc", 2, width=3)})
    with pytest.raises(ValueError, match="also a node type"):
        compose_key_value({"token": _chain("leaf", "doc", 2), "b": _chain("token", "doc", 2)})
    with pytest.raises(ValueError, match="root type 'item'"):
        compose_key_value({"a": _chain("item", "doc", 2)})
    forest = _chain("token", "doc", 2)
    forest["doc"].num_nodes = 2
    with pytest.raises(ValueError, match="one root node"):
        root_type_of(forest)
    with pytest.raises(ValueError, match="no build method"):
        MultimodalHierarchy({"a": 3})
    with pytest.raises(ValueError, match=r"no field \['mask'\]"):
        MultimodalHierarchy({"mask": ImageHierarchy(8)})(Data(image=torch.rand(1, 8, 8)))
