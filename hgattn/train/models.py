"""Models of the training tasks; each takes a PyG batch and returns logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import LayerNorm, Sequential
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv, GINEConv, GPSConv, MLP, global_mean_pool
from torch_geometric.nn.dense.linear import HeteroDictLinear, Linear
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import scatter

from ..hierarchy import Hierarchy
from ..nn import GraphHSATransformer, HTEBlock
from .flat import FlatSoftmaxConv

__all__ = [
    "DeepSetBlock",
    "flat_hte_block",
    "TreeClassifier",
    "NodeGCN",
    "NodeGPS",
    "NodeSGFormer",
    "MoleculeGNN",
    "MoleculeHSATransformer",
    "tree_positions",
]


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
    """A homogeneous :class:`~hgattn.nn.HTEBlock` whose attention is a
    :class:`~hgattn.train.flat.FlatSoftmaxConv` with the same arguments (called with the tree index of each
    leaf instead of a hierarchy)."""
    block = HTEBlock(in_channels, channels, heads=heads, pos_channels=pos_channels)
    attn = block.attn
    block.attn = FlatSoftmaxConv(
        attn.in_channels,
        attn.out_channels,
        heads=attn.heads,
        concat=attn.concat,
        qk_norm=attn.qk_norm,
        include_self=attn.include_self,
        pos_channels=attn.pos_channels,
        root_weight=attn.root_weight,
        query_residual=attn.query_residual,
    )
    return block


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
            :class:`~hgattn.train.flat.FlatSoftmaxConv` (the same layer and parameters, computed as dense
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
                hierarchy = Hierarchy.from_hetero(data).to(graph.device)
                out = self.block(x, hierarchy, tree_positions(data, hierarchy) or None)
            else:
                out = self.block(x)
            out = torch.cat([out[nt] for nt in x])
        num_trees = data.num_graphs if hasattr(data, "num_graphs") else 1
        return self.head(scatter(out, graph, dim=0, dim_size=num_trees, reduce="mean"))

    def __repr__(self) -> str:
        kind = ("FSA" if self.flat else "HSA") if self.attention else "DeepSet"
        return f"{self.__class__.__name__}({kind}, {self.block}, num_classes={self.num_classes})"


class NodeGCN(torch.nn.Module):
    """A GCN node classifier over the ``('node', 'to', 'node')`` graph of a hierarchical graph.

    Shapes: ``HeteroData`` with ``node.x`` ``[N, F]`` to logits ``[N, num_classes]``.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, num_layers: int = 2, dropout: float = 0.5
    ) -> None:
        super().__init__()
        from torch_geometric.nn.models import GCN

        self.gcn = GCN(in_channels, channels, num_layers, num_classes, dropout=dropout)

    def reset_parameters(self) -> None:
        self.gcn.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        return self.gcn(data["node"].x, data["node", "to", "node"].edge_index)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.gcn})"


class NodeSGFormer(torch.nn.Module):
    """PyG's :class:`~torch_geometric.nn.models.SGFormer` (simplified linear global attention + GCN) over the
    ``('node', 'to', 'node')`` graph: the linear-attention baseline of the node tasks.

    Shapes: ``HeteroData`` with ``node.x`` ``[N, F]`` to logits ``[N, num_classes]``.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_layers: int = 2, heads: int = 1,
                 dropout: float = 0.5) -> None:
        super().__init__()
        from torch_geometric.nn.models import SGFormer

        self.model = SGFormer(in_channels, channels, num_classes, trans_num_layers=num_layers,
                              trans_num_heads=heads, trans_dropout=dropout, gnn_num_layers=num_layers,
                              gnn_dropout=dropout)

    def reset_parameters(self) -> None:
        self.model.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        x = data["node"].x
        return self.model(x, data["node", "to", "node"].edge_index, x.new_zeros(x.size(0), dtype=torch.long))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.model})"


class NodeGPS(torch.nn.Module):
    r"""GCN + global attention for node classification: :class:`~hgattn.nn.GraphHSATransformer` (HSA over the
    graph's cluster tree, ``attention='hsa'``) or PyG :class:`~torch_geometric.nn.conv.GPSConv` layers with
    dense multi-head attention over all nodes (``attention='dense'``), then a linear classifier.

    Shapes: ``HeteroData`` (a :class:`~hgattn.transforms.GraphHierarchy` tree) to logits ``[N, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        attention: str,
        num_layers: int = 2,
        heads: int = 1,
        pos_channels: int = 0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if attention not in ("hsa", "dense"):
            raise ValueError(f"NodeGPS: attention must be 'hsa' or 'dense', got {attention!r}")
        self.attention, self.dropout = attention, dropout
        if attention == "hsa":
            self.model = GraphHSATransformer(
                in_channels,
                channels,
                num_classes,
                num_layers=num_layers,
                heads=heads,
                task="node",
                conv="gcn",
                dropout=dropout,
                attn_kwargs={"pos_channels": pos_channels},
            )
        else:
            self.encoder = Linear(in_channels, channels)
            self.layers = torch.nn.ModuleList(
                [
                    GPSConv(
                        channels,
                        GCNConv(channels, channels),
                        heads=heads,
                        dropout=dropout,
                        attn_type="multihead",
                    )
                    for _ in range(num_layers)
                ]
            )
            self.head = MLP([channels, channels, num_classes], dropout=dropout, norm=None)

    def reset_parameters(self) -> None:
        for module in self.children():
            reset(module)

    def forward(self, data: HeteroData) -> Tensor:
        x, edge_index = data["node"].x, data["node", "to", "node"].edge_index
        if self.attention == "hsa":
            hierarchy = Hierarchy.from_hetero(data).to(x.device)
            pos = (
                hierarchy.node_features(tree_positions(data, hierarchy))
                if self.model.layers[0].attn.pos_channels
                else None
            )
            return self.model(x, edge_index, hierarchy, pos=pos)
        h = self.encoder(x)
        for layer in self.layers:
            h = layer(h, edge_index)
        return self.head(h)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(attention={self.attention})"


class MoleculeGNN(torch.nn.Module):
    """OGB-style molecule baseline: ``AtomEncoder``, ``num_layers`` GCN or GINE (with ``BondEncoder`` edge
    features) layers with batch norm and ReLU, mean pooling, a linear head.

    Shapes: a batch of ``B`` molecule trees to logits ``[B, num_tasks]``.
    """

    def __init__(
        self, channels: int, num_tasks: int, conv: str = "gin", num_layers: int = 5, dropout: float = 0.5
    ) -> None:
        super().__init__()
        from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder

        if conv not in ("gcn", "gin"):
            raise ValueError(f"MoleculeGNN: conv must be 'gcn' or 'gin', got {conv!r}")
        self.conv_name, self.dropout = conv, dropout
        self.atom_encoder = AtomEncoder(channels)
        self.bond_encoders = (
            torch.nn.ModuleList([BondEncoder(channels) for _ in range(num_layers)]) if conv == "gin" else None
        )
        self.convs = torch.nn.ModuleList(
            [
                GINEConv(MLP([channels, 2 * channels, channels], norm="batch_norm"))
                if conv == "gin"
                else GCNConv(channels, channels)
                for _ in range(num_layers)
            ]
        )
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm1d(channels) for _ in range(num_layers)])
        self.head = Linear(channels, num_tasks)

    def reset_parameters(self) -> None:
        for module in self.children():
            reset(module)

    def forward(self, data: HeteroData) -> Tensor:
        atoms, bonds = data["atom"], data["atom", "bond", "atom"]
        h = self.atom_encoder(atoms.x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = (
                conv(h, bonds.edge_index, self.bond_encoders[i](bonds.edge_attr))
                if self.bond_encoders
                else conv(h, bonds.edge_index)
            )
            out = norm(out)
            if i < len(self.convs) - 1:
                out = out.relu()
            h = torch.nn.functional.dropout(out, p=self.dropout, training=self.training)
        return self.head(global_mean_pool(h, atoms.batch))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.conv_name}, layers={len(self.convs)})"


class MoleculeHSATransformer(torch.nn.Module):
    """``AtomEncoder`` followed by :class:`~hgattn.nn.GraphHSATransformer` (GIN local layers, HSA over the
    molecule -> junction-tree cliques -> atoms tree of :class:`~hgattn.transforms.MoleculeHierarchy`, with its
    Laplacian positions), mean pooled per molecule.

    Shapes: a batch of ``B`` molecule trees to logits ``[B, num_tasks]``.
    """

    def __init__(
        self,
        channels: int,
        num_tasks: int,
        num_layers: int = 3,
        heads: int = 4,
        pos_channels: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        from ogb.graphproppred.mol_encoder import AtomEncoder

        self.atom_encoder = AtomEncoder(channels)
        self.model = GraphHSATransformer(
            channels,
            channels,
            num_tasks,
            num_layers=num_layers,
            heads=heads,
            task="graph",
            conv="gin",
            dropout=dropout,
            attn_kwargs={"pos_channels": pos_channels},
        )

    def reset_parameters(self) -> None:
        reset(self.atom_encoder)
        self.model.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        atoms = data["atom"]
        hierarchy = Hierarchy.from_hetero(data).to(atoms.x.device)
        pos = hierarchy.node_features(tree_positions(data, hierarchy))
        return self.model(
            self.atom_encoder(atoms.x),
            data["atom", "bond", "atom"].edge_index,
            hierarchy,
            batch=atoms.batch,
            pos=pos,
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.model})"
