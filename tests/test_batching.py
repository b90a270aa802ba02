"""Trees batched with their Hierarchy built in the collate (TreeLoader): same results as PyG's DataLoader,
plans built once per batch, the hierarchy picklable for worker processes; batches of an InMemoryDataset read
from its storage equal to PyG's."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DistributedSampler
from torch_geometric.data import Batch, HeteroData, InMemoryDataset
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.batching import TreeLoader, attach_hierarchy, batch_hierarchy, reads_storage, storage_batch
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


def test_plans_false_attaches_the_tree_without_the_kernels_plans():
    trees = [tree(seed) for seed in range(4)]
    batch = next(iter(TreeLoader(trees, batch_size=4, plans=False)))
    assert batch.hierarchy.num_trees == 4 and not batch.hierarchy._plans
    assert torch.equal(batch.hierarchy.parent, Hierarchy.from_hetero(batch).parent)


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


class Trees(InMemoryDataset):
    """An in-memory dataset of :func:`tree` examples with a string attribute, a node type sized by its
    ``num_nodes`` and one sized by its features alone."""

    def __init__(self, count: int, transform=None) -> None:
        super().__init__(None, transform)
        examples = []
        for seed in range(count):
            data = tree(seed)
            data.name = f"tree {seed}"
            data["sentence"].x = torch.full((data["sentence"].num_nodes, 2), float(seed))
            del data["sentence"].num_nodes
            data["document"].pos = torch.full((1, 3), float(seed))
            examples.append(data)
        self._data, self.slices = self.collate(examples)


def assert_same_batch(ours: Batch, pyg: Batch) -> None:
    assert ours.node_types == pyg.node_types and ours.edge_types == pyg.edge_types
    for mine, theirs in zip(ours.stores, pyg.stores):
        assert set(mine.keys()) == set(theirs.keys()), mine._key
        for key in mine.keys():
            if isinstance(mine[key], torch.Tensor):
                assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
            else:
                assert mine[key] == theirs[key], key
    assert ours.num_graphs == pyg.num_graphs
    assert str(ours._slice_dict) == str(pyg._slice_dict) and str(ours._inc_dict) == str(pyg._inc_dict)


def test_a_batch_read_from_the_storage_is_pygs_batch_and_gives_the_examples_back():
    dataset = Trees(9)
    assert reads_storage(dataset) and reads_storage(dataset[[1, 4]])
    for index in ([3], [7, 0, 4, 4, 2], list(range(9))):
        batch = storage_batch(dataset, index)
        assert_same_batch(batch, Batch.from_data_list([dataset[i] for i in index]))
        for mine, example in zip(batch.to_data_list(), (dataset[i] for i in index)):
            assert torch.equal(mine["token", "in", "sentence"].edge_index,
                               example["token", "in", "sentence"].edge_index)
    subset = dataset[torch.tensor([8, 2, 5])]
    assert_same_batch(storage_batch(subset, [2, 0]), Batch.from_data_list([dataset[5], dataset[8]]))


def test_tree_loader_over_an_in_memory_dataset_gives_pygs_batches_in_pygs_order():
    dataset = Trees(11)
    for shuffle in (False, True):
        pyg = DataLoader(dataset, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
        ours = TreeLoader(dataset, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
        assert len(ours) == len(pyg) == 3
        for mine, theirs in zip(ours, pyg, strict=True):
            assert torch.equal(mine.hierarchy.parent, Hierarchy.from_hetero(theirs).parent)
            del mine.hierarchy
            assert_same_batch(mine, theirs)
    ranks = [TreeLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, 2, rank, shuffle=False),
                        hierarchy=False) for rank in range(2)]
    names = sorted(name for loader in ranks for batch in loader for name in batch.name)
    assert names == sorted([f"tree {i}" for i in range(11)] + ["tree 0"])   # the sampler pads to 12
    assert [batch.num_graphs for batch in TreeLoader(dataset, batch_size=4, drop_last=True)] == [4, 4]


def test_datasets_the_storage_cannot_serve_are_batched_by_pyg():
    shifted = Trees(5, transform=lambda data: data)
    assert not reads_storage(shifted) and not reads_storage([tree(0)])
    batch = next(iter(TreeLoader(shifted, batch_size=5, hierarchy=False)))
    assert_same_batch(batch, Batch.from_data_list([shifted[i] for i in range(5)]))
    with pytest.raises(ValueError, match="InMemoryDataset of HeteroData without a transform"):
        storage_batch(shifted)
    with pytest.raises(ValueError, match="at least one example"):
        storage_batch(Trees(2), [])
