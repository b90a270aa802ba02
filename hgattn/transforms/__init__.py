"""Hierarchy builders: PyG transforms that turn data into HeteroData trees (the hgattn conventions)."""
from .graph import GraphHierarchy
from .image import ImageHierarchy
from .molecule import MoleculeHierarchy
from .sequence import SequenceHierarchy
from .text import TextHierarchy
