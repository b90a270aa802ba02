"""Deprecated location: flat softmax attention lives in :mod:`hgattn.nn.flat`."""
from ..nn.flat import FlatSoftmaxConv, flat_softmax_attention  # noqa: F401

__all__ = ["FlatSoftmaxConv", "flat_softmax_attention"]
