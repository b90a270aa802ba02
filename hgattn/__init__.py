"""hgattn: Hierarchical Self-Attention (HSA) for PyTorch Geometric."""
from .attention import HSAAttention, hsa, hsa_attention
from .hierarchy import Hierarchy
from .sharding import GraphShard, halo_exchange, shard_graph

__version__ = "0.1.0"
__all__ = ["Hierarchy", "hsa", "hsa_attention", "HSAAttention", "GraphShard", "shard_graph", "halo_exchange",
           "__version__"]
