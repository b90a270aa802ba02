"""Input validation and preparation shared by every HSA implementation."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..hierarchy import NEG, Hierarchy
from ..walks import leaf_sums

__all__ = ["NonFiniteError", "prepare_inputs", "self_logits", "check_finite", "overflow_cause"]

#: Logit magnitude from which HSA's arithmetic breaks down: the kernels stand ``NEG`` (-1e30) in for log(0).
LOGIT_LIMIT = -NEG / 10


class NonFiniteError(ValueError):
    """NaN or infinite values in an input of HSA (``source`` names it: ``'query'``, ``'key'``, ``'value'``,
    ``'pos'``) or in its result from finite inputs (``source == 'output'``: an overflow)."""

    def __init__(self, message: str, source: str) -> None:
        super().__init__(message)
        self.source = source


def prepare_inputs(query: Tensor, key: Tensor, value: Tensor, h: Hierarchy, pos: Tensor | None,
                   scale: float | None, finite: bool = True):
    """Validate the operator's inputs; return ``q, k, v`` ``[N, H, d]`` and ``pos`` ``[T, H or 1, C]`` in the
    compute dtype (float64 stays, everything else runs in float32), whether the input had one head, and the
    logit scale (default ``1 / sqrt(d)``).

    ``finite``: check here that the inputs hold no NaN or infinity (one host sync); callers that check them
    together with their output (:func:`check_finite`) pass ``False``."""
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
    _check_sizes(query, value, one_head)
    if one_head:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    if pos is not None:
        if pos.size(0) != h.num_nodes or pos.dim() not in (2, 3) or (
                pos.dim() == 3 and pos.size(1) != query.size(1)):
            raise ValueError(f"pos must be [T, C] or [T, H, C] with T={h.num_nodes} tree nodes and "
                             f"H={query.size(1)}, got shape {list(pos.shape)}")
        if pos.device != h.device:
            raise ValueError(f"pos is on {pos.device} but the hierarchy is on {h.device}")
        tensors["pos"] = pos
        pos = pos.unsqueeze(1) if pos.dim() == 2 else pos
    if finite:
        check_finite(tensors)
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    pos = pos.to(dtype) if pos is not None else None
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return query, key, value, pos, one_head, scale


def _check_sizes(query: Tensor, value: Tensor, one_head: bool) -> None:
    if not one_head and query.size(1) == 0:
        raise ValueError(f"query has 0 heads (shape {list(query.shape)}); HSA needs at least one")
    for name, x in (("query", query), ("value", value)):
        if x.size(-1) == 0:
            raise ValueError(f"{name} has 0 features per head (shape {list(x.shape)})")


def check_finite(inputs: Mapping[str, Tensor | None], outputs: Sequence[Tensor] = (),
                 overflow: Callable[[], str] | None = None) -> None:
    """Raise :class:`NonFiniteError` when an input (by name) or an output holds NaN or infinity.

    One host sync when all is finite (one flag over the sums of all tensors: a finite sum has finite
    entries); more only to find the culprit. ``overflow()`` explains a non-finite output of finite inputs.
    Skipped under ``torch.compile`` (data-dependent control flow)."""
    if torch.compiler.is_compiling():
        return
    tensors = [x for x in inputs.values() if x is not None] + list(outputs)
    sums = [(x.sum(dtype=torch.float32) if x.element_size() < 4 else x.sum()).float() for x in tensors]
    if bool(torch.isfinite(torch.stack(sums)).all()):
        return
    for name, x in inputs.items():
        if x is not None and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"{name} contains NaN or infinite values", name)
    if not all(bool(torch.isfinite(x).all()) for x in outputs):
        message = overflow() if overflow else "the result contains NaN or infinite values"
        raise NonFiniteError(message, "output")


def overflow_cause(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, h: Hierarchy, scale: float) -> str:
    """Why HSA of finite prepared inputs gave NaN or infinity: sums over subtrees (the node means) or logits
    beyond the compute dtype, measured in float64."""
    dtype = q.dtype
    largest = torch.finfo(dtype).max
    causes, means = [], {}
    for name, x in (("query", q), ("key", k), ("value", v)):
        sums = leaf_sums(x.double(), h)
        peak = float(sums.abs().max())
        if peak > largest:
            causes.append(f"the sums of {name} over a subtree reach {peak:.3g}, beyond {largest:.3g}")
        means[name] = sums / h.leaf_count.double().view(-1, 1, 1)
    bound = float(means["query"].norm(dim=-1).max() * means["key"].norm(dim=-1).max() * abs(scale))
    if pos is not None:
        bound += float(pos.double().square().sum(-1).max())
    if bound >= LOGIT_LIMIT:
        causes.append(f"the attention logits reach ~{bound:.3g} (|mean query| |mean key| scale + |pos|^2), "
                      f"which must stay well below the {-NEG:g} standing for log(0)")
    if not causes:
        return ("HSA gave NaN or infinite values from finite inputs whose subtree sums and logits "
                f"(|logit| <= ~{bound:.3g}) are in range; please report it with the inputs")
    return (f"HSA overflow in {dtype}: " + "; ".join(causes) + ". Scale the inputs down (e.g. LayerNorm "
            "query and key, as HSAConv's qk_norm does), lower scale, or compute in float64")


def self_logits(q: Tensor, k: Tensor, pos: Tensor | None, h: Hierarchy, scale: float) -> Tensor:
    """``[N, H]`` diagonal logits ``s_ii``."""
    logit = (q * k).sum(-1) * scale
    if pos is not None:
        logit = logit + pos[h.leaf_node].square().sum(-1)
    return logit
