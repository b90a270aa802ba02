"""hgattn: Hierarchical Self-Attention for PyTorch Geometric."""
__version__ = "0.1.0"
