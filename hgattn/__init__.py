"""hgattn: Hierarchical Self-Attention (HSA) for PyTorch Geometric."""
from .attention import HSAAttention, hsa, hsa_attention
from .hierarchy import Hierarchy

__version__ = "0.1.0"
__all__ = ["Hierarchy", "hsa", "hsa_attention", "HSAAttention", "__version__"]
