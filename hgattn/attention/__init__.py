"""Hierarchical Self-Attention: the public operator and its kernels.

:func:`hsa` validates its inputs once and dispatches to a kernel: the dynamic programme over padded family
blocks (:mod:`~hgattn.attention.dp`, whose plan lives in :mod:`~hgattn.attention.plan` and is cached on the
hierarchy), or column-tied / causal HSA (:mod:`~hgattn.attention.column_tied`). :mod:`~hgattn.attention.reference`
is the plain float64 implementation every kernel is tested against.
"""
from .column_tied import column_tied_hsa
from .operator import HSAAttention, build_plans, hsa, hsa_attention, leaf_cover

__all__ = ["hsa", "hsa_attention", "HSAAttention", "leaf_cover", "build_plans", "column_tied_hsa"]
