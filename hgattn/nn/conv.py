r"""``HSAConv``: Hierarchical Self-Attention as a PyG ``MessagePassing`` layer (homogeneous and heterogeneous)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Parameter
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Metadata

from ..attention import Shard, hsa, hsa_attention, sharded_hsa
from ..attention.inputs import NonFiniteError
from ..hierarchy import Hierarchy
from .attention import leaf_sums, push_down, sibling_edge_index

__all__ = ["HSAConv", "check_input_dtype"]


def check_input_dtype(name: str, x: Tensor, weight: Tensor) -> None:
    """Raise when features ``x`` cannot go through a layer with parameters of ``weight``'s dtype: not floating
    point, or another float dtype outside ``torch.autocast`` (say both dtypes and how to match them)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}; convert it with .float()")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} is {x.dtype} but the layer's weights are {weight.dtype}: convert the input "
                         f"(.float() for float32, .to({weight.dtype})) or the layer (layer.double() for "
                         f"float64, layer.to({x.dtype}))")


class HSAConv(MessagePassing):
    r"""The Hierarchical Self-Attention operator from the `"Hierarchical Self-Attention: Generalizing Neural
    Attention Mechanics to Multi-Scale Problems" <https://arxiv.org/abs/2509.15448>`_ paper (NeurIPS 2025).

    Leaves of a tree (or forest) ``hierarchy`` attend to each other with the attention matrix closest in KL to
    softmax attention under the constraint that attention between two sibling subtrees is uniform:

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}_1 \mathbf{x}_i + \big\Vert_{h=1}^{H}
        \sum_{j} \Theta^{(h)}_{ij} \mathbf{W}^{(h)}_V \mathbf{x}_j,
        \qquad \Theta^{(h)}_{ij} = \Big[\prod_{t<k} \mu(B_t)\Big]
        \exp\big(s(B_k, S) - z(B_k)\big) \text{ for } j \text{ below } S \in \mathrm{sib}(B_k),

    with :math:`B_1 \dots B_m = i` the path from the root to leaf ``i``, the block logit
    :math:`s(B, S) = \bar{\mathbf{q}}_B^{\top} \bar{\mathbf{k}}_S / \sqrt{d} + \langle \mathbf{p}_B,
    \mathbf{p}_S \rangle` over the mean queries and keys of the two subtrees, gates :math:`\mu` and partitions
    :math:`z` as in the paper (``hgattn.hsa``). Positions :math:`\mathbf{p}_B = \mathbf{W}_{P, \tau(B)}
    \mathbf{e}_B` project raw position features with one learnable matrix per *family domain* (the node type
    :math:`\tau(B)` of ``B``'s parent).

    Family attention is message passing over the sibling edges ``S -> B``
    (:func:`~hgattn.nn.attention.sibling_edge_index`). The default (fused) path calls the exact linear-time
    operator :func:`hgattn.hsa`, which never lists the sibling pairs (their number grows with the square of the
    family sizes): directly, or, when propagate hooks are registered, through :meth:`propagate` and
    :meth:`message_and_aggregate` over a column-sorted :class:`~torch_geometric.EdgeIndex` (which PyG fuses).
    When messages are observed (explain mode, message
    hooks such as :class:`torch_geometric.explain.AttentionExplainer`'s) or attention dropout is active, the
    layer sends the message :math:`\alpha_{BS}\, n(S)\, \bar{\mathbf{v}}_S` along every sibling edge, with
    :math:`\alpha_{BS}` (``alpha``, ``[P, H]``, from :func:`hgattn.hsa_attention`) the
    per-entry attention of the pair's block, sums them at ``B`` and pushes the sums down to the leaves: the
    same output, differentiable through ``alpha``.

    Homogeneous use: ``conv(x, hierarchy, pos=None)`` with leaf rows ``x`` ``[N, F]`` and raw positions ``pos``
    ``[T, pos_channels]`` per tree node. Heterogeneous use (``metadata`` given, like
    :class:`~torch_geometric.nn.conv.HGTConv`): ``conv(x_dict, hierarchy, pos_dict=None)`` with the hierarchy
    from :meth:`Hierarchy.from_hetero`; Q/K/V/skip of all leaf types come from one matrix product over
    block-structured inputs (no loop over types in the projection), and the output is a dict over leaf types.

    Args:
        in_channels (int or Dict[str, int]): Size of each leaf's input features (per leaf node type in the
            heterogeneous case), or ``-1`` to infer it on the first call.
        out_channels (int): Size of each head's output.
        metadata (Tuple[List[str], List[Tuple[str, str, str]]], optional): Node and edge types of the
            heterogeneous input (``HeteroData.metadata()``); tree edges are ``(child, 'in', parent)``.
            ``None`` for homogeneous input. (default: ``None``)
        heads (int, optional): Number of attention heads. (default: ``1``)
        concat (bool, optional): Concatenate the heads (output ``heads * out_channels``), otherwise average
            them. (default: ``True``)
        qk_norm (bool, optional): LayerNorm on each head's queries and keys, so that
            :math:`\Vert\mathbf{q}\Vert^2 \approx \Vert\mathbf{k}\Vert^2 \approx d` as the derivation assumes.
            (default: ``True``)
        include_self (bool, optional): Let a leaf attend to itself. (default: ``False``)
        dropout (float, optional): Dropout on the attention: each sibling block's weight (per head) is
            dropped with this probability in training. (default: ``0.``)
        pos_channels (int, optional): Size of the raw position features (``0``: no position term). Types with
            fewer features are zero-padded. (default: ``0``)
        bias (bool, optional): Learn additive biases. (default: ``True``)
        root_weight (bool, optional): Add the skip connection :math:`\mathbf{W}_1 \mathbf{x}_i`.
            (default: ``True``)
        query_residual (bool, optional): Add each head's query to its output, the paper's residual of Q inside
            the head (:class:`~hgattn.nn.HTEBlock`). (default: ``False``)
        **kwargs (optional): Additional arguments of :class:`~torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** leaf features :math:`(N, F)` or a dict of them, :class:`~hgattn.Hierarchy`, positions
          :math:`(T, C)` or a dict of :math:`(n_\tau, C_\tau)`
        - **output:** :math:`(N, H \cdot F')` (or :math:`(N, F')` without ``concat``) or a dict of them, and
          with ``return_attention_weights=True`` an :class:`~hgattn.HSAAttention` (sibling pairs ``[2, P]``,
          ``sibling_weight`` ``[P, H]``, ``self_weight`` ``[N, H]``, ``to_dense()``)
    """

    SUPPORTS_FUSED_EDGE_INDEX = True

    def __init__(
        self,
        in_channels: int | dict[str, int],
        out_channels: int,
        metadata: Metadata | None = None,
        heads: int = 1,
        concat: bool = True,
        qk_norm: bool = True,
        include_self: bool = False,
        dropout: float = 0.0,
        pos_channels: int = 0,
        bias: bool = True,
        root_weight: bool = True,
        query_residual: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if out_channels < 1 or heads < 1:
            raise ValueError(f"out_channels and heads must be >= 1, got {out_channels} and {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if pos_channels < 0:
            raise ValueError(f"pos_channels must be >= 0, got {pos_channels}")
        self.metadata = metadata
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.qk_norm = qk_norm
        self.include_self = include_self
        self.dropout = dropout
        self.pos_channels = pos_channels
        self.root_weight = root_weight
        self.query_residual = query_residual

        if metadata is None:
            if isinstance(in_channels, dict):
                raise ValueError("in_channels is a dict: pass metadata for heterogeneous input")
            self.leaf_types, self.parent_types = ["_"], ["_"]
            in_total = in_channels
        else:
            node_types, edge_types = metadata
            self.parent_types = sorted({dst for _, _, dst in edge_types}, key=list(node_types).index)
            if not self.parent_types:
                raise ValueError(f"metadata {metadata} has no tree edges (child, 'in', parent)")
            if isinstance(in_channels, dict):
                self.leaf_types = [nt for nt in node_types if nt in in_channels]
            else:
                self.leaf_types = [nt for nt in node_types if nt not in self.parent_types] or list(node_types)
                in_channels = {nt: in_channels for nt in self.leaf_types}
            unknown = [nt for nt in in_channels if nt not in node_types]
            if unknown:
                raise ValueError(f"in_channels names node type(s) {unknown} missing from metadata")
            self.in_channels = {nt: in_channels[nt] for nt in self.leaf_types}
            lazy = any(size < 0 for size in self.in_channels.values())
            in_total = -1 if lazy else sum(self.in_channels.values())

        width = heads * out_channels
        self.skip_channels = (width if concat else out_channels) if root_weight else 0
        self.lin = Linear(in_total, 3 * width + self.skip_channels, bias=False, weight_initializer="glorot")
        num_types = len(self.leaf_types)
        self.bias = Parameter(torch.empty(num_types, 3 * width + self.skip_channels)) if bias else None
        self.q_norm = LayerNorm(out_channels) if qk_norm else None
        self.k_norm = LayerNorm(out_channels) if qk_norm else None
        self.lin_pos = (Linear(len(self.parent_types) * pos_channels, width, bias=False,
                               weight_initializer="glorot") if pos_channels else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        for module in (self.q_norm, self.k_norm, self.lin_pos):
            if module is not None:
                module.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor | dict[str, Tensor],
        hierarchy: Hierarchy,
        pos: Tensor | dict[str, Tensor] | None = None,
        return_attention_weights: bool | None = None,
    ) -> Any:
        r"""Runs the layer.

        Args:
            x: leaf features ``[N, F]`` (homogeneous) or a dict over leaf node types.
            hierarchy: the tree or forest over the leaves (``Hierarchy.from_hetero`` for dict input), or this
                rank's :class:`~hgattn.attention.Shard` of one (:func:`~hgattn.attention.shard_hierarchy`;
                homogeneous input, the rank's leaf rows ``x[shard.leaf_rows]``): exact
                :func:`~hgattn.attention.sharded_hsa`, a collective that every rank runs.
            pos: raw position features, ``[T, pos_channels]`` or a dict over node types (``pos_dict``); with a
                Shard, ``[len(shard.pos_nodes), pos_channels]``, the rows of ``shard.pos_nodes``.
            return_attention_weights: also return the attention as an :class:`~hgattn.HSAAttention`.
        """
        if isinstance(hierarchy, Shard):
            return self._attend_sharded(x, hierarchy, pos, return_attention_weights)
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"hierarchy must be a hgattn.Hierarchy (or a Shard of one), got "
                            f"{type(hierarchy).__name__}")
        hetero = isinstance(x, dict)
        if hetero != (self.metadata is not None):
            raise ValueError("dict input needs a layer built with metadata, and tensor input one without"
                             if hetero else "this layer was built with metadata: pass a dict of features")
        leaf_x, leaf_type = self._leaf_rows(x, hierarchy) if hetero else self._homogeneous_rows(x, hierarchy)
        try:
            return self._attend(leaf_x, leaf_type, hierarchy, pos, hetero, return_attention_weights)
        except NonFiniteError as error:
            if error.source == "output":
                raise
            raise ValueError(self._non_finite_input(x, pos, str(error))) from error

    def _attend(self, leaf_x: Tensor, leaf_type: Tensor | None, hierarchy: Hierarchy,
                pos: Tensor | dict[str, Tensor] | None, hetero: bool,
                return_attention_weights: bool | None) -> Any:
        """Projection, attention, residuals and skip of the leaf rows ``leaf_x`` (see :meth:`forward`)."""
        query, key, value, skip = self._project(leaf_x, leaf_type)
        pos_emb = self._positions(pos, hierarchy)

        observed = self._observed()
        size = (hierarchy.num_nodes, hierarchy.num_nodes)
        attention = None
        if observed or return_attention_weights:
            attention = hsa_attention(query, key, hierarchy, pos=pos_emb, include_self=self.include_self)
        if observed:
            alpha = F.dropout(attention.sibling_weight, p=self.dropout, training=self.training)
            out = self.propagate(sibling_edge_index(hierarchy), query=query, key=key, value=value, pos=pos_emb,
                                 hierarchy=hierarchy, value_sum=leaf_sums(value, hierarchy), alpha=alpha,
                                 self_weight=attention.self_weight, size=size)
        elif self._propagate_forward_pre_hooks or self._propagate_forward_hooks:
            edge_index = EdgeIndex(sibling_edge_index(hierarchy), sparse_size=size, sort_order="col")
            out = self.propagate(edge_index, query=query, key=key, value=value, pos=pos_emb,
                                 hierarchy=hierarchy, value_sum=None, alpha=None, self_weight=None, size=size)
        else:
            out = self._fused(query, key, value, pos_emb, hierarchy)
        out = self._combine(out, query, skip)
        if hetero:
            out = hierarchy.split_leaves(out)
        if return_attention_weights:
            return out, attention
        return out

    def _observed(self) -> bool:
        """Whether the attention weights are needed as messages: explain, message hooks, or attention dropout
        in training."""
        return bool(self.explain) or bool(self._message_forward_hooks) or bool(
            self._message_forward_pre_hooks) or (self.training and self.dropout > 0)

    def _combine(self, out: Tensor, query: Tensor, skip: Tensor | None) -> Tensor:
        """``[N, H * C]`` (concat) or ``[N, C]`` outputs from the attention's ``[N, H, C]``: the query residual,
        the heads joined, the root skip."""
        if self.query_residual:
            out = out + query
        out = out.reshape(out.size(0), -1) if self.concat else out.mean(dim=1)
        return out if skip is None else out + skip

    def _attend_sharded(self, x: Tensor, shard: Shard, pos: Tensor | None,
                        return_attention_weights: bool | None) -> Tensor:
        """The layer on this rank's leaf rows ``x`` ``[N_r, F]`` with :func:`~hgattn.attention.sharded_hsa`."""
        if isinstance(x, dict) or self.metadata is not None:
            raise ValueError("a Shard of a hierarchy needs a homogeneous layer and input x [N_r, F] (the rank's "
                             "leaf rows); shard a heterogeneous tree's leaf features with hierarchy.leaf_features")
        why = ("return_attention_weights" if return_attention_weights else
               "attention dropout in training" if self.training and self.dropout > 0 else
               "explain or message hooks" if self._observed() or self._propagate_forward_hooks
               or self._propagate_forward_pre_hooks else None)
        if why is not None:
            raise ValueError(f"{why} needs the attention weights, which span ranks: not available with a Shard "
                             "(run the layer on the whole hierarchy in one process)")
        check_input_dtype("x", x, self.lin.weight)
        if x.dim() != 2 or x.size(0) != shard.num_local_leaves:
            raise ValueError(f"x must be [N_r, F] with N_r={shard.num_local_leaves} leaf rows of rank "
                             f"{shard.rank}'s shard, got shape {list(x.shape)}")
        query, key, value, skip = self._project(x, None)
        out = sharded_hsa(query, key, value, shard, pos=self._positions(pos, shard),
                          include_self=self.include_self)
        return self._combine(out, query, skip)

    def message_and_aggregate(self, edge_index: Tensor, query: Tensor, key: Tensor, value: Tensor,
                              pos: Tensor | None, hierarchy: Hierarchy) -> Tensor:
        """The fused path as ``propagate`` runs it (with propagate hooks): ``[N, H, d]`` leaf outputs."""
        return self._fused(query, key, value, pos, hierarchy)

    def _fused(self, query: Tensor, key: Tensor, value: Tensor, pos: Tensor | None,
               hierarchy: Hierarchy) -> Tensor:
        """The exact operator over the whole hierarchy, ``[N, H, d]`` leaf outputs; needs no sibling pairs."""
        return hsa(query, key, value, hierarchy, pos=pos, include_self=self.include_self)

    def message(self, value_sum_j: Tensor, alpha: Tensor) -> Tensor:
        """``[P, H, d]``: attention weight of the pair's block times the value sum of the source subtree."""
        return alpha.unsqueeze(-1) * value_sum_j

    def update(self, inputs: Tensor, hierarchy: Hierarchy, value: Tensor, self_weight: Tensor | None) -> Tensor:
        """Leaf outputs ``[N, H, d]``: the fused path's as they are; the message path's per-node sums
        ``[T, H, d]`` pushed down to the leaves plus the self term."""
        if self_weight is None:
            return inputs
        return push_down(inputs, hierarchy) + self_weight.unsqueeze(-1) * value

    # ------------------------------------------------------------------ inputs
    def _non_finite_input(self, x: Tensor | dict[str, Tensor], pos: Tensor | dict[str, Tensor] | None,
                          error: str) -> str:
        """Which input of the layer holds the NaN or infinity HSA found (``error``) in its queries, keys,
        values or positions: a feature or position tensor (by node type), else a parameter."""
        named = _named_tensors(x, "x", "features") + _named_tensors(pos, "pos", "positions")
        for name, tensor in named:
            bad = (~torch.isfinite(tensor)).nonzero()
            if bad.numel():
                return f"{name} contains NaN or infinite values (first at row {int(bad[0, 0])})"
        for name, param in self.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return (f"the layer's parameter {name} contains NaN or infinite values (a diverged update?); "
                        f"HSA: {error}")
        return f"{error}: the layer's projections overflow although its inputs and parameters are finite"

    def _homogeneous_rows(self, x: Tensor, hierarchy: Hierarchy) -> tuple[Tensor, Tensor | None]:
        check_input_dtype("x", x, self.lin.weight)
        if x.dim() != 2 or x.size(0) != hierarchy.num_leaves:
            raise ValueError(f"x must be [N, F] with N={hierarchy.num_leaves} leaves of the hierarchy, "
                             f"got shape {list(x.shape)}")
        self._check_width("x", x.size(1), self.in_channels)
        return x, None

    def _leaf_rows(self, x_dict: dict[str, Tensor], hierarchy: Hierarchy) -> tuple[Tensor, Tensor]:
        """Block rows ``[N, sum F]`` (each row holds its type's features in its type's columns) and the leaf
        type ``[N]``; with a single leaf type, its features as they are and ``None``."""
        if set(hierarchy.node_slices) != set(self.metadata[0]):
            raise ValueError(f"the hierarchy's node types {sorted(hierarchy.node_slices)} do not match the "
                             f"layer's {sorted(self.metadata[0])}; build it with Hierarchy.from_hetero")
        for nt in x_dict:
            if nt not in hierarchy.node_slices:
                raise ValueError(f"x_dict has features for node type {nt!r}, which is not a node type of the "
                                 f"hierarchy ({list(hierarchy.node_slices)})")
            if nt not in self.leaf_types:
                kind = ("an inner (non-leaf) node type" if nt in self.parent_types else
                        "a node type without in_channels in this layer")
                raise ValueError(f"x_dict has features for node type {nt!r}, {kind}; only the leaf types "
                                 f"{self.leaf_types} take features")
            check_input_dtype(f"x_dict[{nt!r}] (features of node type {nt!r})", x_dict[nt], self.lin.weight)
        missing = [nt for nt in self.leaf_types if nt not in x_dict and self._num_leaves(hierarchy, nt)]
        if missing:
            raise ValueError(f"x_dict has no features for leaf node type(s) {missing}")
        widths = self._resolve_widths(x_dict)
        if len(self.leaf_types) == 1:
            return hierarchy.leaf_features({nt: x_dict[nt] for nt in self.leaf_types if nt in x_dict}), None
        total, offset, blocks, counts = sum(widths.values()), 0, {}, []
        for nt in self.leaf_types:
            if nt in x_dict:
                blocks[nt] = F.pad(x_dict[nt], (offset, total - offset - widths[nt]))
            counts.append(self._num_leaves(hierarchy, nt))
            offset += widths[nt]
        rows = hierarchy.leaf_features(blocks)
        leaf_type = torch.repeat_interleave(torch.arange(len(counts), device=rows.device),
                                            torch.tensor(counts, device=rows.device),
                                            output_size=hierarchy.num_leaves)
        return rows, leaf_type

    @staticmethod
    def _num_leaves(hierarchy: Hierarchy, node_type: str) -> int:
        start, stop = hierarchy.node_slices[node_type]
        return int(hierarchy.is_leaf[start:stop].sum())

    def _resolve_widths(self, x_dict: dict[str, Tensor]) -> dict[str, int]:
        """Feature size per leaf type; fixes lazy (``-1``) sizes on the first call."""
        for nt, size in self.in_channels.items():
            if nt in x_dict:
                x = x_dict[nt]
                if x.dim() != 2:
                    raise ValueError(f"features of node type {nt!r} must be [n, F], got {list(x.shape)}")
                self._check_width(f"features of node type {nt!r}", x.size(1), size)
                self.in_channels[nt] = x.size(1)
            elif size < 0:
                raise ValueError(f"lazy in_channels: the first call must give features of node type {nt!r}")
        return dict(self.in_channels)

    @staticmethod
    def _check_width(name: str, width: int, expected: int) -> None:
        if expected >= 0 and width != expected:
            raise ValueError(f"{name} has {width} features but the layer expects {expected}")

    def _project(self, rows: Tensor, leaf_type: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Queries, keys, values ``[N, H, d]`` and the skip term from one matrix product (``leaf_type`` ``[N]``
        picks each row's bias; ``None``: one leaf type)."""
        out = self.lin(rows)
        if self.bias is not None:
            out = out + (self.bias[0] if leaf_type is None else self.bias[leaf_type])
        width = self.heads * self.out_channels
        query, key, value, skip = out.split([width, width, width, self.skip_channels], dim=-1)
        shape = (rows.size(0), self.heads, self.out_channels)
        query, key, value = query.reshape(shape), key.reshape(shape), value.reshape(shape)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        return query, key, value, (skip if self.root_weight else None)

    def _positions(self, pos: Tensor | dict[str, Tensor] | None, hierarchy: Hierarchy | Shard) -> Tensor | None:
        """``[T, H, d]`` projected positions: each node's raw features through its family domain's matrix."""
        if pos is None or self.lin_pos is None:
            if pos is not None:
                raise ValueError("positions given to a layer built with pos_channels=0")
            return None
        raw = self._raw_positions(pos, hierarchy)
        if len(self.parent_types) == 1:
            return self.lin_pos(raw).view(-1, self.heads, self.out_channels)
        domain = self._domain_index(hierarchy)
        has_domain = domain >= 0
        blocks = raw.new_zeros(raw.size(0), len(self.parent_types), self.pos_channels)
        blocks[has_domain, domain[has_domain]] = raw[has_domain]
        return self.lin_pos(blocks.view(raw.size(0), -1)).view(-1, self.heads, self.out_channels)

    def _raw_positions(self, pos: Tensor | dict[str, Tensor], hierarchy: Hierarchy | Shard) -> Tensor:
        """``[T, pos_channels]`` raw position features of every tree node (zero-padded, zeros where absent)."""
        if isinstance(pos, dict):
            if self.metadata is None:
                raise ValueError("pos_dict given to a homogeneous layer: pass pos as a [T, C] tensor")
            if not pos:
                raise ValueError("pos_dict is empty: give positions for at least one node type, or "
                                 "pos_dict=None for no position term")
            for nt, p in pos.items():
                check_input_dtype(f"pos_dict[{nt!r}] (positions of node type {nt!r})", p, self.lin_pos.weight)
                if p.dim() != 2 or p.size(1) > self.pos_channels:
                    raise ValueError(f"positions of node type {nt!r} must be [n, C] with C <= pos_channels="
                                     f"{self.pos_channels}, got {list(p.shape)}")
            padded = {nt: F.pad(p, (0, self.pos_channels - p.size(1))) for nt, p in pos.items()}
            return hierarchy.node_features(padded)
        check_input_dtype("pos", pos, self.lin_pos.weight)
        rows, what = ((hierarchy.pos_nodes.numel(), "rows (shard.pos_nodes) with a Shard")
                      if isinstance(hierarchy, Shard) else (hierarchy.num_nodes, "tree nodes"))
        if pos.dim() != 2 or pos.size(0) != rows or pos.size(1) != self.pos_channels:
            raise ValueError(f"pos must be [T, {self.pos_channels}] with T={rows} {what}, got shape "
                             f"{list(pos.shape)}")
        return pos

    def _domain_index(self, hierarchy: Hierarchy) -> Tensor:
        """``[T]`` index of each node's parent type in ``parent_types`` (``-1`` for roots)."""
        type_of = torch.full((hierarchy.num_nodes,), -1, dtype=torch.long, device=hierarchy.device)
        for i, nt in enumerate(self.parent_types):
            start, stop = hierarchy.node_slices[nt]
            type_of[start:stop] = i
        parent = hierarchy.parent
        return torch.where(parent >= 0, type_of[parent.clamp(min=0)], -1)

    def __repr__(self) -> str:
        in_channels = -1 if isinstance(self.in_channels, dict) else self.in_channels
        return (f"{self.__class__.__name__}({in_channels}, {self.out_channels}, heads={self.heads}, "
                f"include_self={self.include_self})")


def _named_tensors(x: Tensor | dict[str, Tensor] | None, name: str, what: str) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` pairs of a layer input: one for a tensor, one per node type for a dict."""
    if x is None:
        return []
    if isinstance(x, dict):
        return [(f"{name}_dict[{nt!r}] ({what} of node type {nt!r})", value) for nt, value in x.items()]
    return [(f"{name} ({what})", x)]
