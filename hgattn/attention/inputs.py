"""Input validation and preparation shared by every HSA implementation."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..hierarchy import Hierarchy

__all__ = ["prepare_inputs", "self_logits"]


def prepare_inputs(query: Tensor, key: Tensor, value: Tensor, h: Hierarchy, pos: Tensor | None,
                  scale: float | None):
    """Validate the operator's inputs; return ``q, k, v`` ``[N, H, d]`` and ``pos`` ``[T, H or 1, C]`` in the
    compute dtype (float64 stays, everything else runs in float32), whether the input had one head, and the
    logit scale (default ``1 / sqrt(d)``)."""
    if not isinstance(h, Hierarchy):
        raise TypeError(f"hierarchy must be a hgattn.Hierarchy, got {type(h).__name__}")
    one_head = query.dim() == 2
    tensors = {"query": query, "key": key, "value": value}
    for name, x in tensors.items():
        if x.dim() != (2 if one_head else 3):
            raise ValueError(f"{name} must be [N, H, d] or [N, d] like query, got shape {list(x.shape)}")
        if x.size(0) != h.num_leaves:
            raise ValueError(f"{name} has {x.size(0)} rows but the hierarchy has {h.num_leaves} leaves")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != h.device:
            raise ValueError(f"{name} is on {x.device} but the hierarchy is on {h.device}; "
                             "use hierarchy.to(device)")
    if query.shape != key.shape:
        raise ValueError(f"query {list(query.shape)} and key {list(key.shape)} must have the same shape")
    if value.shape[:-1] != query.shape[:-1]:
        raise ValueError(f"value {list(value.shape)} must match query {list(query.shape)} but in the last dim")
    if one_head:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    if pos is not None:
        if pos.size(0) != h.num_nodes or pos.dim() not in (2, 3) or (
                pos.dim() == 3 and pos.size(1) != query.size(1)):
            raise ValueError(f"pos must be [T, C] or [T, H, C] with T={h.num_nodes} tree nodes and "
                             f"H={query.size(1)}, got shape {list(pos.shape)}")
        tensors["pos"] = pos
        pos = pos.unsqueeze(1) if pos.dim() == 2 else pos
    if not torch.compiler.is_compiling():
        for name, x in tensors.items():
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    pos = pos.to(dtype) if pos is not None else None
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    return query, key, value, pos, one_head, scale


def self_logits(q: Tensor, k: Tensor, pos: Tensor | None, h: Hierarchy, scale: float) -> Tensor:
    """``[N, H]`` diagonal logits ``s_ii``."""
    logit = (q * k).sum(-1) * scale
    if pos is not None:
        logit = logit + pos[h.leaf_node].square().sum(-1)
    return logit
