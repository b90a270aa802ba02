r"""Sibling edges and the two tree passes of :class:`~hgattn.nn.HSAConv`'s message path (explain mode,
message hooks, attention dropout): with the factored weights :math:`\alpha_{BS}` of
:func:`hgattn.hsa_attention`, the message along the sibling edge ``S -> B`` is
:math:`\alpha_{BS}\, n(S)\, \bar{\mathbf{v}}_S` (:func:`leaf_sums`), the messages are summed at ``B``, and
every leaf adds the sums of itself and all its ancestors (:func:`push_down`).
"""
from __future__ import annotations

from torch import Tensor

from ..hierarchy import Hierarchy
from ..walks import leaf_sums, push_down

__all__ = ["sibling_edge_index", "leaf_sums", "push_down"]


def sibling_edge_index(hierarchy: Hierarchy) -> Tensor:
    """``[2, P]`` sibling edges ``S -> B`` (row 0 source ``S``, row 1 target ``B``), in the pair order of
    :attr:`Hierarchy.sibling_index` (sorted by ``B``): the edges :class:`~hgattn.nn.HSAConv` passes messages
    over and the edges an :class:`~torch_geometric.explain.AttentionExplainer` mask refers to."""
    return hierarchy.sibling_index.flip(0)

