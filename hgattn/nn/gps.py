r"""GraphGPS-style layer and model whose global attention is HSA over a hierarchy of the graph's nodes."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Sequential
from torch_geometric.nn import MLP, GCNConv, GINConv, SAGEConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset
from torch_geometric.nn.norm import BatchNorm, LayerNorm as PygLayerNorm
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver
from torch_geometric.typing import Adj

from ..hierarchy import Hierarchy
from ..sharding import GraphShard, halo_exchange, synced_batch_norm
from .conv import HSAConv, check_input_dtype

__all__ = ["HSAGPSConv", "GraphHSATransformer"]


class HSAGPSConv(torch.nn.Module):
    r"""A GPS graph transformer layer (`"Recipe for a General, Powerful, Scalable Graph Transformer"
    <https://arxiv.org/abs/2205.12454>`_, as PyG's :class:`~torch_geometric.nn.conv.GPSConv`) whose global
    attention is Hierarchical Self-Attention (`arXiv:2509.15448 <https://arxiv.org/abs/2509.15448>`_) over a
    hierarchy of the graph's nodes instead of dense attention:

    .. math::
        \mathbf{h}^{L} &= \mathrm{N}_1\big(\mathbf{x} + \mathrm{MPNN}(\mathbf{x}, \mathcal{E})\big), \qquad
        \mathbf{h}^{G} = \mathrm{N}_2\big(\mathbf{x} + \mathbf{W}_O\, \mathrm{HSA}(\mathbf{x},
        \mathcal{T})\big), \\
        \mathbf{x}^{\prime} &= \mathrm{N}_3\big(\mathbf{h} + \mathrm{MLP}(\mathbf{h})\big), \qquad
        \mathbf{h} = \mathbf{h}^{L} + \mathbf{h}^{G},

    where the hierarchy :math:`\mathcal{T}` has the graph's nodes as leaves, leaf ``i`` being node ``i`` (for
    example ``Hierarchy.from_windows`` over the node order, or ``Hierarchy.from_hetero`` of a graph
    partitioned into a tree of clusters; a batch of graphs needs one tree per graph so that attention never
    crosses graphs). Time and memory of the global term are linear in the number of nodes for a bounded
    branching factor.

    Args:
        channels (int): Size of each node's features.
        conv (MessagePassing, optional): The local message passing layer, ``None`` for none.
        heads (int, optional): Number of attention heads; ``channels`` must be divisible by it. (default: ``1``)
        dropout (float, optional): Dropout of intermediate embeddings. (default: ``0.``)
        act (str or Callable, optional): Activation of the MLP. (default: ``"relu"``)
        act_kwargs (Dict[str, Any], optional): Arguments of the activation. (default: ``None``)
        norm (str or Callable, optional): Normalization. (default: ``"batch_norm"``)
        norm_kwargs (Dict[str, Any], optional): Arguments of the normalization. (default: ``None``)
        attention (type, optional): The global attention layer class, built as
            ``attention(channels, channels // heads, heads=heads, concat=True, **attn_kwargs)``:
            :class:`~hgattn.nn.HSAConv`, or :class:`~hgattn.nn.FlatSoftmaxConv` for dense softmax attention over
            each tree's leaves (GraphGPS's global attention; its ``pos`` is per leaf). (default: ``HSAConv``)
        attn_kwargs (Dict[str, Any], optional): Arguments of the :class:`~hgattn.nn.HSAConv` global attention
            (e.g. ``include_self``, ``pos_channels``, ``dropout``). (default: ``None``)

    Shapes:
        - **input:** node features :math:`(N, F)`, edge indices :math:`(2, |\mathcal{E}|)`,
          :class:`~hgattn.Hierarchy` with :math:`N` leaves, batch vector :math:`(N)` *(optional)*, raw
          positions :math:`(T, C)` per tree node *(optional)*
        - **output:** node features :math:`(N, F)`
    """

    def __init__(
        self,
        channels: int,
        conv: MessagePassing | None,
        heads: int = 1,
        dropout: float = 0.0,
        act: str | Callable = "relu",
        act_kwargs: dict[str, Any] | None = None,
        norm: str | Callable | None = "batch_norm",
        norm_kwargs: dict[str, Any] | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        attention: type[HSAConv] = HSAConv,
    ) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels = channels
        self.conv = conv
        self.heads = heads
        self.dropout = dropout
        attn_kwargs = dict(attn_kwargs or {})
        attn_kwargs.setdefault("root_weight", False)
        self.attn = attention(channels, channels // heads, heads=heads, concat=True, **attn_kwargs)
        self.lin_attn = Linear(channels, channels)
        self.mlp = Sequential(
            Linear(channels, channels * 2),
            activation_resolver(act, **(act_kwargs or {})),
            Dropout(dropout),
            Linear(channels * 2, channels),
            Dropout(dropout),
        )
        norm_kwargs = norm_kwargs or {}
        self.norm1 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm2 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm3 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm_with_batch = self.norm1 is not None and (
            "batch" in inspect.signature(self.norm1.forward).parameters)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()
        self.attn.reset_parameters()
        self.lin_attn.reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adj, hierarchy: Hierarchy | GraphShard, batch: Tensor | None = None,
                pos: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Node features ``[N, channels]``; ``kwargs`` go to the local MPNN.

        With a :class:`~hgattn.sharding.GraphShard` (:func:`~hgattn.sharding.shard_graph`) as ``hierarchy``,
        the layer runs on this rank's nodes, exactly as on the whole graph in one process: ``x`` is
        ``[N_r, channels]`` (the rows ``shard.leaf_rows``), ``edge_index`` the rank's edges
        ``graph.edge_index`` (edge attributes ``edge_attr[graph.edge_ids]``), ``pos`` the rows of
        ``graph.shard.pos_nodes``; the MPNN receives the halo (:func:`~hgattn.sharding.halo_exchange`), the
        attention is :func:`~hgattn.attention.sharded_hsa` and batch norms use the statistics of all ranks
        (:func:`~hgattn.sharding.synced_batch_norm`). Every rank runs it (collectives). The MPNN must aggregate
        over incoming edges only (GIN, SAGE, GAT, ...; GCN with ``normalize=False`` and the edge weights of
        ``gcn_norm`` over the whole graph, not its own degree normalisation, which needs the sources' degrees).
        """
        check_input_dtype("x", x, self.lin_attn.weight)
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(f"x must be [N, {self.channels}], got shape {list(x.shape)}")
        sharded = isinstance(hierarchy, GraphShard)
        if sharded:
            self._check_sharded(x, hierarchy, batch)
        elif hierarchy.num_leaves != x.size(0):
            raise ValueError(f"the hierarchy has {hierarchy.num_leaves} leaves for {x.size(0)} nodes; its "
                             "leaves must be the graph's nodes in order")
        hs = []
        if self.conv is not None:
            h = self.conv(halo_exchange(x, hierarchy) if sharded else x, edge_index, **kwargs)[:x.size(0)]
            h = F.dropout(h, p=self.dropout, training=self.training)
            hs.append(self._norm(self.norm1, h + x, batch, sharded))
        h = self.lin_attn(self.attn(x, hierarchy.shard if sharded else hierarchy, pos))
        h = F.dropout(h, p=self.dropout, training=self.training)
        hs.append(self._norm(self.norm2, h + x, batch, sharded))
        out = sum(hs)
        return self._norm(self.norm3, out + self.mlp(out), batch, sharded)

    def _check_sharded(self, x: Tensor, graph: GraphShard, batch: Tensor | None) -> None:
        """Refuse what would make a rank's rows differ from the single-process layer's."""
        if x.size(0) != graph.num_nodes:
            raise ValueError(f"x has {x.size(0)} rows for the {graph.num_nodes} nodes of rank "
                             f"{graph.shard.rank}'s GraphShard")
        if batch is not None:
            raise ValueError("a GraphShard holds part of one graph: pass batch=None")
        if isinstance(self.conv, GCNConv) and self.conv.normalize:
            raise ValueError("GCNConv normalises by the degrees of the source nodes, which a rank does not see "
                             "for its halo: use an MPNN that aggregates incoming edges (GIN, SAGE, GAT) or "
                             "GCNConv(normalize=False) with edge weights normalised over the whole graph "
                             "(torch_geometric.nn.conv.gcn_conv.gcn_norm before shard_graph)")
        for norm in (self.norm1, self.norm2, self.norm3):
            if not (_per_node(norm) or _batch_norm(norm)):
                raise ValueError(f"{type(norm).__name__} normalises over the nodes of the batch, which a "
                                 "GraphShard splits across ranks: use norm='batch_norm' (statistics summed "
                                 "over the ranks), norm='layer_norm' with norm_kwargs={'mode': 'node'}, or "
                                 "norm=None")

    def _norm(self, norm: torch.nn.Module | None, x: Tensor, batch: Tensor | None, sharded: bool = False) -> Tensor:
        if norm is None:
            return x
        if sharded and _batch_norm(norm):
            return synced_batch_norm(norm, x)
        return norm(x, batch=batch) if self.norm_with_batch else norm(x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, conv={self.conv}, heads={self.heads})"


def _per_node(norm: torch.nn.Module | None) -> bool:
    """Whether ``norm`` transforms each node on its own (no statistics over the batch's nodes)."""
    return (norm is None or isinstance(norm, torch.nn.LayerNorm)
            or (isinstance(norm, PygLayerNorm) and norm.mode == "node"))


def _batch_norm(norm: torch.nn.Module | None) -> bool:
    """Whether ``norm`` is a batch norm :func:`~hgattn.sharding.synced_batch_norm` computes over ranks."""
    return isinstance(norm, (BatchNorm, torch.nn.BatchNorm1d))


def _local_conv(name: str, channels: int) -> MessagePassing | None:
    if name == "gin":
        return GINConv(MLP([channels, channels, channels], norm=None))
    if name == "gcn":
        return GCNConv(channels, channels)
    if name == "sage":
        return SAGEConv(channels, channels)
    if name == "none":
        return None
    raise ValueError(f"conv must be 'gin', 'gcn', 'sage' or 'none', got {name!r}")


class GraphHSATransformer(torch.nn.Module):
    r"""A graph transformer of :class:`HSAGPSConv` layers for node- and graph-level tasks: a linear input
    encoder (plus projected raw positions per tree node in the attention), ``num_layers`` layers, and a
    readout (per node, or pooled per graph) followed by an MLP.

    Args:
        in_channels (int): Size of the input node features, ``-1`` for lazy.
        hidden_channels (int): Width of the layers.
        out_channels (int): Number of outputs (classes or targets).
        num_layers (int, optional): Number of :class:`HSAGPSConv` layers. (default: ``2``)
        heads (int, optional): Attention heads. (default: ``1``)
        task (str, optional): ``"node"`` or ``"graph"``. (default: ``"node"``)
        conv (str, optional): Local MPNN: ``"gin"``, ``"gcn"``, ``"sage"`` or ``"none"``. (default: ``"gin"``)
        readout (str, optional): Graph pooling ``"mean"``, ``"add"`` or ``"max"``. (default: ``"mean"``)
        dropout (float, optional): Dropout in the layers and the head. (default: ``0.``)
        norm (str, optional): Normalization of the layers. (default: ``"batch_norm"``)
        attn_kwargs (Dict[str, Any], optional): Arguments of the :class:`~hgattn.nn.HSAConv` attention.
        attention (type, optional): The attention layer class of every layer (:class:`HSAGPSConv`).
            (default: ``HSAConv``)
        norm_kwargs (Dict[str, Any], optional): Arguments of the normalization (e.g. ``{"mode": "node"}`` for
            ``layer_norm`` per node). (default: ``None``)

    Shapes:
        - **input:** node features :math:`(N, F)`, edge indices, :class:`~hgattn.Hierarchy` over the nodes,
          batch vector :math:`(N)` *(needed for graph tasks with several graphs)*, raw positions
          :math:`(T, C)` *(optional)*
        - **output:** :math:`(N, \text{out})` for node tasks, :math:`(B, \text{out})` for graph tasks
    """

    POOLS = {"mean": global_mean_pool, "add": global_add_pool, "max": global_max_pool}

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        heads: int = 1,
        task: str = "node",
        conv: str = "gin",
        readout: str = "mean",
        dropout: float = 0.0,
        norm: str | None = "batch_norm",
        attn_kwargs: dict[str, Any] | None = None,
        attention: type[HSAConv] = HSAConv,
        norm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}")
        if readout not in self.POOLS:
            raise ValueError(f"readout must be one of {sorted(self.POOLS)}, got {readout!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.task = task
        self.readout = readout
        self.encoder = Linear(in_channels, hidden_channels)
        self.layers = torch.nn.ModuleList([
            HSAGPSConv(hidden_channels, _local_conv(conv, hidden_channels), heads=heads, dropout=dropout,
                       norm=norm, norm_kwargs=norm_kwargs, attn_kwargs=attn_kwargs, attention=attention)
            for _ in range(num_layers)
        ])
        self.head = MLP([hidden_channels, hidden_channels, out_channels], dropout=dropout, norm=None)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adj, hierarchy: Hierarchy | GraphShard, batch: Tensor | None = None,
                pos: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Per-node outputs ``[N, out]`` or per-graph outputs ``[B, out]``; ``kwargs`` (e.g. ``edge_weight``)
        go to every layer's MPNN. A :class:`~hgattn.sharding.GraphShard` runs the model on this rank's nodes
        (see :meth:`HSAGPSConv.forward`; node tasks)."""
        check_input_dtype("x", x, self.encoder.weight)
        if isinstance(hierarchy, GraphShard) and self.task == "graph":
            raise ValueError("a GraphShard holds part of one graph: graph-level readout needs task='node' (pool "
                             "the ranks' outputs yourself)")
        h = self.encoder(x)
        for layer in self.layers:
            h = layer(h, edge_index, hierarchy, batch=batch, pos=pos, **kwargs)
        if self.task == "graph":
            h = self.POOLS[self.readout](h, batch)
        return self.head(h)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
                f"num_layers={self.num_layers}, task={self.task})")
