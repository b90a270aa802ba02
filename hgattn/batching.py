"""Batches of trees that carry their :class:`~hgattn.Hierarchy`, built once per batch in the loader's collate.

A model that reads ``batch.hierarchy`` (:func:`batch_hierarchy`) then never rebuilds the tree, nor the kernels'
plans, in its forward pass: with ``num_workers > 0`` they are built in the loader's worker processes, in
parallel with training. Batches of an ``InMemoryDataset`` of ``HeteroData`` are read straight from its
collated storage (:func:`storage_batch`): one gather per attribute, instead of separating every example and
collating them again.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
from torch_geometric.data import Batch, HeteroData, InMemoryDataset
from torch_geometric.data.storage import N_KEYS, EdgeStorage, NodeStorage

from .attention import build_plans
from .hierarchy import Hierarchy

__all__ = ["TreeCollater", "TreeLoader", "batch_hierarchy", "attach_hierarchy", "storage_batch",
           "reads_storage"]


def attach_hierarchy(data: HeteroData, plans: bool = True) -> HeteroData:
    """Store ``Hierarchy.from_hetero(data)`` as ``data.hierarchy``, with the plans of an eager
    :func:`~hgattn.hsa` call built (``build_plans(..., for_compile=False)``) when ``plans`` (``False`` for a
    model that reads the tree but calls no HSA, e.g. flat attention); returns ``data``."""
    hierarchy = Hierarchy.from_hetero(data)
    data.hierarchy = build_plans(hierarchy, for_compile=False) if plans else hierarchy
    return data


def batch_hierarchy(data: HeteroData, device: torch.device | str | None = None) -> Hierarchy:
    """The hierarchy of ``data``: its ``hierarchy`` attribute (:class:`TreeLoader`, :func:`attach_hierarchy`)
    when present, else built from its tree edges; on ``device`` when given (moved, plans included)."""
    hierarchy = data.hierarchy if "hierarchy" in data else Hierarchy.from_hetero(data)
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"data.hierarchy must be a hgattn.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy if device is None else hierarchy.to(device)


# ---------------------------------------------------------------- batches read from the storage
def reads_storage(dataset: Any) -> bool:
    """Whether :func:`storage_batch` can batch ``dataset``: an ``InMemoryDataset`` of ``HeteroData`` (PyG's
    increments, no ``transform``) whose attributes are plain tensors or one Python value per example, and
    whose node types each know their per-example sizes."""
    if not isinstance(dataset, InMemoryDataset) or dataset.transform is not None:
        return False
    base = dataset._data
    if not isinstance(base, HeteroData) or type(base).__inc__ is not HeteroData.__inc__:
        return False
    return all(_readable(store, attr) for store in base.stores for attr in store.keys()) and all(
        _count_key(store) is not None for store in base.node_stores)


def _readable(store: Any, attr: str) -> bool:
    value = store[attr]
    if attr == "num_nodes" or (isinstance(value, list) and not any(isinstance(v, Tensor) for v in value)):
        return True
    return type(value) is Tensor and "batch" not in attr


def _count_key(store: NodeStorage) -> str | None:
    """How a node type's per-example sizes are read: ``_num_nodes``, or the slices of a node-level tensor."""
    if hasattr(store, "_num_nodes"):
        return "_num_nodes"
    return next((key for key in store.keys() if key in N_KEYS and isinstance(store[key], Tensor)), None)


def storage_batch(dataset: InMemoryDataset, index: Sequence[int] | Tensor | None = None) -> Batch:
    """``Batch.from_data_list([dataset[i] for i in index])`` read from the collated storage of ``dataset``
    (see :func:`reads_storage`): the same values, edge offsets, ``batch``/``ptr`` vectors and slices, so
    ``to_data_list()`` gives the examples back. ``index`` defaults to every example of ``dataset``."""
    positions = torch.arange(len(dataset)) if index is None else torch.as_tensor(index, dtype=torch.long)
    return _StorageReader(dataset)(torch.as_tensor(list(dataset.indices()), dtype=torch.long)[positions])


class _StorageReader:
    """Batches of examples (ids into the collated storage of an ``InMemoryDataset``), per-example node
    counts read once."""

    def __init__(self, dataset: InMemoryDataset) -> None:
        if not reads_storage(dataset):
            raise ValueError(f"storage_batch needs an InMemoryDataset of HeteroData without a transform whose "
                             f"attributes are plain tensors (see reads_storage), got {type(dataset).__name__}")
        self.base, self.slices = dataset._data, dataset.slices
        self.counts = {store._key: _node_counts(store, self.slices.get(store._key, {}))
                       for store in self.base.node_stores}

    def __call__(self, examples: Tensor) -> Batch:
        if examples.numel() == 0:
            raise ValueError("storage_batch needs at least one example")
        counts = {key: sizes[examples] for key, sizes in self.counts.items()}
        out = Batch(_base_cls=type(self.base)).stores_as(self.base)
        slice_dict: dict[Any, Any] = {}
        inc_dict: dict[Any, Any] = {}
        for store, out_store in zip(self.base.stores, out.stores):
            key = store._key
            store_slices = (self.slices.get(key, {}) if key is not None
                            else {attr: self.slices[attr] for attr in store.keys()})
            slice_dict[key], inc_dict[key] = {}, {}
            for attr, attr_slices in store_slices.items():
                value, sizes, incs = _gather(self.base, store, attr, attr_slices, examples, counts)
                out_store[attr] = value
                slice_dict[key][attr], inc_dict[key][attr] = _cumsum(sizes), incs
            if isinstance(store, NodeStorage):
                sizes = counts[key]
                if "num_nodes" in store:
                    out_store._num_nodes = sizes.tolist()
                    out_store.num_nodes = int(sizes.sum())
                out_store.batch = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
                out_store.ptr = _cumsum(sizes)
        out._slice_dict = {**slice_dict.pop(None), **slice_dict}
        out._inc_dict = {**inc_dict.pop(None), **inc_dict}
        out._num_graphs = examples.numel()
        return out


def _node_counts(store: NodeStorage, store_slices: dict[str, Tensor]) -> Tensor:
    """The node count of every example of the storage."""
    key = _count_key(store)
    if key == "_num_nodes":
        return torch.as_tensor(store._num_nodes, dtype=torch.long)
    return store_slices[key].diff()


def _gather(base: HeteroData, store: Any, attr: str, attr_slices: Tensor, examples: Tensor,
            counts: dict[Any, Tensor]) -> tuple[Any, Tensor, Tensor | None]:
    """One attribute of the batch: its value, per-example sizes and PyG's increments."""
    starts = attr_slices[examples]
    sizes = attr_slices[examples + 1] - starts
    values = store[attr]
    if not isinstance(values, Tensor):
        return [values[int(start)] for start in starts], sizes, None
    dim = base.__cat_dim__(attr, values, store)
    value = values.index_select(dim or 0, _segments(starts, sizes))
    if not (isinstance(store, EdgeStorage) and "index" in attr):
        return value, sizes, torch.zeros(examples.numel(), dtype=torch.long)
    source, _, target = store._key
    incs = _cumsum(torch.stack([counts[source], counts[target]], dim=1))[:-1].unsqueeze(-1)
    value = value + torch.repeat_interleave(incs.squeeze(-1), sizes, dim=0).T.to(value.dtype)
    return value, sizes, incs


def _segments(starts: Tensor, sizes: Tensor) -> Tensor:
    """The rows ``starts[i] .. starts[i] + sizes[i] - 1`` of every ``i``, concatenated."""
    ends = sizes.cumsum(0)
    return torch.arange(int(ends[-1])) + torch.repeat_interleave(starts - (ends - sizes), sizes)


def _cumsum(sizes: Tensor) -> Tensor:
    """``[0, s0, s0 + s1, ...]`` along dim 0."""
    return torch.cat([sizes.new_zeros((1, *sizes.shape[1:])), sizes.cumsum(0)])


# ---------------------------------------------------------------- the loader
class TreeCollater:
    """``collate_fn``: a batch of ``HeteroData`` trees (a list, batched by PyG, or a part of an
    ``InMemoryDataset``, read by :func:`storage_batch`), with :func:`attach_hierarchy` (and its ``plans``) when
    ``hierarchy``."""

    def __init__(self, follow_batch: Sequence[str] | None = None, exclude_keys: Sequence[str] | None = None,
                 hierarchy: bool = True, plans: bool = True) -> None:
        self.follow_batch, self.exclude_keys = follow_batch, exclude_keys
        self.hierarchy, self.plans = hierarchy, plans
        self._reader: _StorageReader | None = None

    def __call__(self, data: list[HeteroData] | InMemoryDataset) -> Batch:
        if isinstance(data, InMemoryDataset):
            if self._reader is None or self._reader.base is not data._data:
                self._reader = _StorageReader(data)
            batch = self._reader(torch.as_tensor(list(data.indices()), dtype=torch.long))
        else:
            batch = Batch.from_data_list(data, self.follow_batch, self.exclude_keys)
        return attach_hierarchy(batch, self.plans) if self.hierarchy else batch


class TreeLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` over ``HeteroData`` trees (as PyG's) whose batches carry ``batch.hierarchy``.

    An ``InMemoryDataset`` that :func:`reads_storage` accepts is batched from its storage (the same batches
    as PyG's, in less time); any other dataset by PyG's ``Batch.from_data_list``.

    Args:
        dataset: the trees.
        batch_size, shuffle: as ``torch.utils.data.DataLoader``.
        follow_batch, exclude_keys: as PyG's ``DataLoader`` (they make it batch by PyG).
        hierarchy: attach each batch's hierarchy (``False``: the batches alone, e.g. for a model without
            attention).
        plans: build the HSA kernels' plans with the hierarchy (``False``: the tree alone, for a model that
            calls no HSA).
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``sampler``, ``generator``, ...).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 follow_batch: Sequence[str] | None = None, exclude_keys: Sequence[str] | None = None,
                 hierarchy: bool = True, plans: bool = True, **kwargs: Any) -> None:
        if "collate_fn" in kwargs:
            raise ValueError("TreeLoader builds its own collate_fn (TreeCollater); use torch's DataLoader to "
                             "pass another")
        collate = TreeCollater(follow_batch, exclude_keys, hierarchy, plans)
        if follow_batch or exclude_keys or not reads_storage(dataset) or "batch_sampler" in kwargs:
            super().__init__(dataset, batch_size, shuffle, collate_fn=collate, **kwargs)
            return
        sampler = kwargs.pop("sampler", None)
        if sampler is None:
            sampler = (RandomSampler(dataset, generator=kwargs.get("generator")) if shuffle
                       else SequentialSampler(dataset))
        elif shuffle:
            raise ValueError("TreeLoader: sampler option is mutually exclusive with shuffle")
        batches = BatchSampler(sampler, batch_size, kwargs.pop("drop_last", False))
        super().__init__(dataset, batch_size=None, sampler=batches, collate_fn=collate, **kwargs)
