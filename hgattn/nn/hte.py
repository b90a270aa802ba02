r"""``HTEBlock``: the paper's Hierarchical Transformer Encoder layer (spec section 7)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, LayerNorm, Sequential
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.typing import Metadata

from ..attention import HSAAttention
from ..hierarchy import Hierarchy
from .conv import HSAConv

__all__ = ["HTEBlock"]


class HTEBlock(torch.nn.Module):
    r"""The Hierarchical Transformer Encoder (HTE) layer from the `"Hierarchical Self-Attention: Generalizing
    Neural Attention Mechanics to Multi-Scale Problems" <https://arxiv.org/abs/2509.15448>`_ paper.

    Per-modality (per node type) Q/K/V projections, LayerNorm on Q and K, multi-head HSA with the residual of
    Q inside each head, heads concatenated, then a Linear and a LayerNorm, then a pointwise feed-forward
    network with a residual:

    .. math::
        \mathbf{a}_i &= \big\Vert_{h=1}^{H} \Big( \mathbf{q}^{(h)}_i + \sum_j \Theta^{(h)}_{ij}
        \mathbf{v}^{(h)}_j \Big), \qquad
        \mathbf{h}_i = \mathrm{LN}(\mathbf{W}_O \mathbf{a}_i), \\
        \mathbf{x}^{\prime}_i &= \mathbf{h}_i + \mathrm{FFN}(\mathbf{h}_i).

    With ``norm_first=True`` (pre-norm) the LayerNorm moves to the input of the feed-forward network:
    :math:`\mathbf{h}_i = \mathbf{W}_O \mathbf{a}_i`, :math:`\mathbf{x}^{\prime}_i = \mathbf{h}_i +
    \mathrm{FFN}(\mathrm{LN}(\mathbf{h}_i))` (Q and K stay normalized in both forms). The output has
    ``channels`` features per leaf for every leaf type, so blocks stack.

    Args:
        in_channels (int or Dict[str, int]): Input size of the leaves (per leaf node type), ``-1`` for lazy.
        channels (int): Model width, divisible by ``heads``.
        metadata (Tuple[List[str], List[Tuple[str, str, str]]], optional): Node and edge types for
            heterogeneous (dict) input, ``None`` for homogeneous input. (default: ``None``)
        heads (int, optional): Number of attention heads. (default: ``1``)
        ffn_channels (int, optional): Hidden size of the feed-forward network, default ``2 * channels``.
        dropout (float, optional): Dropout on the attention, after the output projection and inside the
            feed-forward network. (default: ``0.``)
        act (str, optional): Activation of the feed-forward network. (default: ``"gelu"``)
        pos_channels (int, optional): Size of the raw position features, ``0`` for none. (default: ``0``)
        include_self (bool, optional): Let a leaf attend to itself. (default: ``False``)
        norm_first (bool, optional): Pre-norm form. (default: ``False``)
        attention (type, optional): The attention layer class, built with the arguments above:
            :class:`~hgattn.nn.HSAConv`, or :class:`~hgattn.nn.FlatSoftmaxConv` for the same block with
            flat softmax attention over each tree's leaves (homogeneous, no dropout). (default: ``HSAConv``)

    Shapes:
        - **input:** leaf features :math:`(N, F)` or a dict over leaf types, :class:`~hgattn.Hierarchy`,
          optional raw positions
        - **output:** :math:`(N, \text{channels})` or a dict over leaf types
    """

    def __init__(
        self,
        in_channels: int | dict[str, int],
        channels: int,
        metadata: Metadata | None = None,
        heads: int = 1,
        ffn_channels: int | None = None,
        dropout: float = 0.0,
        act: str = "gelu",
        pos_channels: int = 0,
        include_self: bool = False,
        norm_first: bool = False,
        attention: type[HSAConv] = HSAConv,
    ) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.in_channels = in_channels
        self.channels = channels
        self.heads = heads
        self.dropout = dropout
        self.norm_first = norm_first
        self.ffn_channels = ffn_channels or 2 * channels
        self.attn = attention(in_channels, channels // heads, metadata, heads=heads, concat=True, qk_norm=True,
                              include_self=include_self, dropout=dropout, pos_channels=pos_channels,
                              root_weight=False, query_residual=True)
        self.lin_out = Linear(channels, channels)
        self.ffn = Sequential(
            Linear(channels, self.ffn_channels),
            activation_resolver(act),
            Dropout(dropout),
            Linear(self.ffn_channels, channels),
            Dropout(dropout),
        )
        self.norm = LayerNorm(channels)

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        self.lin_out.reset_parameters()
        self.norm.reset_parameters()
        reset(self.ffn)

    def forward(
        self,
        x: Tensor | dict[str, Tensor],
        hierarchy: Hierarchy,
        pos: Tensor | dict[str, Tensor] | None = None,
        return_attention_weights: bool | None = None,
    ) -> Any:
        """Leaf outputs (a tensor or a dict over leaf types), plus the :class:`~hgattn.HSAAttention` when
        ``return_attention_weights``."""
        attention: HSAAttention | None = None
        if return_attention_weights:
            out, attention = self.attn(x, hierarchy, pos, return_attention_weights=True)
        else:
            out = self.attn(x, hierarchy, pos)
        if isinstance(out, dict):
            out = hierarchy.split_leaves(self._transform(torch.cat(list(out.values()))))
        else:
            out = self._transform(out)
        return (out, attention) if return_attention_weights else out

    def _transform(self, a: Tensor) -> Tensor:
        """Output projection, norm and feed-forward of the concatenated heads ``[n, channels]``."""
        h = F.dropout(self.lin_out(a), p=self.dropout, training=self.training)
        if self.norm_first:
            return h + self.ffn(self.norm(h))
        h = self.norm(h)
        return h + self.ffn(h)

    def __repr__(self) -> str:
        in_channels = -1 if isinstance(self.in_channels, dict) else self.in_channels
        return (f"{self.__class__.__name__}({in_channels}, {self.channels}, heads={self.heads}, "
                f"norm_first={self.norm_first})")
