"""Tree classifiers: the paper"s HTE classifier with HSA, flat softmax attention or none (DeepSet)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import LayerNorm, Sequential
from torch_geometric.data import HeteroData
from torch_geometric.nn import MLP
from torch_geometric.nn.dense.linear import HeteroDictLinear, Linear
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import scatter

from ...batching import batch_hierarchy
from ...hierarchy import Hierarchy
from ..flat import FlatSoftmaxConv
from ..hte import HTEBlock

__all__ = ["DeepSetBlock", "flat_hte_block", "TreeClassifier", "tree_positions"]


def tree_positions(data: HeteroData, hierarchy: Hierarchy) -> dict[str, Tensor]:
    """The ``pos`` of every node type of ``data`` that has one (the layers' ``pos_dict``)."""
    return {nt: data[nt].pos for nt in hierarchy.node_slices if "pos" in data[nt]}


class DeepSetBlock(torch.nn.Module):
    r""":class:`~hgattn.nn.HTEBlock` with the attention off: per leaf, the layer's normalised query heads,
    then the same output projection, LayerNorm and feed-forward network,
    :math:`\mathbf{x}' = \mathbf{h} + \mathrm{FFN}(\mathbf{h})`, :math:`\mathbf{h} = \mathrm{LN}(\mathbf{W}_O
    \Vert_h \mathrm{LN}(\mathbf{W}^{(h)}_Q \mathbf{x}))`. Pooled over a set it is a DeepSet.

    With a dict ``in_channels`` (leaf type -> input size) each leaf type has its own query projection; a
    dict input with an int ``in_channels`` shares one projection across its types. A dict input gives a dict
    output.

    Shapes: input ``[N, in_channels]`` (or a dict of ``[N_t, in_channels[t]]``), output ``[N, channels]``
    (or a dict of ``[N_t, channels]``).
    """

    def __init__(self, in_channels: int | dict[str, int], channels: int, heads: int = 1,
                 act: str = "gelu") -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.in_channels, self.channels, self.heads = in_channels, channels, heads
        self.lin_q = (
            HeteroDictLinear(in_channels, channels, weight_initializer="glorot")
            if isinstance(in_channels, dict)
            else Linear(in_channels, channels, weight_initializer="glorot")
        )
        self.q_norm = LayerNorm(channels // heads)
        self.lin_out = Linear(channels, channels)
        self.norm = LayerNorm(channels)
        self.ffn = Sequential(
            Linear(channels, 2 * channels), activation_resolver(act), Linear(2 * channels, channels)
        )

    def reset_parameters(self) -> None:
        for module in (self.lin_q, self.q_norm, self.lin_out, self.norm):
            module.reset_parameters()
        reset(self.ffn)

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        if not isinstance(x, dict):
            return self._transform(self.lin_q(x))
        if isinstance(self.lin_q, HeteroDictLinear):
            q = self.lin_q(x)
        else:
            q = {nt: self.lin_q(value) for nt, value in x.items()}
        out = self._transform(torch.cat(list(q.values())))
        return dict(zip(q, out.split([part.size(0) for part in q.values()])))

    def _transform(self, q: Tensor) -> Tensor:
        """Head norm, output projection, norm and feed-forward of the projected queries ``[n, channels]``."""
        q = self.q_norm(q.view(q.size(0), self.heads, -1)).view(q.size(0), -1)
        h = self.norm(self.lin_out(q))
        return h + self.ffn(h)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.channels}, heads={self.heads})"


def flat_hte_block(in_channels: int, channels: int, heads: int = 1, pos_channels: int = 0) -> HTEBlock:
    """A homogeneous :class:`~hgattn.nn.HTEBlock` whose attention is a :class:`~hgattn.nn.FlatSoftmaxConv`
    (flat softmax over each tree's leaves; called with the hierarchy or the tree index of each leaf)."""
    return HTEBlock(in_channels, channels, heads=heads, pos_channels=pos_channels, attention=FlatSoftmaxConv)


class TreeClassifier(torch.nn.Module):
    r"""The paper's classifier (spec section 7): one :class:`~hgattn.nn.HTEBlock` over the leaves of each
    tree (or a :class:`DeepSetBlock` when ``attention=False``), mean pooling over all leaves of each tree, and
    an MLP with one hidden layer.

    The leaves may be of several node types (e.g. image patches and word tokens of one multimodal tree), each
    with its own input size and projections. A leaf type's features are its ``x``, or, with ``embedding`` (a
    frozen ``[vocab, F]`` table), the rows of its ``token_id``.

    Args:
        in_channels: leaf feature size ``F`` of the one leaf type ``leaf_type``, or a dict leaf type -> ``F``.
        channels: model width.
        num_classes: number of outputs.
        metadata: node and edge types of the trees.
        leaf_type: the node type of the leaves when ``in_channels`` is an int.
        heads: attention heads.
        pos_channels: size of the raw ``pos`` features (0: none).
        attention: HSA (``True``) or none (DeepSet).
        flat: the trees are one-level (FSA) with one leaf type: the block is homogeneous and its attention a
            :class:`~hgattn.nn.FlatSoftmaxConv` (the same layer and parameters, computed as dense
            softmax per tree from the tree index of each leaf, without building a hierarchy). One-level trees
            with several leaf types (:class:`~hgattn.transforms.FlattenHierarchy`) take ``flat=False``.
        embedding: optional frozen token embedding table.
        dropout: dropout in the MLP head.

    Shapes: a batch of ``B`` trees (``HeteroData`` batch) to logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int | dict[str, int],
        channels: int,
        num_classes: int,
        metadata: Any,
        leaf_type: str | None = None,
        heads: int = 1,
        pos_channels: int = 0,
        attention: bool = True,
        flat: bool = False,
        embedding: Tensor | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, dict) == (leaf_type is not None):
            raise ValueError("TreeClassifier: give either an int in_channels and its leaf_type, or a dict "
                             "in_channels (leaf type -> size) without leaf_type")
        self.leaf_channels = dict(in_channels) if isinstance(in_channels, dict) else {leaf_type: in_channels}
        if flat and not attention:
            raise ValueError("TreeClassifier: flat=True needs attention=True")
        if flat and len(self.leaf_channels) != 1:
            raise ValueError(f"TreeClassifier: flat=True needs one leaf type, got "
                             f"{list(self.leaf_channels)}; run flat=False on FlattenHierarchy trees instead")
        self.attention, self.flat, self.num_classes = attention, flat, num_classes
        self.embedding = (
            torch.nn.Embedding.from_pretrained(embedding, freeze=True) if embedding is not None else None
        )
        if not attention:
            self.block = DeepSetBlock(in_channels, channels, heads=heads)
        elif flat:
            self.block = flat_hte_block(*self.leaf_channels.values(), channels, heads=heads,
                                        pos_channels=pos_channels)
        else:
            self.block = HTEBlock(self.leaf_channels, channels, metadata, heads=heads,
                                  pos_channels=pos_channels)
        self.head = MLP([channels, channels, num_classes], dropout=dropout, norm=None)

    def reset_parameters(self) -> None:
        self.block.reset_parameters()
        self.head.reset_parameters()

    def leaf_inputs(self, data: HeteroData) -> dict[str, Tensor]:
        """Leaf type -> ``[N_t, F_t]`` leaf features of the batch."""
        inputs = {}
        for leaf_type in self.leaf_channels:
            store = data[leaf_type]
            if self.embedding is not None and "token_id" in store:
                inputs[leaf_type] = self.embedding(store.token_id)
            elif "x" in store:
                inputs[leaf_type] = store.x
            else:
                wanted = "x, or token_id with an embedding" if self.embedding is not None else "x"
                raise ValueError(f"TreeClassifier: leaf type {leaf_type!r} has no features ({wanted})")
        return inputs

    def forward(self, data: HeteroData) -> Tensor:
        x = self.leaf_inputs(data)
        graph = torch.cat([
            data[nt].batch if "batch" in data[nt] else value.new_zeros(value.size(0), dtype=torch.long)
            for nt, value in x.items()
        ])
        if self.flat:
            (leaf_type, value), = x.items()
            out = self.block(value, graph, data[leaf_type].pos if "pos" in data[leaf_type] else None)
        else:
            if self.attention:
                hierarchy = batch_hierarchy(data, graph.device)
                out = self.block(x, hierarchy, tree_positions(data, hierarchy) or None)
            else:
                out = self.block(x)
            out = torch.cat([out[nt] for nt in x])
        num_trees = data.num_graphs if hasattr(data, "num_graphs") else 1
        return self.head(scatter(out, graph, dim=0, dim_size=num_trees, reduce="mean"))

    def __repr__(self) -> str:
        kind = ("FSA" if self.flat else "HSA") if self.attention else "DeepSet"
        return f"{self.__class__.__name__}({kind}, {self.block}, num_classes={self.num_classes})"
