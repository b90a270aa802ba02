"""hgattn: Hierarchical Self-Attention (HSA) for PyTorch Geometric."""
from .functional import HSAAttention, hsa
from .hierarchy import Hierarchy

__version__ = "0.1.0"
__all__ = ["Hierarchy", "hsa", "HSAAttention", "__version__"]
