"""Method-name prediction models over Python ASTs (the task of ogbg-code2): OGB's code2 GNN baselines with a
virtual node, and graph transformers whose global attention is HSA over the AST or flat softmax attention.

All take a batch of :class:`~hgattn.transforms.CodeHierarchy` trees and return ``[B * L, V]`` logits: one row
per graph and output position (graph-major), over the ``V`` target classes (sub-tokens, UNK, EOS). The mean
cross-entropy of these rows against ``y.view(-1)`` is OGB's code2 loss (the per-position cross-entropies
summed, divided by ``L``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import MLP, GCNConv, GINEConv, global_add_pool, global_mean_pool
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset

from ...batching import batch_hierarchy
from ...encodings import sinusoidal
from ...hierarchy import Hierarchy
from ..conv import HSAConv
from ..flat import FlatSoftmaxConv
from ..gps import HSAGPSConv
from .tree import tree_positions

__all__ = ["ASTNodeEncoder", "SequenceHead", "code_edges", "CodeGNN", "CodeTransformer"]


class ASTNodeEncoder(torch.nn.Module):
    """OGB's code2 node encoder: embeddings of the node type, the attribute and the depth (clipped at
    ``max_depth``), summed.

    Shapes: ``x`` ``[n, 2]`` (type, attribute ids) and ``depth`` ``[n]`` to ``[n, channels]``.
    """

    def __init__(self, channels: int, num_types: int, num_attributes: int, max_depth: int = 20) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.type_encoder = torch.nn.Embedding(num_types, channels)
        self.attribute_encoder = torch.nn.Embedding(num_attributes, channels)
        self.depth_encoder = torch.nn.Embedding(max_depth + 1, channels)

    def reset_parameters(self) -> None:
        for encoder in (self.type_encoder, self.attribute_encoder, self.depth_encoder):
            encoder.reset_parameters()

    def forward(self, x: Tensor, depth: Tensor) -> Tensor:
        for column, table, what in ((0, self.type_encoder, "type"), (1, self.attribute_encoder, "attribute")):
            if x.numel() and int(x[:, column].max()) >= table.num_embeddings:
                raise ValueError(f"ASTNodeEncoder: a node {what} id is {int(x[:, column].max())}, the "
                                 f"encoder has {table.num_embeddings} {what}s; build it with the dataset's "
                                 "vocabulary sizes")
        return (self.type_encoder(x[:, 0]) + self.attribute_encoder(x[:, 1])
                + self.depth_encoder(depth.clamp(max=self.max_depth)))


class SequenceHead(torch.nn.Module):
    """OGB's code2 head: one linear classifier per output position over the target classes.

    Shapes: ``[B, channels]`` graph embeddings to ``[B * max_seq_len, num_classes]`` (graph-major).
    """

    def __init__(self, channels: int, num_classes: int, max_seq_len: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lins = torch.nn.ModuleList([Linear(channels, num_classes) for _ in range(max_seq_len)])

    def reset_parameters(self) -> None:
        for lin in self.lins:
            lin.reset_parameters()

    def forward(self, h: Tensor) -> Tensor:
        return torch.stack([lin(h) for lin in self.lins], dim=1).reshape(-1, self.num_classes)


def code_edges(data: HeteroData) -> tuple[Tensor, Tensor]:
    """OGB's code2 ``augment_edge``: the AST edges (parent -> child), their inverses, the next-token edges
    and their inverses, with ``edge_attr`` ``[E, 2]`` (float): next-token edge (1) or AST edge (0), and
    inverse (1) or original direction (0).

    Returns: ``edge_index`` ``[2, E]`` over the ``token`` nodes and ``edge_attr`` ``[E, 2]``.
    """
    ast_edges = data["token", "child", "token"].edge_index
    next_edges = data["token", "next", "token"].edge_index
    parts = [ast_edges, ast_edges.flip(0), next_edges, next_edges.flip(0)]
    kinds = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], device=ast_edges.device)
    counts = torch.tensor([part.size(1) for part in parts], device=ast_edges.device)
    return torch.cat(parts, dim=1), kinds.repeat_interleave(counts, dim=0)


def _graph_index(data: HeteroData) -> tuple[Tensor, int]:
    tokens = data["token"]
    if "batch" in tokens:
        return tokens.batch, int(data.num_graphs)
    return tokens.x.new_zeros(tokens.num_nodes), 1


class CodeGNN(torch.nn.Module):
    """OGB's code2 baselines (``examples/graphproppred/code2``): :class:`ASTNodeEncoder`, ``num_layers``
    GIN (PyG ``GINEConv`` with OGB's linear edge encoder) or GCN (PyG ``GCNConv``, no edge features)
    layers with batch norm, ReLU (not after the last) and dropout over :func:`code_edges`, optionally a
    virtual node (OGB's ``GNN_node_Virtualnode``: added to every node before each layer, updated from the
    summed nodes by an MLP after each but the last), mean pooling and :class:`SequenceHead`.

    Shapes: a batch of ``B`` code trees to ``[B * max_seq_len, num_classes]``.
    """

    def __init__(self, num_types: int, num_attributes: int, channels: int, num_classes: int,
                 max_seq_len: int = 5, conv: str = "gin", num_layers: int = 5, dropout: float = 0.0,
                 virtual_node: bool = True, max_depth: int = 20) -> None:
        super().__init__()
        if conv not in ("gin", "gcn"):
            raise ValueError(f"CodeGNN: conv must be 'gin' or 'gcn', got {conv!r}")
        if num_layers < 2:
            raise ValueError(f"CodeGNN: num_layers must be >= 2 (as OGB's), got {num_layers}")
        self.conv_name, self.dropout = conv, dropout
        self.encoder = ASTNodeEncoder(channels, num_types, num_attributes, max_depth)
        self.convs = torch.nn.ModuleList([
            GINEConv(MLP([channels, 2 * channels, channels], norm="batch_norm"), train_eps=True, edge_dim=2)
            if conv == "gin" else GCNConv(channels, channels)
            for _ in range(num_layers)
        ])
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm1d(channels) for _ in range(num_layers)])
        self.virtual_node = torch.nn.Embedding(1, channels) if virtual_node else None
        self.virtual_mlps = torch.nn.ModuleList([  # a batch of one graph normalises with the running stats
            MLP([channels, 2 * channels, channels], norm="batch_norm",
                norm_kwargs={"allow_single_element": True}, plain_last=False)
            for _ in range(num_layers - 1)
        ]) if virtual_node else None
        self.head = SequenceHead(channels, num_classes, max_seq_len)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.encoder, self.convs, self.norms, self.virtual_mlps, self.head):
            if module is not None:
                reset(module)
        if self.virtual_node is not None:
            torch.nn.init.zeros_(self.virtual_node.weight)

    def forward(self, data: HeteroData) -> Tensor:
        tokens = data["token"]
        batch, num_graphs = _graph_index(data)
        edge_index, edge_attr = code_edges(data)
        h = self.encoder(tokens.x, tokens.depth)
        virtual = (self.virtual_node.weight.expand(num_graphs, -1) if self.virtual_node is not None else None)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if virtual is not None:
                h = h + virtual[batch]
            out = conv(h, edge_index, edge_attr) if self.conv_name == "gin" else conv(h, edge_index)
            out = norm(out)
            if i < len(self.convs) - 1:
                out = out.relu()
            out = F.dropout(out, p=self.dropout, training=self.training)
            if virtual is not None and i < len(self.convs) - 1:
                pooled = global_add_pool(h, batch, size=num_graphs) + virtual
                virtual = F.dropout(self.virtual_mlps[i](pooled), p=self.dropout, training=self.training)
            h = out
        return self.head(global_mean_pool(h, batch, size=num_graphs))

    def __repr__(self) -> str:
        kind = f"{self.conv_name}{'-vn' if self.virtual_node is not None else ''}"
        return f"{self.__class__.__name__}({kind}, layers={len(self.convs)})"


class CodeTransformer(torch.nn.Module):
    """A GPS graph transformer over code trees: :class:`ASTNodeEncoder`, ``num_layers``
    :class:`~hgattn.nn.HSAGPSConv` layers (local GINE over :func:`code_edges`, global attention over the
    tokens of each function), mean pooling and :class:`SequenceHead`.

    ``attention='hsa'``: the global attention is HSA over the AST hierarchy (tokens at the leaves, one inner
    node per AST node with children), with each node's family-rank encoding (``pos`` of both node types).
    ``attention='flat'`` (FSA): the same layers with :class:`~hgattn.nn.FlatSoftmaxConv`, softmax attention among
    all tokens of a function, positions the sinusoidal encoding of each token's DFS index.

    Shapes: a batch of ``B`` code trees to ``[B * max_seq_len, num_classes]``.
    """

    def __init__(self, num_types: int, num_attributes: int, channels: int, num_classes: int,
                 max_seq_len: int = 5, attention: str = "hsa", num_layers: int = 3, heads: int = 4,
                 pos_channels: int = 8, dropout: float = 0.0, max_depth: int = 20) -> None:
        super().__init__()
        if attention not in ("hsa", "flat"):
            raise ValueError(f"CodeTransformer: attention must be 'hsa' or 'flat', got {attention!r}")
        self.attention, self.pos_channels = attention, pos_channels
        self.encoder = ASTNodeEncoder(channels, num_types, num_attributes, max_depth)
        self.layers = torch.nn.ModuleList([self._layer(channels, heads, dropout) for _ in range(num_layers)])
        self.head = SequenceHead(channels, num_classes, max_seq_len)

    def _layer(self, channels: int, heads: int, dropout: float) -> HSAGPSConv:
        local = GINEConv(MLP([channels, channels, channels], norm=None), edge_dim=2)
        return HSAGPSConv(channels, local, heads=heads, dropout=dropout,
                          attn_kwargs={"pos_channels": self.pos_channels},
                          attention=HSAConv if self.attention == "hsa" else FlatSoftmaxConv)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.head.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        tokens = data["token"]
        batch, num_graphs = _graph_index(data)
        hierarchy = batch_hierarchy(data, tokens.x.device)
        edge_index, edge_attr = code_edges(data)
        pos = self._positions(data, hierarchy, batch)
        h = self.encoder(tokens.x, tokens.depth)
        for layer in self.layers:
            h = layer(h, edge_index, hierarchy, batch=batch, pos=pos, edge_attr=edge_attr)
        return self.head(global_mean_pool(h, batch, size=num_graphs))

    def _positions(self, data: HeteroData, hierarchy: Hierarchy, batch: Tensor) -> Tensor:
        """HSA: ``[T, C]`` family-rank encodings of all tree nodes; flat: ``[N, C]`` encodings of each token's
        DFS index."""
        if self.attention == "hsa":
            return hierarchy.node_features(tree_positions(data, hierarchy))
        ptr = torch.cumsum(torch.bincount(batch), 0) - torch.bincount(batch)
        return sinusoidal(torch.arange(batch.numel(), device=batch.device) - ptr[batch], self.pos_channels)

    def __repr__(self) -> str:
        kind = "HSA" if self.attention == "hsa" else "FSA"
        return f"{self.__class__.__name__}({kind}, layers={len(self.layers)})"
