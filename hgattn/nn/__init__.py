"""PyG layers built on HSA, and models built from them (:mod:`hgattn.nn.models`)."""
from .conv import HSAConv
from .flat import FlatSoftmaxConv, flat_softmax_attention
from .gps import GraphHSATransformer, HSAGPSConv
from .hte import HTEBlock
from . import models
from .models import (DeepSetBlock, MoleculeGNN, MoleculeHSATransformer, NodeGCN, NodeGCNHSA, NodeGPS,
                     NodeSGFormer,
                     TreeClassifier)

__all__ = ["HSAConv", "HTEBlock", "HSAGPSConv", "GraphHSATransformer", "FlatSoftmaxConv",
           "flat_softmax_attention", "models", "DeepSetBlock", "TreeClassifier", "NodeGCN", "NodeGCNHSA", "NodeGPS",
           "NodeSGFormer", "MoleculeGNN", "MoleculeHSATransformer"]
