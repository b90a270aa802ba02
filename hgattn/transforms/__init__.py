"""PyG transforms that turn data into trees (HeteroData with tree edges (child, 'in', parent))."""
from .text import TextHierarchy

