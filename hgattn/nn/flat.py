"""Flat softmax attention (FSA): HSA on a one-level tree, computed as dense softmax attention per tree.

On a tree whose leaves are all children of the root, HSA is exactly softmax attention over the leaves (spec
section 4, "flat tree = softmax"). ``hgattn.hsa`` handles such wide families through its general dense family
blocks, which is slow for families of hundreds of leaves; :class:`FlatSoftmaxConv` computes the same values
with ``scaled_dot_product_attention`` tree by tree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hierarchy import Hierarchy
from .conv import HSAConv

__all__ = ["flat_softmax_attention", "FlatSoftmaxConv"]


def flat_softmax_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    batch: Tensor,
    pos: Tensor | None = None,
    include_self: bool = False,
) -> Tensor:
    r"""Softmax attention among the leaves of each tree, logits :math:`\mathbf{q}_i^\top \mathbf{k}_j /
    \sqrt{d} + \langle \mathbf{p}_i, \mathbf{p}_j \rangle` over :math:`j \neq i` (all :math:`j` with
    ``include_self``); a leaf with no target gets zeros.

    Args:
        query, key, value: ``[N, H, d]`` leaf rows, grouped by tree (``batch`` sorted).
        batch: ``[N]`` tree index of each leaf.
        pos: optional ``[N, H, d]`` projected leaf positions.
        include_self: let a leaf attend to itself.

    Returns:
        ``[N, H, d]``.
    """
    if query.dim() != 3 or query.shape != key.shape or query.shape[:2] != value.shape[:2]:
        raise ValueError(
            f"query/key must be [N, H, d] and value [N, H, d_v], got {list(query.shape)}, "
            f"{list(key.shape)}, {list(value.shape)}"
        )
    q = query * query.size(-1) ** -0.5
    k = key
    if pos is not None:
        q, k = torch.cat([q, pos], dim=-1), torch.cat([k, pos], dim=-1)
    sizes = torch.bincount(batch).tolist()
    outs = [
        _tree_attention(*parts, include_self)
        for parts in zip(q.split(sizes), k.split(sizes), value.split(sizes))
        if parts[0].size(0)
    ]
    return torch.cat(outs)


def _tree_attention(q: Tensor, k: Tensor, v: Tensor, include_self: bool) -> Tensor:
    """Softmax attention among the ``n`` rows of one tree, ``[n, H, d]`` (no padding, no batch mask)."""
    n = q.size(0)
    if n == 1 and not include_self:
        return torch.zeros_like(v)
    mask = None if include_self else ~torch.eye(n, dtype=torch.bool, device=q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=1.0
    )
    return out.transpose(0, 1)


class FlatSoftmaxConv(HSAConv):
    """Homogeneous :class:`~hgattn.nn.HSAConv` (same parameters, same arguments) with flat softmax attention
    among the leaves of each tree (FSA, the baseline HSA is compared with): the tree is flattened, every leaf
    attends to every leaf of its tree. Called with the same :class:`~hgattn.Hierarchy` as HSA, or with the tree
    index of each leaf (a flattened forest is fully described by it), and computed by
    :func:`flat_softmax_attention`: no sibling pairs are built, which for families of hundreds of leaves costs
    more than the attention itself.

    Shapes: leaf features ``[N, F]``, a hierarchy over ``N`` leaves or the tree index ``[N]`` (sorted), raw leaf
    positions ``[N, pos_channels]`` (optional) to ``[N, heads * out_channels]`` (``[N, out_channels]`` without
    ``concat``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.metadata is not None:
            raise ValueError("FlatSoftmaxConv is homogeneous: build it with metadata=None")
        if self.dropout > 0:
            raise ValueError("FlatSoftmaxConv: attention dropout is not supported, use dropout=0")

    def forward(
        self,
        x: Tensor,
        batch: Tensor | Hierarchy,
        pos: Tensor | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor:
        if return_attention_weights:
            raise ValueError("FlatSoftmaxConv does not return attention weights")
        if isinstance(batch, Hierarchy):
            if batch.num_leaves != x.size(0):
                raise ValueError(f"x has {x.size(0)} rows but the hierarchy has {batch.num_leaves} leaves")
            batch = batch.batch
        if x.dim() != 2 or batch.shape != (x.size(0),):
            raise ValueError(f"x must be [N, F] and batch [N], got {list(x.shape)} and {list(batch.shape)}")
        query, key, value, skip = self._project(x, None)
        leaf_pos = None
        if pos is not None:
            if self.lin_pos is None or pos.shape != (x.size(0), self.pos_channels):
                raise ValueError(f"pos must be [N, pos_channels={self.pos_channels}], got {list(pos.shape)}")
            leaf_pos = self.lin_pos(pos).view(-1, self.heads, self.out_channels)
        out = flat_softmax_attention(query, key, value, batch, leaf_pos, self.include_self)
        if self.query_residual:
            out = out + query
        out = out.reshape(out.size(0), -1) if self.concat else out.mean(dim=1)
        return out + skip if skip is not None else out
