"""Node classifiers over one graph: GCN, GCN with HSA between its layers, GCN + global attention (HSA or PyG's
GPSConv), SGFormer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv, GPSConv, MLP
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset

from ...batching import batch_hierarchy
from ..conv import HSAConv
from ..gps import GraphHSATransformer
from .tree import tree_positions

__all__ = ["NodeGCN", "NodeGCNHSA", "NodeGPS", "NodeSGFormer"]


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


class NodeGCNHSA(torch.nn.Module):
    r"""GCN with Hierarchical Self-Attention (`arXiv:2509.15448 <https://arxiv.org/abs/2509.15448>`_) over the
    graph's cluster tree after each hidden GCN layer, added to it as a residual:

    .. math::
        \mathbf{h}_\ell = \mathrm{ReLU}\big(\mathrm{GCN}_\ell(\mathrm{drop}(\mathbf{h}'_{\ell-1}))\big),
        \qquad \mathbf{h}'_\ell = \mathbf{h}_\ell + \mathrm{HSA}_\ell(\mathbf{h}_\ell, \mathcal{T}),

    and logits :math:`\mathrm{GCN}_L(\mathrm{drop}(\mathbf{h}'_{L-1}))` (with :math:`\mathbf{h}'_0 =
    \mathbf{x}`). The attention mixes features already smoothed over each node's neighbourhood, so the model
    is the GCN plus a global term, with the GCN's layers and dropout.

    Args:
        in_channels, channels, num_classes: input, hidden and output sizes.
        num_layers: GCN layers (``num_layers - 1`` attention layers).
        heads: attention heads (``channels`` divisible by it).
        pos_channels: raw ``pos`` features per tree node (0: none).
        dropout: dropout before each GCN layer but the first.

    Shapes: ``HeteroData`` (a :class:`~hgattn.transforms.GraphHierarchy` tree) to logits ``[N, num_classes]``.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_layers: int = 2, heads: int = 1,
                 pos_channels: int = 0, dropout: float = 0.5) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"NodeGCNHSA needs num_layers >= 2 (attention sits between GCN layers), got "
                             f"{num_layers}")
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        sizes = [in_channels] + [channels] * (num_layers - 1) + [num_classes]
        self.convs = torch.nn.ModuleList([GCNConv(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.attns = torch.nn.ModuleList([HSAConv(channels, channels // heads, heads=heads,
                                                  pos_channels=pos_channels) for _ in range(num_layers - 1)])
        self.dropout = dropout

    def reset_parameters(self) -> None:
        for module in (*self.convs, *self.attns):
            module.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        x, edge_index = data["node"].x, data["node", "to", "node"].edge_index
        hierarchy = batch_hierarchy(data, x.device)
        pos = (hierarchy.node_features(tree_positions(data, hierarchy)) if self.attns[0].pos_channels
               else None)
        h = x
        for index, conv in enumerate(self.convs):
            if index:
                h = F.dropout(h, p=self.dropout, training=self.training)
            h = conv(h, edge_index)
            if index < len(self.attns):
                h = h.relu()
                h = h + self.attns[index](h, hierarchy, pos)
        return h

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self.convs)} GCN layers, {len(self.attns)} HSA layers)"


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

    Shapes: ``HeteroData`` (a :class:`~hgattn.transforms.GraphHierarchy` tree) to logits ``[N, num_classes]``;
    a rank's part of a sharded graph (``graph_shard``, see :mod:`hgattn.train.sharded`) to its nodes' logits.
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
        if self.attention == "hsa" and "graph_shard" in data:
            return self._forward_shard(data)
        if self.attention == "hsa":
            hierarchy = batch_hierarchy(data, x.device)
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

    def _forward_shard(self, data: HeteroData) -> Tensor:
        """Logits of this rank's nodes from its part of a sharded graph (``hgattn.train.sharded``): the edges
        already carry GCN's weights over the whole graph, so the GCN layers do not normalise them again."""
        edges = data["node", "to", "node"]
        pos = data.shard_pos if self.model.layers[0].attn.pos_channels else None
        convs = [layer.conv for layer in self.model.layers if isinstance(layer.conv, GCNConv)]
        normalize = [conv.normalize for conv in convs]
        for conv in convs:
            conv.normalize = False
        try:
            return self.model(data["node"].x, edges.edge_index, data.graph_shard, pos=pos,
                              edge_weight=edges.edge_weight)
        finally:
            for conv, value in zip(convs, normalize):
                conv.normalize = value

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(attention={self.attention})"
