"""Deprecated location of the float64 reference: use :mod:`hgattn.attention.reference`."""
from .attention.reference import attention_matrix, flat_logits, hsa_reference

__all__ = ["attention_matrix", "hsa_reference", "flat_logits"]
