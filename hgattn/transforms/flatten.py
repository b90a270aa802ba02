"""One-level trees: every leaf a child of its tree's root (the flat-attention baseline's input)."""
from __future__ import annotations

import copy

import torch
from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform

from ..hierarchy import Hierarchy

__all__ = ["FlattenHierarchy"]


class FlattenHierarchy(BaseTransform):
    r"""Turns a tree, or a forest, into its one-level form: each leaf becomes a child of its tree's root and
    the inner nodes below the roots are dropped.

    On a one-level tree HSA is plain softmax attention over the leaves (spec section 4), so a layer run on the
    flattened trees is the flat-attention (FSA) baseline of the same layer with the same parameters.

    Leaf and root stores keep all their attributes (``x``, ``pos``, ...), and so do graph-level attributes
    (``y``, ...) and edge types between kept node types. The tree edges become ``(leaf_type, relation,
    root_type)``. Every root must have the same node type, and no node of that type may be inner.

    Example: the emoji tree ``item -> {image -> regions -> patches, name -> tokens, keywords -> tokens}``
    becomes ``item -> {patches, tokens}``.
    """

    def __init__(self, relation: str = "in") -> None:
        self.relation = relation

    def forward(self, data: HeteroData) -> HeteroData:
        if not isinstance(data, HeteroData):
            raise ValueError(f"FlattenHierarchy: needs a HeteroData tree, got {type(data).__name__}")
        hierarchy = Hierarchy.from_hetero(data, relation=self.relation)
        root_type = self._root_type(hierarchy)
        root_start = hierarchy.node_slices[root_type][0]
        parent_types = {dst for _, rel, dst in data.edge_types if rel == self.relation}
        leaf_types = [nt for nt in data.node_types if nt not in parent_types]
        inner_types = parent_types - {root_type}
        out = copy.copy(data)
        for edge_type in data.edge_types:
            src, rel, dst = edge_type
            if rel == self.relation or {src, dst} & inner_types:
                del out[edge_type]
        for node_type in inner_types:
            del out[node_type]
        for leaf_type in leaf_types:
            start, stop = hierarchy.node_slices[leaf_type]
            root = hierarchy.root[start:stop] - root_start
            rows = torch.arange(stop - start)
            out[leaf_type, self.relation, root_type].edge_index = torch.stack([rows, root])
        return out

    @staticmethod
    def _root_type(hierarchy: Hierarchy) -> str:
        roots = (hierarchy.parent < 0).nonzero().view(-1)
        types = sorted({nt for nt, (start, stop) in hierarchy.node_slices.items()
                        if bool(((roots >= start) & (roots < stop)).any())})
        if len(types) != 1:
            raise ValueError(f"FlattenHierarchy: the roots must all have one node type, got {types}")
        start, stop = hierarchy.node_slices[types[0]]
        if bool((hierarchy.parent[start:stop] >= 0).any()):
            raise ValueError(f"FlattenHierarchy: the root type {types[0]!r} has nodes that are not roots")
        return types[0]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(relation={self.relation!r})"
