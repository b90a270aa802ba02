"""Fixed non-overlapping windows over a sequence: the paper's zero-shot hierarchy."""
from __future__ import annotations

from typing import Sequence

import torch
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from ..encodings import sinusoidal
from .graph import copy_graph

__all__ = ["SequenceHierarchy"]


class SequenceHierarchy(BaseTransform):
    r"""Groups a sequence bottom-up into windows: elements by ``branching[0]``, those by ``branching[1]``...

    The tree is the one :meth:`hgattn.Hierarchy.from_windows` builds: an int ``branching`` repeats until one
    node is left; after a tuple is used up, one root takes what remains; the last window of a level may be
    partial. A sequence of one element gets a root over it.

    Output (a :class:`~torch_geometric.data.HeteroData`, the hgattn tree conventions): the elements as
    ``leaf_type`` in sequence order with every node attribute of the input (``pos`` renamed ``input_pos``),
    group types ``'level1'`` (windows of elements), ``'level2'``, ... and ``'root'``, tree edges
    ``(child, 'in', parent)``, and ``pos`` ``[n_type, pe_dim]`` on every type: the :func:`sinusoidal` encoding
    of a node's index within its window (zeros for the root).

    Args:
        branching: window size per level, bottom-up (each >= 2), or one size for every level.
        pe_dim: width of ``pos`` (even; 0: no ``pos``).
        leaf_type: node type of the elements.
        full_depth: with a tuple ``branching``, always build ``len(branching)`` levels under the root (windows
            with one child fill the top of short sequences), so that sequences of any length share node types
            and batch together.
    """

    def __init__(self, branching: int | Sequence[int] = (2, 4, 8, 16), pe_dim: int = 8,
                 leaf_type: str = "token", full_depth: bool = False) -> None:
        widths = [branching] if isinstance(branching, int) else list(branching)
        if not widths or min(widths) < 2:
            raise ValueError(f"SequenceHierarchy: branching factors must be >= 2, got {branching}")
        if pe_dim < 0 or pe_dim % 2:
            raise ValueError(f"SequenceHierarchy: pe_dim must be a non-negative even number, got {pe_dim}")
        if full_depth and isinstance(branching, int):
            raise ValueError("SequenceHierarchy: full_depth needs a tuple of branching factors (an int "
                             "repeats until one node is left, so the depth grows with the length)")
        if leaf_type == "root" or leaf_type.startswith("level"):
            raise ValueError(f"SequenceHierarchy: leaf_type {leaf_type!r} clashes with the group type names")
        self.branching = branching if isinstance(branching, int) else tuple(widths)
        self.pe_dim, self.leaf_type, self.full_depth = pe_dim, leaf_type, full_depth

    def forward(self, data: Data | int) -> HeteroData:
        """``data``: a ``Data`` (its length is ``x.size(0)``, else ``num_nodes``) or a length."""
        length = _length(data)
        out = copy_graph(data, length, self.leaf_type) if isinstance(data, Data) else HeteroData()
        out[self.leaf_type].num_nodes = length
        widths = self.window_sizes(length)
        names = [self.leaf_type] + [f"level{j}" for j in range(1, len(widths))] + ["root"]
        size = length
        for level, width in enumerate(widths):
            index = torch.arange(size)
            up = -(-size // width)
            out[names[level + 1]].num_nodes = up
            out[names[level], "in", names[level + 1]].edge_index = torch.stack([index, index // width])
            if self.pe_dim:
                out[names[level]].pos = sinusoidal(index % width, self.pe_dim)
            size = up
        if self.pe_dim:
            out["root"].pos = torch.zeros(1, self.pe_dim)
        return out

    def window_sizes(self, length: int) -> list[int]:
        """Window size of each level, bottom-up; the last is the root's (its window covers what remains)."""
        widths = [self.branching] if isinstance(self.branching, int) else list(self.branching)
        if self.full_depth:
            size = length
            for width in widths:
                size = -(-size // width)
            return widths + [size]
        sizes, size = [], length
        while size > 1 or not sizes:
            if len(sizes) < len(widths):
                width = widths[len(sizes)]
            else:
                width = self.branching if isinstance(self.branching, int) else size
            sizes.append(width)
            size = -(-size // width)
        return sizes

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(branching={self.branching}, pe_dim={self.pe_dim}, "
                f"leaf_type={self.leaf_type!r}, full_depth={self.full_depth})")


def _length(data: Data | int) -> int:
    if isinstance(data, bool) or not isinstance(data, (int, Data)):
        raise ValueError(f"SequenceHierarchy expects a Data object or a length, got {type(data).__name__}")
    if isinstance(data, int):
        length = data
    elif data.x is not None:
        length = data.x.size(0)
    else:
        length = data.num_nodes or 0
    if length < 1:
        raise ValueError(f"SequenceHierarchy: empty sequence (length {length})")
    return int(length)
