"""Deprecated location: the models live in :mod:`hgattn.nn.models`."""
from ..nn.models import (DeepSetBlock, MoleculeGNN, MoleculeHSATransformer, NodeGCN, NodeGPS, NodeSGFormer,
                         TreeClassifier, flat_hte_block, tree_positions)

__all__ = ["DeepSetBlock", "TreeClassifier", "flat_hte_block", "tree_positions", "NodeGCN", "NodeGPS",
           "NodeSGFormer", "MoleculeGNN", "MoleculeHSATransformer"]
