"""Images as trees: image -> quadtree regions -> patches."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

__all__ = ["ImageHierarchy"]


class ImageHierarchy(BaseTransform):
    r"""Builds the quadtree image -> regions -> patches of an image ``[C, H, W]``.

    The image is cut into ``p x p`` patches on an ``gh x gw`` grid. Regions halve the grid recursively: a
    region at level ``l`` (``region1`` the coarsest) covers ``s_l x s_l`` patches with ``s_l`` a power of
    two, and has up to four children, the quadrants covering ``s_l / 2`` patches a side; the finest regions
    hold up to ``2 x 2`` patches. There are ``ceil(log2(max(gh, gw))) - 1`` region levels (none for a grid of
    at most ``2 x 2`` patches). Regions past the image border are not built, so border families may be
    smaller. Patches and regions of each level are numbered in raster order.

    Output ``HeteroData``:

    * ``patch`` ``[gh * gw]``: ``x`` ``[n, F]`` (flattened ``C x p x p`` pixels, or ``feature_fn(patches)``),
      ``pos`` ``[n, 2]``;
    * ``region1`` ... ``regionL`` and ``image`` ``[1]``: ``num_nodes`` and ``pos`` ``[n, 2]``;
    * tree edges ``('patch', 'in', 'regionL')``, ``('regionL', 'in', 'regionL-1')``, ...,
      ``('region1', 'in', 'image')``.

    ``pos`` is the (row, column) of a node on its parent's ``2 x 2`` grid (the quadrant), or on the patch grid
    of the image when there is no region level; zeros for the image.

    Args:
        patch_size: side ``p`` of a square patch; ``H`` and ``W`` must be multiples of it.
        feature_fn: maps patches ``[n, C, p, p]`` to features ``[n, F]``; default: flatten.
        image_key: the attribute of an input ``Data`` that holds the image.
    """

    def __init__(self, patch_size: int = 8, feature_fn: Callable[[Tensor], Tensor] | None = None,
                 image_key: str = "image") -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.feature_fn = feature_fn
        self.image_key = image_key

    def forward(self, data: Data) -> HeteroData:
        """The tree of ``data[image_key]``; every other attribute of ``data`` (e.g. ``y``) is carried over."""
        image = getattr(data, self.image_key, None)
        if image is None:
            raise ValueError(f"ImageHierarchy: the input has no {self.image_key!r} attribute")
        out = self.build(image)
        for key, value in data.items():
            if key != self.image_key:
                setattr(out, key, value)
        return out

    def build(self, image: Tensor) -> HeteroData:
        """The tree of one image ``[C, H, W]`` (float, or uint8 scaled to ``[0, 1]``)."""
        patches, rows, cols = self.patches(image)
        x = patches.flatten(1) if self.feature_fn is None else self.feature_fn(patches)
        if x.dim() != 2 or x.size(0) != patches.size(0):
            raise ValueError(f"ImageHierarchy: feature_fn must return [{patches.size(0)}, F], got {list(x.shape)}")
        num_levels = max(math.ceil(math.log2(max(rows.max().item(), cols.max().item()) + 1)) - 1, 0)
        data = HeteroData()
        data["patch"].x = x
        data["patch"].num_nodes = x.size(0)
        child, child_rows, child_cols = "patch", rows, cols
        for level in range(num_levels, 0, -1):
            parent_rows, parent_cols = child_rows // 2, child_cols // 2
            width = int(parent_cols.max()) + 1
            unique_keys, index = torch.unique(parent_rows * width + parent_cols, return_inverse=True)
            region = f"region{level}"
            _link(data, child, region, index, torch.stack([child_rows % 2, child_cols % 2], 1))
            data[region].num_nodes = unique_keys.numel()
            child, child_rows, child_cols = region, unique_keys // width, unique_keys % width
        grid = torch.stack([child_rows, child_cols], 1) if num_levels == 0 else torch.stack(
            [child_rows % 2, child_cols % 2], 1)
        _link(data, child, "image", torch.zeros_like(child_rows), grid)
        data["image"].num_nodes = 1
        data["image"].pos = torch.zeros(1, 2)
        return data

    def patches(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patches ``[n, C, p, p]`` in raster order, with their grid row and column ``[n]``."""
        if not isinstance(image, Tensor) or image.dim() != 3:
            raise ValueError(f"ImageHierarchy: expected an image tensor [C, H, W], got "
                             f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
        channels, height, width = image.shape
        p = self.patch_size
        if height == 0 or width == 0 or height % p or width % p:
            raise ValueError(f"ImageHierarchy: image size {height}x{width} is not a positive multiple of "
                             f"patch_size={p}")
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        grid_h, grid_w = height // p, width // p
        patches = image.reshape(channels, grid_h, p, grid_w, p).permute(1, 3, 0, 2, 4).reshape(-1, channels, p, p)
        cells = torch.arange(grid_h * grid_w)
        return patches, cells // grid_w, cells % grid_w

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(patch_size={self.patch_size})"


def _link(data: HeteroData, child: str, parent: str, index: Tensor, grid: Tensor) -> None:
    """Tree edges from every ``child`` node to its ``parent`` row ``index``, and the child's 2-D position."""
    data[child].pos = grid.float()
    data[child, "in", parent].edge_index = torch.stack([torch.arange(index.numel()), index])
