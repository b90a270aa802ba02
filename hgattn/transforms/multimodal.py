"""Multimodal items as one tree whose top family is a key-value set (spec section 1)."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

__all__ = ["MultimodalHierarchy", "compose_key_value", "root_type_of"]


def root_type_of(tree: HeteroData, relation: str = "in") -> str:
    """The node type of a tree's single root: the one type that is never a child of a tree edge."""
    children = {src for src, rel, _ in tree.edge_types if rel == relation}
    roots = [t for t in tree.node_types if t not in children]
    if len(roots) != 1 or tree[roots[0]].num_nodes != 1:
        raise ValueError(f"expected one tree with one root node, got root types {roots} "
                         f"({[tree[t].num_nodes for t in roots]} nodes)")
    if not any(dst == roots[0] for _, rel, dst in tree.edge_types if rel == relation):
        raise ValueError(f"the root type {roots[0]!r} has no child: a field must be a tree, not a single leaf")
    return roots[0]


def compose_key_value(fields: Mapping[str, HeteroData], root_type: str = "item") -> HeteroData:
    r"""One tree over several field trees: ``root_type -> {key: field tree}``, a key-value family on top.

    Each field's root type is renamed to its key (e.g. an image tree's ``image``, a text tree's
    ``document`` -> ``name``); the other node types of equal name are shared across fields and concatenated in
    field order (e.g. the ``token`` leaves of a ``name`` and a ``keywords`` text). Each field root's ``pos``
    is the one-hot id of its key, ``[1, K]`` for ``K`` fields, the key-value position; the new root's
    ``pos`` is zeros ``[1, K]``.

    Args:
        fields: key -> tree (``HeteroData`` with tree edges ``(child, 'in', parent)`` and one root).
        root_type: node type of the new root.
    """
    if not fields:
        raise ValueError("compose_key_value: no field")
    renamed = {key: _rename_root(tree, key) for key, tree in fields.items()}
    for key in fields:
        if sum(key in tree.node_types for tree in renamed.values()) > 1:
            raise ValueError(f"compose_key_value: field key {key!r} is also a node type of another field")
    if root_type in fields or any(root_type in tree.node_types for tree in renamed.values()):
        raise ValueError(f"compose_key_value: root type {root_type!r} is already a field key or node type")
    out = HeteroData()
    offsets = _merge_nodes(out, renamed)
    _merge_edges(out, renamed, offsets)
    keys = list(fields)
    for index, key in enumerate(keys):
        out[key].pos = torch.nn.functional.one_hot(torch.tensor([index]), len(keys)).float()
        out[key, "in", root_type].edge_index = torch.zeros(2, 1, dtype=torch.long)
    out[root_type].num_nodes = 1
    out[root_type].pos = torch.zeros(1, len(keys))
    return out


def _rename_root(tree: HeteroData, key: str) -> HeteroData:
    root = root_type_of(tree)
    if root == key:
        return tree
    if key in tree.node_types:
        raise ValueError(f"compose_key_value: field key {key!r} is already a node type of its own tree")
    return copy.copy(tree).rename(root, key)


def _merge_nodes(out: HeteroData, trees: Mapping[str, HeteroData]) -> dict[tuple[str, str], int]:
    """Concatenate node stores type by type; returns each (field, type)'s row offset in the merged type."""
    offsets: dict[tuple[str, str], int] = {}
    parts: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    for key, tree in trees.items():
        for node_type in tree.node_types:
            store = tree[node_type]
            offsets[key, node_type] = counts.get(node_type, 0)
            counts[node_type] = offsets[key, node_type] + int(store.num_nodes)
            parts.setdefault(node_type, []).append({k: v for k, v in store.items() if k != "num_nodes"})
    for node_type, stores in parts.items():
        attributes = set(stores[0])
        if any(set(store) != attributes for store in stores):
            raise ValueError(f"compose_key_value: fields share node type {node_type!r} with different "
                             f"attributes {[sorted(store) for store in stores]}")
        out[node_type].num_nodes = counts[node_type]
        for name in sorted(attributes):
            out[node_type][name] = _concat([store[name] for store in stores], f"{node_type}.{name}")
    return offsets


def _merge_edges(out: HeteroData, trees: Mapping[str, HeteroData], offsets: dict[tuple[str, str], int]) -> None:
    parts: dict[tuple[str, str, str], list[dict[str, Tensor]]] = {}
    for key, tree in trees.items():
        for edge_type in tree.edge_types:
            src, _, dst = edge_type
            store = dict(tree[edge_type].items())
            shift = torch.tensor([[offsets[key, src]], [offsets[key, dst]]])
            store["edge_index"] = store["edge_index"] + shift
            parts.setdefault(edge_type, []).append(store)
    for edge_type, stores in parts.items():
        for name in stores[0]:
            out[edge_type][name] = _concat([store[name] for store in stores], f"{edge_type}.{name}")


def _concat(values: list[Any], name: str) -> Tensor:
    if not all(isinstance(v, Tensor) for v in values):
        raise ValueError(f"compose_key_value: {name} is not a tensor in every field")
    dim = 1 if name.endswith("edge_index") else 0
    if len({v.shape[:dim] + v.shape[dim + 1:] for v in values}) != 1:
        raise ValueError(f"compose_key_value: {name} has different shapes across fields "
                         f"{[list(v.shape) for v in values]}")
    return torch.cat(values, dim=dim)


class MultimodalHierarchy(BaseTransform):
    r"""Builds one key-value tree from several attributes of a ``Data`` item (e.g. an image and text fields).

    Each field ``key`` is built by ``builders[key].build(data[key])`` (any builder with a ``build`` method:
    :class:`~hgattn.transforms.ImageHierarchy`, :class:`~hgattn.transforms.TextHierarchy`, ...) and the trees are
    joined by :func:`compose_key_value` under a root of type ``root_type``. Every other attribute of the item
    (e.g. ``y``) is carried over.

    Example: ``MultimodalHierarchy({'image': ImageHierarchy(8), 'name': TextHierarchy(levels=())})`` turns
    ``Data(image=..., name='grinning face', y=...)`` into ``item -> {image -> regions -> patches,
    name -> tokens}``.
    """

    def __init__(self, builders: Mapping[str, Any], root_type: str = "item") -> None:
        if not builders:
            raise ValueError("MultimodalHierarchy: no field builder")
        missing = [key for key, builder in builders.items() if not callable(getattr(builder, "build", None))]
        if missing:
            raise ValueError(f"MultimodalHierarchy: the builders of {missing} have no build method")
        self.builders = dict(builders)
        self.root_type = root_type

    def forward(self, data: Data) -> HeteroData:
        """The key-value tree of one item."""
        missing = [key for key in self.builders if getattr(data, key, None) is None]
        if missing:
            raise ValueError(f"MultimodalHierarchy: the item has no field {missing}")
        out = compose_key_value({key: builder.build(data[key]) for key, builder in self.builders.items()},
                                self.root_type)
        for key, value in data.items():
            if key not in self.builders:
                setattr(out, key, value)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={builder!r}" for key, builder in self.builders.items())
        return f"{self.__class__.__name__}({fields}, root_type={self.root_type!r})"
