"""Deprecated location of the HSA operator: use :mod:`hgattn.attention` (and :mod:`hgattn.walks`)."""
from .attention.operator import HSAAttention, hsa, hsa_attention, leaf_cover
from .walks import leaf_sums, node_means

__all__ = ["hsa", "hsa_attention", "HSAAttention", "leaf_cover", "leaf_sums", "node_means"]
