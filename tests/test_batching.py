"""Trees batched with their Hierarchy built in the collate (TreeLoader): same results as PyG's DataLoader,
plans built once per batch, the hierarchy picklable for worker processes."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.batching import TreeLoader, attach_hierarchy, batch_hierarchy
from hgattn.nn import TreeClassifier


def tree(seed: int) -> HeteroData:
    """token -> sentence -> document with random sizes and features."""
    g = torch.Generator().manual_seed(seed)
    sentences = int(torch.randint(1, 4, (), generator=g))
    per_sentence = torch.randint(1, 5, (sentences,), generator=g)
    tokens = int(per_sentence.sum())
    data = HeteroData()
    data["token"].x = torch.randn(tokens, 8, generator=g)
    data["token"].pos = torch.randn(tokens, 4, generator=g)
    data["sentence"].num_nodes = sentences
    data["document"].num_nodes = 1
    data["token", "in", "sentence"].edge_index = torch.stack([
        torch.arange(tokens), torch.repeat_interleave(torch.arange(sentences), per_sentence)])
    data["sentence", "in", "document"].edge_index = torch.stack([
        torch.arange(sentences), torch.zeros(sentences, dtype=torch.long)])
    data.y = torch.tensor([seed % 3])
    return data


def test_tree_loader_batches_carry_their_hierarchy_and_give_the_same_logits():
    trees = [tree(seed) for seed in range(10)]
    torch.manual_seed(0)
    model = TreeClassifier(8, 16, 3, trees[0].metadata(), "token", heads=2, pos_channels=4).eval()
    for plain, carried in zip(DataLoader(trees, batch_size=4), TreeLoader(trees, batch_size=4)):
        assert "hierarchy" in carried and "hierarchy" not in plain
        reference = Hierarchy.from_hetero(plain)
        assert torch.equal(carried.hierarchy.parent, reference.parent)
        assert carried.hierarchy._plans.keys() & {"native", "dense"}   # built in the collate
        assert batch_hierarchy(carried) is carried.hierarchy
        torch.testing.assert_close(model(carried), model(plain), rtol=0, atol=0)


def test_the_hierarchy_travels_to_worker_processes_and_back():
    trees = [tree(seed) for seed in range(6)]
    batch = next(iter(TreeLoader(trees, batch_size=6, num_workers=1)))
    assert batch.hierarchy.num_trees == 6
    copy = pickle.loads(pickle.dumps(attach_hierarchy(trees[0])))
    assert torch.equal(copy.hierarchy.parent, trees[0].hierarchy.parent)


def test_bad_hierarchy_attribute_and_collate_fn_are_refused():
    data = tree(0)
    data.hierarchy = "not a tree"
    with pytest.raises(TypeError, match="must be a hgattn.Hierarchy"):
        batch_hierarchy(data)
    with pytest.raises(ValueError, match="builds its own collate_fn"):
        TreeLoader([tree(0)], collate_fn=list)
