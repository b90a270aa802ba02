"""Hierarchical Self-Attention: the public operator and its kernels.

:func:`hsa` validates its inputs once and dispatches to a kernel: on the CPU the native kernel
(:mod:`~hgattn.attention.native`: the whole DP in C, built at install time); elsewhere, or without it, the
batched dense kernel for small trees (:mod:`~hgattn.attention.dense`) and the dynamic programme over padded
family blocks (:mod:`~hgattn.attention.dp`, whose plan lives in :mod:`~hgattn.attention.plan`); every plan is
cached on the hierarchy. Column-tied / causal HSA: :mod:`~hgattn.attention.column_tied`. :mod:`~hgattn.attention.reference`
is the plain float64 implementation every kernel is tested against.
"""
from .column_tied import column_tied_hsa
from .inputs import NonFiniteError
from .operator import HSAAttention, build_plans, hsa, hsa_attention, leaf_cover
from .sharded import CommStats, Shard, TopTree, count_communication, shard_hierarchy, sharded_hsa

__all__ = ["hsa", "hsa_attention", "HSAAttention", "leaf_cover", "build_plans", "column_tied_hsa",
           "NonFiniteError", "Shard", "TopTree", "CommStats", "shard_hierarchy", "sharded_hsa", "count_communication"]
