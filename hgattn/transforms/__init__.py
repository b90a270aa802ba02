"""PyG transforms that turn data into trees (HeteroData with tree edges (child, 'in', parent))."""
from .image import ImageHierarchy
from .text import TextHierarchy

