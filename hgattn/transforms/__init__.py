"""Hierarchy builders: PyG transforms that turn data into HeteroData trees (the hgattn conventions)."""
from .graph import GraphHierarchy
from .sequence import SequenceHierarchy
