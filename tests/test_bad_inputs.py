"""Bad input to every public constructor and layer, one table row each: the call, the exception it must raise
and a pattern of the message, which must name the problem (the offending value, key or node type). Valid edge
cases (single leaves, unary chains, forests, empty leaf types, half precision) are controls that must succeed.
Also: validation is linear, a 1M-node cycle is rejected within seconds and a 40k-deep chain builds quickly."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Data, HeteroData

from hgattn import Hierarchy, hsa, hsa_attention
from hgattn.nn import GraphHSATransformer, HSAConv, HSAGPSConv, HTEBlock
from hgattn.transforms import (FlattenHierarchy, GraphHierarchy, ImageHierarchy, MoleculeHierarchy,
                               MultimodalHierarchy, SequenceHierarchy, TextHierarchy, compose_key_value)
from conftest import require_native_kernel
from trees import UNARY_CHAIN, UNBALANCED, forest

NAN = float("nan")
METADATA = (["token", "patch", "sentence", "doc"],
            [("token", "in", "sentence"), ("sentence", "in", "doc"), ("patch", "in", "doc")])


@dataclass(frozen=True)
class Probe:
    """A bad call: ``call()`` must raise ``error`` with a message matching ``match``."""

    name: str
    call: Callable[[], Any]
    error: type[BaseException]
    match: str


@dataclass(frozen=True)
class Control:
    """A valid edge case: ``call()`` must succeed and ``check`` its result must hold."""

    name: str
    call: Callable[[], Any]
    check: Callable[[Any], bool] = lambda result: True


# ---------------------------------------------------------------------- inputs
def document(num_patches: int = 3, token_dim: int = 6, patch_dim: int = 4) -> HeteroData:
    """doc -> {2 sentences -> 5 tokens, patches}, with positions on every type."""
    data = HeteroData()
    data["token"].x = torch.randn(5, token_dim)
    data["token"].pos = torch.randn(5, 2)
    data["patch"].x = torch.randn(num_patches, patch_dim)
    data["sentence"].num_nodes = 2
    data["sentence"].pos = torch.randn(2, 2)
    data["doc"].num_nodes = 1
    data["token", "in", "sentence"].edge_index = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 1]])
    data["sentence", "in", "doc"].edge_index = torch.tensor([[0, 1], [0, 0]])
    data["patch", "in", "doc"].edge_index = torch.stack(
        [torch.arange(num_patches), torch.zeros(num_patches, dtype=torch.long)])
    return data


def hetero_call(change: Callable[[dict, dict], None] | None = None, num_patches: int = 3,
                **layer: Any) -> Any:
    """Run a heterogeneous HSAConv on :func:`document` after ``change(x_dict, pos_dict)``."""
    data = document(num_patches)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv({"token": 6, "patch": 4}, 4, METADATA, heads=2, pos_channels=2, **layer)
    x_dict = {"token": data["token"].x, "patch": data["patch"].x}
    pos_dict = {"token": data["token"].pos, "sentence": data["sentence"].pos}
    if change is not None:
        change(x_dict, pos_dict)
    return conv(x_dict, h, pos_dict)


def tree() -> Hierarchy:
    """A forest of two trees, LEAVES leaves and NODES nodes."""
    return Hierarchy.from_parent(forest(UNBALANCED, UNARY_CHAIN))


LEAVES, NODES = 9, 16


def homogeneous_call(x: torch.Tensor | None = None, pos: torch.Tensor | None = None, **layer: Any) -> Any:
    h = tree()
    conv = HSAConv(8, 4, heads=2, **layer)
    return conv(torch.randn(h.num_leaves, 8) if x is None else x, h, pos)


def big_tree() -> Hierarchy:
    """A tree too large for the dense kernel (the DP runs when the native kernel is off)."""
    return Hierarchy.from_windows(200, 4)


def on_the_native_kernel(call: Callable[..., Any], **kwargs: Any) -> Any:
    """``call(**kwargs)`` where the native kernel is built (see :func:`conftest.require_native_kernel`)."""
    require_native_kernel()
    return call(**kwargs)


def on_the_pytorch_kernels(call: Callable[..., Any], **kwargs: Any) -> Any:
    """``call(**kwargs)`` with the native kernel off: small trees take the dense kernel, larger ones the DP."""
    import hgattn.attention.native as native

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "WIDE_SHARE", -1.0)
        return call(**kwargs)


def operator_call(fill_q: float | None = None, fill_k: float | None = None, fill_v: float | None = None,
                  heads: int = 2, dim: int = 4, hierarchy: Hierarchy | None = None,
          **kwargs: Any) -> torch.Tensor:
    """``hsa`` on ``hierarchy`` (default :func:`tree`) with random inputs, or inputs of one value
    (``fill_*``)."""
    h = tree() if hierarchy is None else hierarchy
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h.num_leaves, heads, dim, generator=gen) if fill is None else
               torch.full((h.num_leaves, heads, dim), fill) for fill in (fill_q, fill_k, fill_v))
    return hsa(q, k, v, h, **kwargs)


def with_nan(x: torch.Tensor, row: int = 1) -> torch.Tensor:
    x = x.clone()
    x[row, 0] = NAN
    return x


def cycle(num_nodes: int) -> torch.Tensor:
    return torch.roll(torch.arange(num_nodes), -1)


def self_containing_list() -> list:
    nested: list = ["a"]
    nested.append(nested)
    return nested


def mutually_containing_lists() -> list:
    outer: list = ["a"]
    inner: list = ["b", outer]
    outer.append(inner)
    return outer


def gps_call(x: torch.Tensor, channels: int = 8, **layer: Any) -> Any:
    h = Hierarchy.from_windows(x.size(0), 4)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    return HSAGPSConv(channels, None, heads=2, norm=None, **layer)(x, edge_index, h)


def graph_transformer_call(x: torch.Tensor) -> Any:
    h = Hierarchy.from_windows(x.size(0), 4)
    model = GraphHSATransformer(4, 8, 3, conv="gin", norm=None)
    return model(x, torch.tensor([[0, 1], [1, 0]]), h)


def hte_call(x_change: Callable[[dict], None]) -> Any:
    data = document()
    h = Hierarchy.from_hetero(data)
    block = HTEBlock({"token": 6, "patch": 4}, 8, METADATA, heads=2)
    x_dict = {"token": data["token"].x, "patch": data["patch"].x}
    x_change(x_dict)
    return block(x_dict, h)


def set_item(key: str, value: Any) -> Callable[[dict, dict], None]:
    def change(x_dict: dict, pos_dict: dict) -> None:
        x_dict[key] = value(x_dict) if callable(value) else value
    return change


def one_tree_field() -> HeteroData:
    return SequenceHierarchy((2,), pe_dim=0)(4)


# ---------------------------------------------------------------------- the table
HIERARCHY_PROBES = [
    Probe("parent empty", lambda: Hierarchy.from_parent(torch.zeros(0, dtype=torch.long)), ValueError,
          "empty hierarchy"),
    Probe("parent empty list", lambda: Hierarchy.from_parent([]), ValueError, "empty hierarchy"),
    Probe("parent out of range", lambda: Hierarchy.from_parent([-1, 0, 5]), ValueError,
          r"node 2 has parent 5, out of range"),
    Probe("parent below -1", lambda: Hierarchy.from_parent([-1, -2]), ValueError, "node 1 has parent -2"),
    Probe("parent self loop", lambda: Hierarchy.from_parent([-1, 1]), ValueError, "node 1 is its own parent"),
    Probe("parent 3-cycle", lambda: Hierarchy.from_parent([-1, 2, 3, 1, 0]), ValueError,
          "cycle in the hierarchy: node 1 -> node 2 -> node 3 -> node 1"),
    Probe("parent no root", lambda: Hierarchy.from_parent([1, 0]), ValueError, "cycle.*node 0 -> node 1"),
    Probe("parent 50k cycle", lambda: Hierarchy.from_parent(cycle(50_000)), ValueError,
          r"cycle in the hierarchy: node 0 -> node 1 -> "),
    Probe("parent cycle below a tree", lambda: Hierarchy.from_parent([-1, 0, 3, 4, 2, 0]), ValueError,
          "node 2 -> node 3 -> node 4 -> node 2"),
    Probe("parent 2-D", lambda: Hierarchy.from_parent(torch.tensor([[-1, 0]])), ValueError, "1-D"),
    Probe("parent 0-D", lambda: Hierarchy.from_parent(torch.tensor(-1)), ValueError, "1-D"),
    Probe("parent float", lambda: Hierarchy.from_parent(torch.tensor([-1.0, 0.0])), ValueError,
          "integer node ids.*float32"),
    Probe("parent float list", lambda: Hierarchy.from_parent([-1, 0.5]), ValueError, "integer node ids"),
    Probe("parent numpy float", lambda: Hierarchy.from_parent(np.array([-1.0, 0.0])), ValueError,
          "integer node ids.*float64"),
    Probe("parent complex", lambda: Hierarchy.from_parent(torch.tensor([-1, 0], dtype=torch.complex64)),
          ValueError, "integer node ids.*complex64"),
    Probe("parent bool", lambda: Hierarchy.from_parent(torch.tensor([True, False])), ValueError,
          "integer node ids.*bool"),
    Probe("parent None entry", lambda: Hierarchy.from_parent([-1, None, 0]), ValueError,
          r"integer node ids.*entry 1 is None"),
    Probe("parent string entries", lambda: Hierarchy.from_parent(["-1", "0"]), ValueError,
          r"integer node ids.*entry 0 is '-1'"),
    Probe("parent string", lambda: Hierarchy.from_parent("-1 0"), ValueError, r"integer node ids.*'-1 0'"),
    Probe("parent ragged", lambda: Hierarchy.from_parent([[-1], [0, 0]]), ValueError, "integer node ids"),
    Probe("constructor complex", lambda: Hierarchy(torch.tensor([-1, 0], dtype=torch.complex128)), ValueError,
          "complex128"),

    Probe("edges two parents", lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2, 2], [0, 0, 1]])),
          ValueError, "node 2 has two parents: node 0, node 1"),
    Probe("edges negative id",
          lambda: Hierarchy.from_edge_index(torch.tensor([[1, -3], [0, 0]]), num_nodes=3),
          ValueError, "edge 1 has child id -3, out of range"),
    Probe("edges negative id, no num_nodes",
          lambda: Hierarchy.from_edge_index(torch.tensor([[1, -3], [0, 0]])),
          ValueError, "-3"),
    Probe("edges id past num_nodes", lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2], [0, 0]]),
                                                                       num_nodes=2),
          ValueError, r"child id 2, out of range \[0, 2\)"),
    Probe("edges cycle", lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2, 3], [2, 3, 1]]), num_nodes=4),
          ValueError, "cycle"),
    Probe("edges shape", lambda: Hierarchy.from_edge_index(torch.tensor([1, 2])), ValueError,
          r"shape \[2, E\]"),
    Probe("edges 3 rows", lambda: Hierarchy.from_edge_index(torch.zeros(3, 2, dtype=torch.long)), ValueError,
          r"shape \[2, E\]"),
    Probe("edges float ids", lambda: Hierarchy.from_edge_index(torch.tensor([[1.0, 2.0], [0.0, 0.0]])),
          ValueError, "integer node ids.*float32"),
    Probe("edges fractional ids", lambda: Hierarchy.from_edge_index(torch.tensor([[1.5, 2.0], [0.0, 0.0]])),
          ValueError, "integer node ids.*float32"),
    Probe("edges complex ids", lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2], [0, 0]],
                                                                              dtype=torch.complex64)),
          ValueError, "integer node ids.*complex64"),
    Probe("edges bool ids", lambda: Hierarchy.from_edge_index(torch.tensor([[True], [False]])), ValueError,
          "integer node ids.*bool"),
    Probe("edges id 2**33", lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2**33], [0, 0]])), ValueError,
          r"largest id is 8589934592.*3 distinct nodes.*num_nodes"),
    Probe("edges None entry", lambda: Hierarchy.from_edge_index([[1, None], [0, 0]]), ValueError,
          r"integer node ids.*entry \[0\]\[1\] is None"),
    Probe("edges empty", lambda: Hierarchy.from_edge_index(torch.zeros(2, 0, dtype=torch.long)), ValueError,
          "empty hierarchy"),
    Probe("edges num_nodes negative",
          lambda: Hierarchy.from_edge_index(torch.tensor([[1], [0]]), num_nodes=-1),
          ValueError, "num_nodes must be"),
    Probe("edges num_nodes float", lambda: Hierarchy.from_edge_index(torch.tensor([[1], [0]]), num_nodes=2.5),
          ValueError, "num_nodes must be"),

    Probe("nested self-containing", lambda: Hierarchy.from_nested(self_containing_list()), ValueError,
          "contains itself"),
    Probe("nested mutually containing", lambda: Hierarchy.from_nested(mutually_containing_lists()),
          ValueError, "contains itself"),
    Probe("nested forest self-containing",
          lambda: Hierarchy.from_nested([self_containing_list()], forest=True),
          ValueError, "contains itself"),
    Probe("nested empty list", lambda: Hierarchy.from_nested([["a"], []]), ValueError,
          "node 3 is an empty list"),
    Probe("nested empty forest", lambda: Hierarchy.from_nested([], forest=True), ValueError, "empty input"),
    Probe("nested forest of a non-list", lambda: Hierarchy.from_nested(5, forest=True), ValueError,
          "forest=True.*list of trees.*int"),

    Probe("networkx two parents", lambda: Hierarchy.from_networkx(nx.DiGraph([(0, 2), (1, 2)])), ValueError,
          "node 2 has two parents"),
    Probe("networkx directed cycle", lambda: Hierarchy.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0)])),
          ValueError, "cycle"),
    Probe("networkx undirected cycle", lambda: Hierarchy.from_networkx(nx.cycle_graph(4), root=0), ValueError,
          "cycle"),
    Probe("networkx missing root", lambda: Hierarchy.from_networkx(nx.Graph([(0, 1), (2, 3)]), root=0),
          ValueError, "needs a root per tree"),
    Probe("networkx unknown root", lambda: Hierarchy.from_networkx(nx.Graph([(0, 1)]), root=7), ValueError,
          "root 7 is not a node"),
    Probe("networkx two roots in a tree", lambda: Hierarchy.from_networkx(nx.Graph([(0, 1)]), root=[0, 1]),
          ValueError, "roots 0 and 1 lie in the same tree"),
    Probe("networkx empty", lambda: Hierarchy.from_networkx(nx.DiGraph()), ValueError, "no nodes"),

    Probe("windows no leaves", lambda: Hierarchy.from_windows(0, 2), ValueError, "num_leaves must be >= 1"),
    Probe("windows branching 1", lambda: Hierarchy.from_windows(8, 1), ValueError,
          "branching factors must be >= 2"),
    Probe("windows no branching", lambda: Hierarchy.from_windows(8, ()), ValueError, "branching factors"),
    Probe("windows float leaves", lambda: Hierarchy.from_windows(2.5, 2), ValueError,
          "num_leaves must be an int"),
    Probe("random no leaves", lambda: Hierarchy.random(0), ValueError, "num_leaves (must be )?>= 1"),
    Probe("random low > high", lambda: Hierarchy.random(10, (4, 2)), ValueError, r"1 <= low <= high"),
    Probe("random skip 1", lambda: Hierarchy.random(10, skip=1.0), ValueError, r"skip must be in \[0, 1\)"),

    Probe("hetero no node types", lambda: Hierarchy.from_hetero(HeteroData()), ValueError, "no node types"),
    Probe("hetero no tree edges", lambda: Hierarchy.from_hetero(document(), relation="part_of"), ValueError,
          "no tree edge types"),
    Probe("hetero unknown edge type",
          lambda: Hierarchy.from_hetero(document(), tree_edge_types=[("token", "in", "page")]), ValueError,
          "unknown node type 'page'"),
    Probe("hetero float edges", lambda: Hierarchy.from_hetero(_float_edges(document())), ValueError,
          r"\('token', 'in', 'sentence'\).*integer node ids.*float32"),
    Probe("hetero inner without child", lambda: Hierarchy.from_hetero(_extra_sentence(document())),
          ValueError,
          r"'sentence' row 2\) has no children"),
    Probe("hetero edge past type", lambda: Hierarchy.from_hetero(_edge_past_type(document())), ValueError,
          "points to 'sentence' row 7, but 'sentence' has 2 nodes"),

    Probe("leaf_features unknown type",
          lambda: Hierarchy.from_hetero(document()).leaf_features({**document().x_dict,
                                                                   "word": torch.ones(1, 6)}),
          ValueError, "unknown node type 'word'"),
    Probe("leaf_features inner type",
          lambda: Hierarchy.from_hetero(document()).leaf_features({**document().x_dict,
                                                                   "sentence": torch.ones(2, 6)}),
          ValueError, "'sentence' holds features but its nodes are not leaves"),
    Probe("leaf_features missing leaf type",
          lambda: Hierarchy.from_hetero(document()).leaf_features({"token": torch.ones(5, 6)}), ValueError,
          "leaf node type 'patch' has no features"),
    Probe("node_features empty dict", lambda: Hierarchy.from_hetero(document()).node_features({}), ValueError,
          "empty"),
    Probe("node_features unknown type",
          lambda: Hierarchy.from_hetero(document()).node_features({"page": torch.ones(1, 2)}), ValueError,
          "unknown node type 'page'"),
    Probe("split_leaves row count", lambda: Hierarchy.from_hetero(document()).split_leaves(torch.ones(3, 2)),
          ValueError, "3 rows for 8 leaves"),
]


def _float_edges(data: HeteroData) -> HeteroData:
    data["token", "in", "sentence"].edge_index = data["token", "in", "sentence"].edge_index.float()
    return data


def _extra_sentence(data: HeteroData) -> HeteroData:
    data["sentence"].num_nodes = 3
    return data


def _edge_past_type(data: HeteroData) -> HeteroData:
    data["token", "in", "sentence"].edge_index = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 1, 7]])
    return data


TRANSFORM_PROBES = [
    Probe("sequence branching 1", lambda: SequenceHierarchy(1), ValueError, "branching factors must be >= 2"),
    Probe("sequence odd pe_dim", lambda: SequenceHierarchy(pe_dim=3), ValueError, "pe_dim"),
    Probe("sequence empty", lambda: SequenceHierarchy()(0), ValueError, "empty sequence"),
    Probe("sequence string", lambda: SequenceHierarchy()("abc"), ValueError, "Data object or a length.*str"),
    Probe("sequence leaf type clash", lambda: SequenceHierarchy(leaf_type="root"), ValueError, "clashes"),
    Probe("image patch size 0", lambda: ImageHierarchy(0), ValueError, "patch_size must be >= 1"),
    Probe("image 2-D", lambda: ImageHierarchy(2).build(torch.rand(4, 4)), ValueError, r"\[C, H, W\]"),
    Probe("image size", lambda: ImageHierarchy(3).build(torch.rand(1, 4, 4)), ValueError,
          "4x4 is not a positive multiple of patch_size=3"),
    Probe("image missing attribute", lambda: ImageHierarchy(2)(Data(x=torch.ones(1))), ValueError,
          "no 'image' attribute"),
    Probe("graph branching 1", lambda: GraphHierarchy(1), ValueError, "branching must be >= 2"),
    Probe("graph method", lambda: GraphHierarchy(method="louvain"), ValueError, "method must be one of"),
    Probe("graph empty", lambda: GraphHierarchy()(Data(num_nodes=0)), ValueError, "empty graph"),
    Probe("graph float edges",
          lambda: GraphHierarchy()(Data(edge_index=torch.tensor([[0.0], [1.0]]), num_nodes=2)),
          ValueError, "integer tensor"),
    Probe("graph edge past nodes",
          lambda: GraphHierarchy()(Data(edge_index=torch.tensor([[0], [5]]), num_nodes=2)),
          ValueError, r"outside \[0, 2\)"),
    Probe("graph not Data", lambda: GraphHierarchy()(torch.ones(3)), ValueError,
          "expects a torch_geometric Data"),
    Probe("flatten not hetero", lambda: FlattenHierarchy()(Data(x=torch.ones(2, 1))), ValueError,
          "needs a HeteroData tree"),
    Probe("molecule pos_dim 0", lambda: MoleculeHierarchy(0), ValueError, "pos_dim must be >= 1"),
    Probe("molecule no edges", lambda: MoleculeHierarchy()(Data(x=torch.ones(2, 9), num_nodes=2)), ValueError,
          "no atoms or no edge_index"),
    Probe("molecule edge past atoms",
          lambda: MoleculeHierarchy()(Data(x=torch.ones(2, 9), edge_index=torch.tensor([[0], [4]]),
                                           num_nodes=2)),
          ValueError, "points past the 2 atoms"),
    Probe("molecule bad smiles", lambda: MoleculeHierarchy().from_smiles("C1CC("), ValueError,
          "cannot parse the SMILES 'C1CC\\('"),
    Probe("multimodal no builder", lambda: MultimodalHierarchy({}), ValueError, "no field builder"),
    Probe("multimodal builder without build", lambda: MultimodalHierarchy({"image": object()}), ValueError,
          r"\['image'\] have no build method"),
    Probe("multimodal missing field", lambda: MultimodalHierarchy({"image": ImageHierarchy(2)})(Data(y=1)),
          ValueError, r"no field \['image'\]"),
    Probe("compose no field", lambda: compose_key_value({}), ValueError, "no field"),
    Probe("compose root clash", lambda: compose_key_value({"item": one_tree_field()}), ValueError,
          "root type 'item' is already"),
    Probe("text levels", lambda: TextHierarchy(levels=("word",)), ValueError, "subsequence"),
    Probe("text pos_dim", lambda: TextHierarchy(pos_dim=3), ValueError, "pos_dim must be an even number"),
    Probe("text not a string", lambda: TextHierarchy(levels=()).build(123), ValueError,
          "expected a string.*got int"),
    Probe("text empty", lambda: TextHierarchy(levels=()).build("   "), ValueError, "empty document"),
]

LAYER_PROBES = [
    Probe("conv out_channels 0", lambda: HSAConv(8, 0), ValueError, "out_channels and heads must be >= 1"),
    Probe("conv heads 0", lambda: HSAConv(8, 4, heads=0), ValueError, "out_channels and heads must be >= 1"),
    Probe("conv dropout 1", lambda: HSAConv(8, 4, dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    Probe("conv pos_channels -1", lambda: HSAConv(8, 4, pos_channels=-1), ValueError,
          "pos_channels must be >= 0"),
    Probe("conv dict without metadata", lambda: HSAConv({"token": 6}, 4), ValueError, "pass metadata"),
    Probe("conv metadata without tree", lambda: HSAConv(6, 4, (["a"], [])), ValueError, "has no tree edges"),
    Probe("conv in_channels unknown type", lambda: HSAConv({"word": 6}, 4, METADATA), ValueError,
          r"\['word'\] missing from metadata"),
    Probe("conv hierarchy not Hierarchy", lambda: HSAConv(8, 4)(torch.ones(3, 8), [-1, 0, 0]), TypeError,
          r"must be a hgattn.Hierarchy \(or a Shard of one\), got list"),
    Probe("conv x not a tensor", lambda: homogeneous_call(np.ones((LEAVES, 8), dtype=np.float32)), TypeError,
          "x must be a tensor.*ndarray"),
    Probe("conv x rows", lambda: homogeneous_call(torch.randn(3, 8)), ValueError, r"N=9 leaves"),
    Probe("conv x width", lambda: homogeneous_call(torch.randn(LEAVES, 5)), ValueError,
          "x has 5 features but the layer expects 8"),
    Probe("conv x float64", lambda: homogeneous_call(torch.randn(LEAVES, 8, dtype=torch.float64)), ValueError,
          r"x is torch.float64 but the layer's weights are torch.float32.*\.float\(\).*\.double\(\)"),
    Probe("conv x int", lambda: homogeneous_call(torch.ones(LEAVES, 8, dtype=torch.long)), ValueError,
          r"x must be floating point, got torch.int64"),
    Probe("conv x NaN", lambda: homogeneous_call(with_nan(torch.randn(LEAVES, 8), row=3)), ValueError,
          r"x .*NaN.*row 3"),
    Probe("conv pos without pos_channels", lambda: homogeneous_call(pos=torch.ones(NODES, 2)), ValueError,
          "pos_channels=0"),
    Probe("conv pos shape", lambda: homogeneous_call(pos=torch.ones(3, 2), pos_channels=2), ValueError,
          r"pos must be \[T, 2\] with T=16"),
    Probe("conv pos float64",
          lambda: homogeneous_call(pos=torch.ones(NODES, 2, dtype=torch.float64), pos_channels=2),
          ValueError, "pos is torch.float64 but the layer's weights are torch.float32"),
    Probe("conv pos NaN", lambda: homogeneous_call(pos=with_nan(torch.ones(NODES, 2), row=4), pos_channels=2),
          ValueError, r"pos .*NaN.*row 4"),
    Probe("conv dict into homogeneous", lambda: homogeneous_call({"token": torch.ones(LEAVES, 8)}),
          ValueError, "needs a layer built with metadata"),
    Probe("conv tensor into hetero",
          lambda: HSAConv(6, 4, METADATA)(torch.ones(5, 6), Hierarchy.from_hetero(document())),
          ValueError, "built with metadata: pass a dict"),
    Probe("conv hierarchy types mismatch",
          lambda: HSAConv(6, 4, METADATA)({"token": torch.ones(8, 6)}, Hierarchy.from_windows(8, 2)),
          ValueError, "do not match"),
    Probe("conv x_dict unknown type", lambda: hetero_call(set_item("word", torch.ones(2, 6))), ValueError,
          r"'word'.*not a node type of the hierarchy"),
    Probe("conv x_dict inner type", lambda: hetero_call(set_item("sentence", torch.ones(2, 6))), ValueError,
          r"'sentence'.*inner \(non-leaf\) node type"),
    Probe("conv x_dict missing leaf type", lambda: hetero_call(lambda x, p: x.pop("patch")), ValueError,
          r"no features for leaf node type\(s\) \['patch'\]"),
    Probe("conv x_dict rows", lambda: hetero_call(set_item("token", torch.ones(4, 6))), ValueError,
          "'token': 4 feature rows for 5 nodes"),
    Probe("conv x_dict width", lambda: hetero_call(set_item("patch", torch.ones(3, 5))), ValueError,
          "'patch' has 5 features but the layer expects 4"),
    Probe("conv x_dict float64", lambda: hetero_call(set_item("token", lambda x: x["token"].double())),
          ValueError,
          r"x_dict\['token'\].*torch.float64 but the layer's weights are torch.float32"),
    Probe("conv x_dict NaN", lambda: hetero_call(set_item("patch", lambda x: with_nan(x["patch"], row=2))),
          ValueError, r"node type 'patch'.*NaN.*row 2"),
    Probe("conv pos_dict empty", lambda: hetero_call(lambda x, p: p.clear()), ValueError,
          "pos_dict is empty"),
    Probe("conv pos_dict unknown type", lambda: hetero_call(lambda x, p: p.update(page=torch.ones(1, 2))),
          ValueError, "unknown node type 'page'"),
    Probe("conv pos_dict NaN",
          lambda: hetero_call(lambda x, p: p.update(sentence=with_nan(p["sentence"], row=1))), ValueError,
          r"pos_dict\['sentence'\].*NaN.*row 1"),
    Probe("conv NaN weights", lambda: _nan_weight_call(), ValueError, r"parameter lin.weight.*NaN"),

    Probe("hte channels not divisible", lambda: HTEBlock(6, 10, heads=3), ValueError, "divisible by heads"),
    Probe("hte x_dict unknown type", lambda: hte_call(lambda x: x.update(word=torch.ones(1, 6))), ValueError,
          "'word'.*not a node type"),
    Probe("hte x_dict float64", lambda: hte_call(lambda x: x.update(token=x["token"].double())), ValueError,
          "torch.float64 but the layer's weights are torch.float32"),
    Probe("gps channels not divisible", lambda: HSAGPSConv(10, None, heads=3), ValueError,
          "divisible by heads"),
    Probe("gps x width", lambda: gps_call(torch.randn(8, 6)), ValueError, r"x must be \[N, 8\]"),
    Probe("gps leaves",
          lambda: HSAGPSConv(8, None, heads=2)(torch.randn(8, 8), torch.zeros(2, 0, dtype=torch.long),
                                                              Hierarchy.from_windows(6, 2)),
          ValueError, "6 leaves for 8 nodes"),
    Probe("gps x float64", lambda: gps_call(torch.randn(8, 8, dtype=torch.float64)), ValueError,
          "x is torch.float64 but the layer's weights are torch.float32"),
    Probe("gps x float64 with local conv",
          lambda: HSAGPSConv(8, GraphHSATransformer(8, 8, 1).layers[0].conv, heads=2, norm=None)(
              torch.randn(8, 8, dtype=torch.float64), torch.tensor([[0, 1], [1, 0]]),
              Hierarchy.from_windows(8, 4)),
          ValueError, "x is torch.float64 but the layer's weights are torch.float32"),
    Probe("gps x NaN", lambda: gps_call(with_nan(torch.randn(8, 8), row=5)), ValueError, r"x .*NaN.*row 5"),
    Probe("transformer task", lambda: GraphHSATransformer(4, 8, 3, task="edge"), ValueError, "task must be"),
    Probe("transformer readout", lambda: GraphHSATransformer(4, 8, 3, readout="median"), ValueError,
          "readout must be one of"),
    Probe("transformer layers", lambda: GraphHSATransformer(4, 8, 3, num_layers=0), ValueError,
          "num_layers must be"),
    Probe("transformer conv", lambda: GraphHSATransformer(4, 8, 3, conv="gat"), ValueError, "conv must be"),
    Probe("transformer x float64", lambda: graph_transformer_call(torch.randn(8, 4, dtype=torch.float64)),
          ValueError, "x is torch.float64 but the layer's weights are torch.float32"),
]


def _nan_weight_call() -> Any:
    h = tree()
    conv = HSAConv(8, 4, heads=2)
    with torch.no_grad():
        conv.lin.weight[0, 0] = NAN
    return conv(torch.randn(h.num_leaves, 8), h)


OPERATOR_PROBES = [
    Probe("hsa hierarchy not Hierarchy",
          lambda: hsa(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4), [-1, 0, 0]),
          TypeError, "hgattn.Hierarchy"),
    Probe("hsa rows", lambda: hsa(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4), tree()), ValueError,
          "3 rows but the hierarchy has 9 leaves"),
    Probe("hsa int", lambda: hsa(*(torch.ones(LEAVES, 4, dtype=torch.long),) * 3, tree()), ValueError,
          "floating-point"),
    Probe("hsa key shape",
          lambda: hsa(torch.ones(LEAVES, 4), torch.ones(LEAVES, 3), torch.ones(LEAVES, 4), tree()),
          ValueError, "same shape"),
    Probe("hsa value shape",
          lambda: hsa(torch.ones(LEAVES, 2, 4), torch.ones(LEAVES, 2, 4), torch.ones(LEAVES, 1, 4), tree()),
          ValueError, "must match query"),
    Probe("hsa pos shape", lambda: operator_call(pos=torch.ones(3, 2)), ValueError, "pos must be"),
    Probe("hsa pos device", lambda: operator_call(pos=torch.ones(NODES, 2, device="meta")), ValueError,
          "pos is on meta"),
    Probe("hsa zero heads", lambda: operator_call(heads=0), ValueError, "query has 0 heads"),
    Probe("hsa zero head dim", lambda: operator_call(dim=0), ValueError, "query has 0 features per head"),
    Probe("hsa zero dim one head", lambda: hsa(*(torch.ones(LEAVES, 0),) * 3, tree()), ValueError,
          "query has 0 features per head"),
    Probe("hsa scale inf", lambda: operator_call(scale=float("inf")), ValueError,
          "scale must be finite.*inf"),
    Probe("hsa scale nan", lambda: operator_call(scale=NAN), ValueError, "scale must be finite.*nan"),
    Probe("hsa query NaN",
          lambda: hsa(with_nan(torch.randn(LEAVES, 4)), torch.randn(LEAVES, 4), torch.randn(LEAVES, 4),
                      tree()),
          ValueError, "query contains NaN"),
    Probe("hsa value inf", lambda: operator_call(fill_v=float("inf")), ValueError,
          "value contains NaN or infinite"),
    Probe("hsa pos NaN", lambda: operator_call(pos=with_nan(torch.ones(NODES, 2))), ValueError,
          "pos contains NaN"),
    Probe("hsa query 3e38", lambda: operator_call(fill_q=3e38), ValueError,
          r"overflow in torch.float32: the sums of query over a subtree reach"),
    Probe("hsa query -3e38", lambda: operator_call(fill_q=-3e38), ValueError,
          r"overflow in torch.float32.*query"),
    Probe("hsa q = k = 1e20", lambda: operator_call(fill_q=1e20, fill_k=1e20), ValueError,
          r"overflow in torch.float32: the attention logits reach ~2e\+40"),
    Probe("hsa value 3e38 (DP)", lambda: on_the_pytorch_kernels(operator_call, fill_v=3e38, hierarchy=big_tree()), ValueError,
          r"overflow in torch.float32: the sums of value over a subtree"),
    Probe("hsa query 3e38 (DP)", lambda: on_the_pytorch_kernels(operator_call, fill_q=3e38, hierarchy=big_tree()), ValueError,
          r"overflow in torch.float32: the sums of query over a subtree"),
    Probe("hsa columns q = k = 1e20", lambda: operator_call(fill_q=1e20, fill_k=1e20, tie="columns"),
          ValueError,
          r"overflow in torch.float32: the attention logits"),
    Probe("hsa unknown tie", lambda: operator_call(tie="rows"), ValueError, "tie"),
    Probe("hsa causal without self", lambda: operator_call(causal=True), ValueError, "include_self"),
    Probe("hsa_attention scale inf",
          lambda: hsa_attention(torch.ones(LEAVES, 4), torch.ones(LEAVES, 4), tree(), scale=float("inf")),
          ValueError, "scale must be finite"),
    Probe("hsa_attention q = k = 1e20",
          lambda: hsa_attention(torch.full((LEAVES, 4), 1e20), torch.full((LEAVES, 4), 1e20), tree()),
          ValueError,
          r"overflow in torch.float32: the attention logits"),
]

PROBES = HIERARCHY_PROBES + TRANSFORM_PROBES + LAYER_PROBES + OPERATOR_PROBES


# ---------------------------------------------------------------------- controls
def _lone_leaf_output() -> torch.Tensor:
    h = Hierarchy.from_parent([-1])
    return hsa(torch.ones(1, 4), torch.ones(1, 4), torch.ones(1, 4), h)


def _shared_sublists() -> Hierarchy:
    pair = ["a", "b"]
    return Hierarchy.from_nested([pair, pair, [pair]])


def _hetero_without_patches() -> dict:
    return hetero_call(lambda x, p: x.pop("patch"), num_patches=0)


def _hetero_with_empty_patches() -> dict:
    return hetero_call(set_item("patch", torch.ones(0, 4)), num_patches=0)


def _half_precision() -> torch.Tensor:
    h = tree()
    q = torch.randn(LEAVES, 2, 4).half()
    return hsa(q, q, q, h, include_self=True)


def _double_layer() -> torch.Tensor:
    h = tree()
    return HSAConv(8, 4, heads=2).double()(torch.randn(LEAVES, 8, dtype=torch.float64), h)


def _autocast_layer() -> torch.Tensor:
    h = tree()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return HSAConv(8, 4, heads=2)(torch.randn(LEAVES, 8), h)


def _big_but_finite() -> torch.Tensor:
    return operator_call(fill_q=1e3, fill_k=-1e3, fill_v=1e30, include_self=True)


def _finite(out: Any) -> bool:
    values = out.values() if isinstance(out, dict) else [out]
    return all(bool(torch.isfinite(x).all()) for x in values)


CONTROLS = [
    Control("single leaf tree", lambda: Hierarchy.from_parent([-1]),
            lambda h: h.num_leaves == 1 and h.num_levels == 1),
    Control("single leaf attends to nothing", _lone_leaf_output, lambda out: bool((out == 0).all())),
    Control("single leaf nested", lambda: Hierarchy.from_nested("a"), lambda h: h.num_nodes == 1),
    Control("unary chain", lambda: Hierarchy.from_parent([-1, 0, 1, 2]),
            lambda h: h.num_leaves == 1 and h.num_levels == 4),
    Control("unary chain nested", lambda: Hierarchy.from_nested([[["a"]]]),
          lambda h: h.parent.tolist() == [-1, 0, 1, 2]),
    Control("forest of single leaves", lambda: Hierarchy.from_parent([-1, -1, -1]),
            lambda h: h.num_trees == 3 and h.num_leaves == 3),
    Control("forest", lambda: Hierarchy.from_parent(forest(UNBALANCED, [-1], UNARY_CHAIN)),
          lambda h: h.num_trees == 3),
    Control("int32 parent", lambda: Hierarchy.from_parent(torch.tensor([-1, 0, 0], dtype=torch.int32)),
            lambda h: h.parent.dtype == torch.long),
    Control("numpy parent", lambda: Hierarchy.from_parent(np.array([-1, 0, 0])), lambda h: h.num_leaves == 2),
    Control("numpy int entries", lambda: Hierarchy.from_parent([np.int64(-1), np.int32(0)]),
          lambda h: h.num_nodes == 2),
    Control("edges with isolated node",
          lambda: Hierarchy.from_edge_index(torch.tensor([[1], [0]]), num_nodes=3),
            lambda h: h.num_trees == 2),
    Control("edges int32",
          lambda: Hierarchy.from_edge_index(torch.tensor([[1, 2], [0, 0]], dtype=torch.int32)),
            lambda h: h.parent.tolist() == [-1, 0, 0]),
    Control("edges as lists", lambda: Hierarchy.from_edge_index([[1, 2], [0, 0]]),
          lambda h: h.num_leaves == 2),
    Control("nested shared sublists", _shared_sublists, lambda h: h.num_leaves == 6),
    Control("nested tuples", lambda: Hierarchy.from_nested((("a", "b"), "c")), lambda h: h.num_leaves == 3),
    Control("windows one leaf", lambda: Hierarchy.from_windows(1, 2), lambda h: h.parent.tolist() == [-1]),
    Control("random one leaf", lambda: Hierarchy.random(1), lambda h: h.num_nodes == 1),
    Control("hetero without patches", _hetero_without_patches, lambda out: set(out) == {"token"}),
    Control("hetero with empty patches", _hetero_with_empty_patches,
          lambda out: out["token"].shape == (5, 8)),
    Control("half precision", _half_precision, lambda out: out.dtype == torch.float16 and _finite(out)),
    Control("double layer", _double_layer, _finite),
    Control("autocast layer", _autocast_layer, _finite),
    Control("large but finite inputs", _big_but_finite, _finite),
    Control("values of 3e38 on the dense kernel", lambda: on_the_pytorch_kernels(operator_call, fill_v=3e38),
            lambda out: torch.allclose(out, torch.full_like(out, 3e38), rtol=1e-5, atol=0)),
    Control("values of 3e38 on the default kernel (native: weighted means, no subtree sums)",
            lambda: on_the_native_kernel(operator_call, fill_v=3e38, hierarchy=big_tree()),
            lambda out: torch.allclose(out, torch.full_like(out, 3e38), rtol=1e-5, atol=0)),
    Control("hetero layer", hetero_call, _finite),
    Control("hte block", lambda: hte_call(lambda x: None), _finite),
    Control("gps layer", lambda: gps_call(torch.randn(8, 8)), _finite),
    Control("graph transformer", lambda: graph_transformer_call(torch.randn(8, 4)), _finite),
    Control("one-head operator", lambda: hsa(*(torch.randn(LEAVES, 4),) * 3, tree()), _finite),
    Control("columns operator", lambda: operator_call(tie="columns"), _finite),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.name)
def test_bad_input_raises_a_clear_error(probe: Probe) -> None:
    with pytest.raises(probe.error, match=probe.match):
        probe.call()


@pytest.mark.parametrize("control", CONTROLS, ids=lambda control: control.name)
def test_valid_edge_case_succeeds(control: Control) -> None:
    assert control.check(control.call())


# ---------------------------------------------------------------------- linear-time validation
def test_million_node_cycle_is_rejected_within_seconds() -> None:
    parent = cycle(1_000_000)
    parent[10] = -1                       # a valid chain 11 .. 999_999 -> 0 .. 10 below a root
    parent[500_000] = 400_000             # ... broken by the cycle 400_000 -> 400_001 -> ... -> 500_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"cycle in the hierarchy: node 400000 -> node 400001 .*100001 nod"):
        Hierarchy.from_parent(parent)
    assert time.perf_counter() - start < 5.0


def test_million_edge_cycle_is_rejected_within_seconds() -> None:
    nodes = torch.arange(1_000_000)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="cycle in the hierarchy"):
        Hierarchy.from_edge_index(torch.stack([nodes, torch.roll(nodes, -1)]))
    assert time.perf_counter() - start < 5.0


def test_deep_chain_builds_quickly() -> None:
    """One intra-op thread: on a shared 2-core machine the many small ops of a deep build otherwise wait on
    each other's threads, which measures the load rather than the algorithm."""
    depth, threads = 40_000, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        h = Hierarchy.from_parent(torch.arange(-1, depth - 1))
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert h.num_levels == depth and h.num_leaves == 1 and int(h.height[0]) == depth - 1
    assert bool((h.leaf_count == 1).all()) and h.depth.tolist() == list(range(depth))
    assert elapsed < 5.0, elapsed


def test_deeply_nested_list_builds() -> None:
    nested: Any = "leaf"
    for _ in range(5_000):                  # far past Python's recursion limit
        nested = [nested]
    h = Hierarchy.from_nested(nested)
    assert h.num_nodes == 5_001 and h.num_leaves == 1
