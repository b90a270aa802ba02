"""Batches of trees that carry their :class:`~hgattn.Hierarchy`, built once per batch in the loader's collate.

A model that reads ``batch.hierarchy`` (:func:`batch_hierarchy`) then never rebuilds the tree, nor the kernels'
plans, in its forward pass: with ``num_workers > 0`` they are built in the loader's worker processes, in
parallel with training.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch_geometric.data import Batch, HeteroData

from .attention import build_plans
from .hierarchy import Hierarchy

__all__ = ["TreeCollater", "TreeLoader", "batch_hierarchy", "attach_hierarchy"]


def attach_hierarchy(data: HeteroData) -> HeteroData:
    """Store ``Hierarchy.from_hetero(data)``, with the plans of an eager :func:`~hgattn.hsa` call built
    (``build_plans(..., for_compile=False)``), as ``data.hierarchy``; returns ``data``."""
    data.hierarchy = build_plans(Hierarchy.from_hetero(data), for_compile=False)
    return data


def batch_hierarchy(data: HeteroData, device: torch.device | str | None = None) -> Hierarchy:
    """The hierarchy of ``data``: its ``hierarchy`` attribute (:class:`TreeLoader`, :func:`attach_hierarchy`)
    when present, else built from its tree edges; on ``device`` when given (moved, plans included)."""
    hierarchy = data.hierarchy if "hierarchy" in data else Hierarchy.from_hetero(data)
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"data.hierarchy must be a hgattn.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy if device is None else hierarchy.to(device)


class TreeCollater:
    """``collate_fn``: PyG's batching of ``HeteroData`` trees, then :func:`attach_hierarchy` on the batch."""

    def __init__(self, follow_batch: Sequence[str] | None = None, exclude_keys: Sequence[str] | None = None) -> None:
        self.follow_batch, self.exclude_keys = follow_batch, exclude_keys

    def __call__(self, data_list: list[HeteroData]) -> Batch:
        return attach_hierarchy(Batch.from_data_list(data_list, self.follow_batch, self.exclude_keys))


class TreeLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` over ``HeteroData`` trees (as PyG's) whose batches carry ``batch.hierarchy``.

    Args:
        dataset: the trees.
        batch_size, shuffle: as ``torch.utils.data.DataLoader``.
        follow_batch, exclude_keys: as PyG's ``DataLoader``.
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``sampler``, ``generator``, ...).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 follow_batch: Sequence[str] | None = None, exclude_keys: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        if "collate_fn" in kwargs:
            raise ValueError("TreeLoader builds its own collate_fn (TreeCollater); use torch's DataLoader to "
                             "pass another")
        super().__init__(dataset, batch_size, shuffle, collate_fn=TreeCollater(follow_batch, exclude_keys),
                         **kwargs)
