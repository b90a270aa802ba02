"""Molecule property models: GCN/GIN with OGB"s atom and bond encoders, and the HSA graph transformer."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv, GINEConv, MLP, global_mean_pool
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset

from ...batching import batch_hierarchy
from ..conv import HSAConv
from ..flat import FlatSoftmaxConv
from ..gps import GraphHSATransformer
from .tree import tree_positions

__all__ = ["MoleculeGNN", "MoleculeHSATransformer"]


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
    Laplacian positions), mean pooled per molecule. With ``flat=True`` the global attention is dense softmax over
    each molecule's atoms instead (:class:`~hgattn.nn.FlatSoftmaxConv`, the atoms' positions): GraphGPS's
    GIN + multi-head attention layer, the FSA baseline.

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
        flat: bool = False,
    ) -> None:
        super().__init__()
        from ogb.graphproppred.mol_encoder import AtomEncoder

        self.flat = flat
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
            attention=FlatSoftmaxConv if flat else HSAConv,
        )

    def reset_parameters(self) -> None:
        reset(self.atom_encoder)
        self.model.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        atoms = data["atom"]
        hierarchy = batch_hierarchy(data, atoms.x.device)
        pos = hierarchy.node_features(tree_positions(data, hierarchy))
        if self.flat:
            pos = pos[hierarchy.leaf_node]
        return self.model(
            self.atom_encoder(atoms.x),
            data["atom", "bond", "atom"].edge_index,
            hierarchy,
            batch=atoms.batch,
            pos=pos,
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.model})"
