"""ImageHierarchy: image -> quadtree regions -> patches."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.transforms.image import ImageHierarchy


def test_quadtree_of_a_64px_image():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = ImageHierarchy(patch_size=8).build(image)
    assert data.node_types == ["patch", "region2", "region1", "image"]
    assert [data[t].num_nodes for t in data.node_types] == [64, 16, 4, 1]
    assert torch.equal(data["patch"].x[9], image[:, 8:16, 8:16].reshape(-1))
    parent = data["patch", "in", "region2"].edge_index[1]
    rows, cols = torch.arange(64) // 8, torch.arange(64) % 8
    assert torch.equal(parent, (rows // 2) * 4 + cols // 2)
    assert torch.equal(data["patch"].pos, torch.stack([rows % 2, cols % 2], 1).float())
    assert data["region1", "in", "image"].edge_index[1].tolist() == [0, 0, 0, 0]
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == 64 and set(hierarchy.family_size[hierarchy.parent >= 0].tolist()) == {4}
    assert hierarchy.leaf_count[hierarchy.node_slices["image"][0]] == 64


def test_ragged_grid_and_small_images():
    data = ImageHierarchy(patch_size=8).build(torch.rand(1, 56, 40))
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == 35 and hierarchy.num_trees == 1
    assert [data[t].num_nodes for t in data.node_types] == [35, 12, 4, 1]
    flat = ImageHierarchy(patch_size=4).build(torch.rand(2, 8, 8))
    assert flat.node_types == ["patch", "image"] and flat["patch"].pos.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_feature_fn_uint8_determinism_and_data_input():
    image = torch.randint(0, 256, (4, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    builder = ImageHierarchy(patch_size=4, feature_fn=lambda p: p.mean(dim=(2, 3)))
    data = builder(Data(image=image, y=torch.tensor([2])))
    assert data["patch"].x.shape == (16, 4) and data.y.tolist() == [2]
    assert list(data.to_dict()["_global_store"]) == ["y"]
    assert torch.allclose(data["patch"].x[0], image[:, :4, :4].float().mean(dim=(1, 2)) / 255)
    again = builder(Data(image=image, y=torch.tensor([2])))
    assert all(torch.equal(data[t].pos, again[t].pos) for t in data.node_types)
    assert repr(builder) == "ImageHierarchy(patch_size=4)"


def test_batching_into_a_forest():
    builder = ImageHierarchy(patch_size=8)
    items = [builder(Data(image=torch.rand(3, 32, 32), y=torch.tensor([i]))) for i in range(3)]
    batch = next(iter(DataLoader(items, batch_size=3)))
    hierarchy = Hierarchy.from_hetero(batch)
    assert hierarchy.num_trees == 3 and hierarchy.num_leaves == 48
    assert torch.equal(hierarchy.batch, batch["patch"].batch) and batch.y.tolist() == [0, 1, 2]


def test_errors():
    with pytest.raises(ValueError, match="not a positive multiple of patch_size=8"):
        ImageHierarchy(8).build(torch.rand(3, 60, 64))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        ImageHierarchy(8).build(torch.rand(64, 64))
    with pytest.raises(ValueError, match="no 'image' attribute"):
        ImageHierarchy(8)(Data(y=torch.tensor([0])))
    with pytest.raises(ValueError, match="feature_fn must return"):
        ImageHierarchy(8, feature_fn=lambda p: p.sum()).build(torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="patch_size"):
        ImageHierarchy(0)
