"""PyG layers built on HSA."""
from .conv import HSAConv
