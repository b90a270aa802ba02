"""Deprecated location of column-tied and causal HSA: use :mod:`hgattn.attention.column_tied`."""
from .attention.column_tied import TIES, attended_summaries, check_depth_first, column_tied_hsa

__all__ = ["column_tied_hsa", "check_depth_first", "attended_summaries", "TIES"]
