"""PyG layers built on HSA."""
from .conv import HSAConv
from .gps import GraphHSATransformer, HSAGPSConv
from .hte import HTEBlock

__all__ = ["HSAConv", "HTEBlock", "HSAGPSConv", "GraphHSATransformer"]
