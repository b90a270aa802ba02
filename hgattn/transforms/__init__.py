"""Hierarchy builders: PyG transforms that turn data into HeteroData trees (the hgattn conventions)."""
from .code import CodeHierarchy
from .flatten import FlattenHierarchy
from .graph import GraphHierarchy
from .image import ImageHierarchy
from .molecule import MoleculeHierarchy
from .multimodal import MultimodalHierarchy, compose_key_value
from .sequence import SequenceHierarchy
from .text import TextHierarchy

__all__ = ["FlattenHierarchy", "GraphHierarchy", "ImageHierarchy", "MoleculeHierarchy", "MultimodalHierarchy",
           "SequenceHierarchy", "TextHierarchy", "compose_key_value", "CodeHierarchy"]
