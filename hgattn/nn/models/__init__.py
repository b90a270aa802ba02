"""Models built from hgattn's layers: tree classifiers, node classifiers, molecule property predictors, code
(AST) models; each takes a PyG batch and returns logits."""
from .code import ASTNodeEncoder, CodeGNN, CodeTransformer, SequenceHead
from .molecule import MoleculeGNN, MoleculeHSATransformer
from .node import NodeGCN, NodeGCNHSA, NodeGPS, NodeSGFormer
from .tree import DeepSetBlock, TreeClassifier, flat_hte_block, tree_positions

__all__ = ["DeepSetBlock", "TreeClassifier", "flat_hte_block", "tree_positions", "NodeGCN", "NodeGCNHSA",
           "NodeGPS", "NodeSGFormer", "MoleculeGNN", "MoleculeHSATransformer", "ASTNodeEncoder", "CodeGNN",
           "CodeTransformer", "SequenceHead"]
