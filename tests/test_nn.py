"""HSAConv: shapes, exactness against the dense reference, both propagate paths, heterogeneous input,
batching, gradients, AttentionExplainer, errors."""
from __future__ import annotations

import random

import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import AttentionExplainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.nn import HSAConv
from hgattn.nn.attention import leaf_sums, push_down, sibling_edge_index
from hgattn.attention.reference import hsa_reference
from trees import UNARY_CHAIN, forest, random_tree

METADATA = (["token", "patch", "sentence", "doc"],
            [("token", "in", "sentence"), ("sentence", "in", "doc"), ("patch", "in", "doc")])


def make_doc(seed: int, token_dim: int = 6, patch_dim: int = 4) -> HeteroData:
    """A document tree: doc -> sentences -> tokens (depth 2) and doc -> patches (depth 1), with positions."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 5, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
    num_patches = int(torch.randint(1, 5, (1,), generator=gen))
    data = HeteroData()
    data["token"].x = torch.randn(int(sizes.sum()), token_dim, generator=gen)
    data["token"].pos = torch.cat([torch.arange(int(s), dtype=torch.float) for s in sizes]).unsqueeze(1)
    data["patch"].x = torch.randn(num_patches, patch_dim, generator=gen)
    data["patch"].pos = torch.randn(num_patches, 2, generator=gen)
    data["sentence"].num_nodes = sizes.numel()
    data["sentence"].pos = torch.arange(sizes.numel(), dtype=torch.float).unsqueeze(1)
    data["doc"].num_nodes = 1
    data["doc"].pos = torch.zeros(1, 2)
    data["token", "in", "sentence"].edge_index = torch.stack(
        [torch.arange(int(sizes.sum())), torch.repeat_interleave(torch.arange(sizes.numel()), sizes)])
    data["sentence", "in", "doc"].edge_index = torch.stack(
        [torch.arange(sizes.numel()), torch.zeros(sizes.numel(), dtype=torch.long)])
    data["patch", "in", "doc"].edge_index = torch.stack(
        [torch.arange(num_patches), torch.zeros(num_patches, dtype=torch.long)])
    return data


def random_hierarchy(seed: int, num_leaves: int = 12) -> Hierarchy:
    return Hierarchy.from_parent(random_tree(random.Random(seed), num_leaves))


def qkv(conv: HSAConv, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values of a homogeneous layer without bias, norm or skip, ``[N, H, d]`` each."""
    shape = (x.size(0), conv.heads, conv.out_channels)
    return tuple(part.reshape(shape) for part in (x @ conv.lin.weight.t()).chunk(3, dim=-1))


# ---------------------------------------------------------------------- homogeneous
@pytest.mark.parametrize("concat, heads", [(True, 1), (True, 3), (False, 2)])
def test_shapes_and_repr(concat: bool, heads: int) -> None:
    h = random_hierarchy(0)
    conv = HSAConv(8, 5, heads=heads, concat=concat)
    assert str(conv) == f"HSAConv(8, 5, heads={heads}, include_self=False)"
    out = conv(torch.randn(h.num_leaves, 8), h)
    assert out.shape == (h.num_leaves, 5 * heads if concat else 5)


def test_lazy_in_channels() -> None:
    h = random_hierarchy(1)
    conv = HSAConv(-1, 4, heads=2)
    assert str(conv) == "HSAConv(-1, 4, heads=2, include_self=False)"
    assert conv(torch.randn(h.num_leaves, 7), h).shape == (h.num_leaves, 8)
    assert conv.lin.weight.shape == (3 * 8 + 8, 7)


@pytest.mark.parametrize("include_self", [False, True])
def test_equals_dense_reference(include_self: bool) -> None:
    torch.manual_seed(0)
    h = Hierarchy.from_parent(forest(random_tree(random.Random(2), 9), UNARY_CHAIN))
    conv = HSAConv(5, 3, heads=2, qk_norm=False, include_self=include_self, pos_channels=2, bias=False,
                   root_weight=False).double()
    x, pos = torch.randn(h.num_leaves, 5).double(), torch.randn(h.num_nodes, 2).double()
    q, k, v = qkv(conv, x)
    pos_emb = conv.lin_pos(pos).view(-1, 2, 3)
    expected = hsa_reference(q, k, v, h, pos=pos_emb, include_self=include_self).reshape(h.num_leaves, -1)
    torch.testing.assert_close(conv(x, h, pos), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("include_self", [False, True])
def test_message_path_equals_fused_path(include_self: bool) -> None:
    torch.manual_seed(1)
    h = random_hierarchy(3, 30)
    conv = HSAConv(6, 4, heads=2, include_self=include_self, pos_channels=3).double()
    x, pos = torch.randn(h.num_leaves, 6).double(), torch.randn(h.num_nodes, 3).double()
    fused = conv(x, h, pos)
    seen = []
    handle = conv.register_message_forward_hook(lambda module, inputs, out: seen.append(inputs[0]["alpha"]))
    messages = conv(x, h, pos)
    handle.remove()
    torch.testing.assert_close(messages, fused, rtol=1e-12, atol=1e-13)
    _, attention = conv(x, h, pos, return_attention_weights=True)
    assert len(seen) == 1 and torch.equal(seen[0], attention.sibling_weight)
    assert seen[0].shape == (h.sibling_index.size(1), 2)


def test_message_path_gradients_match_dense_reference() -> None:
    """Gradients through the message path equal those of the dense reference (float64)."""
    torch.manual_seed(8)
    h = random_hierarchy(11, 14)
    conv = HSAConv(5, 3, heads=2, qk_norm=False, bias=False, root_weight=False, include_self=True,
                   dropout=0.3).double().eval()
    x = torch.randn(h.num_leaves, 5).double()
    conv.register_message_forward_hook(lambda module, inputs, out: None)
    conv(x, h).pow(2).sum().backward()
    ours = conv.lin.weight.grad.clone()
    conv.lin.weight.grad = None
    q, k, v = qkv(conv, x)
    hsa_reference(q, k, v, h, include_self=True).pow(2).sum().backward()
    torch.testing.assert_close(ours, conv.lin.weight.grad, rtol=1e-9, atol=1e-11)


def test_explain_mode_masks_messages() -> None:
    """In PyG's explain mode every sibling edge's message is scaled by the edge mask."""
    torch.manual_seed(2)
    h = random_hierarchy(4, 20)
    conv = HSAConv(4, 4, root_weight=False).double()
    x = torch.randn(h.num_leaves, 4).double()
    edge_index = sibling_edge_index(h)
    expected = conv(x, h)
    set_masks(conv, torch.ones(edge_index.size(1), dtype=torch.double), edge_index, apply_sigmoid=False)
    torch.testing.assert_close(conv(x, h), expected)
    set_masks(conv, torch.zeros(edge_index.size(1), dtype=torch.double), edge_index, apply_sigmoid=False)
    assert torch.count_nonzero(conv(x, h)) == 0
    clear_masks(conv)


def test_attention_weights_and_dense_expansion() -> None:
    h = random_hierarchy(5, 10)
    conv = HSAConv(4, 2, heads=3, include_self=True)
    out, attention = conv(torch.randn(h.num_leaves, 4), h, return_attention_weights=True)
    assert out.shape == (h.num_leaves, 6)
    assert torch.equal(attention.sibling_index, h.sibling_index)
    dense = attention.to_dense()
    assert dense.shape == (3, h.num_leaves, h.num_leaves)
    torch.testing.assert_close(dense.sum(-1), torch.ones(3, h.num_leaves))


def test_leaf_sums_and_push_down_are_adjoint() -> None:
    """``<push_down(y), x> = <y, leaf_sums(x)>``: the two tree passes of the message path."""
    h = random_hierarchy(6, 25)
    x, y = torch.randn(h.num_leaves, 3).double(), torch.randn(h.num_nodes, 3).double()
    torch.testing.assert_close((push_down(y, h) * x).sum(), (y * leaf_sums(x, h)).sum())
    torch.testing.assert_close(leaf_sums(torch.ones(h.num_leaves, 1), h).squeeze(1), h.leaf_count.float())


def test_attention_dropout_drops_sibling_blocks() -> None:
    h = random_hierarchy(7, 20)
    conv = HSAConv(4, 4, dropout=0.5, root_weight=False)
    x = torch.randn(h.num_leaves, 4)
    conv.train()
    torch.manual_seed(0)
    first = conv(x, h)
    torch.manual_seed(1)
    assert not torch.allclose(first, conv(x, h))
    conv.eval()
    assert torch.equal(conv(x, h), conv(x, h))


def test_attention_explainer() -> None:
    torch.manual_seed(3)
    h = random_hierarchy(8, 16)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = HSAConv(5, 4, heads=2)
            self.conv2 = HSAConv(8, 1, heads=2, concat=False)

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
            return self.conv2(self.conv1(x, hierarchy).relu(), hierarchy).mean(0, keepdim=True)

    model = Model().eval()
    explainer = Explainer(model=model, algorithm=AttentionExplainer(), explanation_type="model",
                          edge_mask_type="object",
                          model_config=dict(mode="regression", task_level="graph", return_type="raw"))
    x, edge_index = torch.randn(h.num_leaves, 5), sibling_edge_index(h)
    explanation = explainer(x, edge_index, hierarchy=h)
    alphas = []
    for conv, inputs in ((model.conv1, x), (model.conv2, model.conv1(x, h).relu())):
        alphas.append(conv(inputs, h, return_attention_weights=True)[1].sibling_weight.amax(-1))
    torch.testing.assert_close(explanation.edge_mask, torch.stack(alphas, -1).amax(-1))
    assert explanation.edge_mask.shape == (edge_index.size(1),)


def test_gradients_reach_every_parameter_homogeneous() -> None:
    h = random_hierarchy(9, 15)
    conv = HSAConv(4, 3, heads=2, include_self=True, pos_channels=2)
    conv(torch.randn(h.num_leaves, 4), h, torch.randn(h.num_nodes, 2)).square().sum().backward()
    for name, param in conv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- heterogeneous
def test_hetero_shapes_repr_and_lazy_sizes() -> None:
    data = make_doc(0)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA, heads=2, pos_channels=2)
    assert str(conv) == "HSAConv(-1, 4, heads=2, include_self=False)"
    assert conv.leaf_types == ["token", "patch"] and conv.parent_types == ["sentence", "doc"]
    out = conv(data.x_dict, h, data.pos_dict)
    assert set(out) == {"token", "patch"}
    assert out["token"].shape == (data["token"].num_nodes, 8) and out["patch"].shape == (data["patch"].num_nodes, 8)
    assert conv.in_channels == {"token": 6, "patch": 4}


def one_leaf_type_tree(seed: int) -> tuple[HeteroData, list[int]]:
    """A random tree as HeteroData with one leaf type ('token') and one inner type ('group')."""
    parent = torch.tensor(random_tree(random.Random(seed), 10))
    h = Hierarchy.from_parent(parent)
    leaves, inner = h.leaf_node, (~h.is_leaf).nonzero().view(-1)
    inner_row = torch.full_like(parent, -1)
    inner_row[inner] = torch.arange(inner.numel())
    data = HeteroData()
    data["token"].x = torch.randn(leaves.numel(), 5, generator=torch.Generator().manual_seed(seed))
    data["token"].pos = torch.randn(leaves.numel(), 2)
    data["group"].num_nodes = inner.numel()
    data["group"].pos = torch.randn(inner.numel(), 2)
    for src, nodes in (("token", leaves), ("group", inner)):
        has_parent = parent[nodes] >= 0
        rows = torch.arange(nodes.numel())[has_parent]
        data[src, "in", "group"].edge_index = torch.stack([rows, inner_row[parent[nodes[has_parent]]]])
    return data, data.metadata()


def test_hetero_with_one_node_type_equals_homogeneous() -> None:
    torch.manual_seed(4)
    data, metadata = one_leaf_type_tree(11)
    h = Hierarchy.from_hetero(data)
    hetero = HSAConv(5, 3, metadata, heads=2, include_self=True, pos_channels=2).double()
    homo = HSAConv(5, 3, heads=2, include_self=True, pos_channels=2).double()
    homo.load_state_dict(hetero.state_dict())
    x_dict = {"token": data["token"].x.double()}
    pos_dict = {nt: p.double() for nt, p in data.pos_dict.items()}
    out = hetero(x_dict, h, pos_dict)["token"]
    torch.testing.assert_close(out, homo(x_dict["token"], h, h.node_features(pos_dict)), rtol=0, atol=0)


def test_per_type_projections_differ() -> None:
    """Tokens and patches with the same features in mirror-image places: different outputs because their
    projections differ, the same outputs once the token block of the weights is copied into the patch block."""
    torch.manual_seed(5)
    data = HeteroData()
    data["token"].x = data["patch"].x = torch.randn(2, 4)
    data["sentence"].num_nodes = data["image"].num_nodes = data["doc"].num_nodes = 1
    data["token", "in", "sentence"].edge_index = data["patch", "in", "image"].edge_index = torch.tensor(
        [[0, 1], [0, 0]])
    data["sentence", "in", "doc"].edge_index = data["image", "in", "doc"].edge_index = torch.tensor([[0], [0]])
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(4, 3, data.metadata(), heads=2)
    torch.nn.init.normal_(conv.bias)
    out = conv(data.x_dict, h)
    assert not torch.allclose(out["token"], out["patch"])
    with torch.no_grad():
        token, patch = conv.leaf_types.index("token"), conv.leaf_types.index("patch")
        conv.lin.weight[:, 4 * patch:4 * patch + 4] = conv.lin.weight[:, 4 * token:4 * token + 4]
        conv.bias[patch] = conv.bias[token]
    out = conv(data.x_dict, h)
    torch.testing.assert_close(out["token"], out["patch"])


def test_hetero_batching_equals_per_example_runs() -> None:
    torch.manual_seed(6)
    examples = [make_doc(seed) for seed in range(5)]
    conv = HSAConv(-1, 4, METADATA, heads=2, pos_channels=2, include_self=True).double().eval()
    batch = next(iter(DataLoader(examples, batch_size=len(examples))))
    h = Hierarchy.from_hetero(batch)
    assert h.num_trees == len(examples)
    as_double = lambda d: {nt: t.double() for nt, t in d.items()}  # noqa: E731
    out = conv(as_double(batch.x_dict), h, as_double(batch.pos_dict))
    singles = [conv(as_double(d.x_dict), Hierarchy.from_hetero(d), as_double(d.pos_dict)) for d in examples]
    for nt in ("token", "patch"):
        torch.testing.assert_close(out[nt], torch.cat([s[nt] for s in singles]), rtol=1e-12, atol=1e-13)


def test_hetero_message_path_equals_fused_path() -> None:
    data = make_doc(7)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA, heads=2, pos_channels=2).double()
    x_dict = {nt: x.double() for nt, x in data.x_dict.items()}
    pos_dict = {nt: p.double() for nt, p in data.pos_dict.items()}
    fused = conv(x_dict, h, pos_dict)
    conv.register_message_forward_hook(lambda module, inputs, out: None)
    messages = conv(x_dict, h, pos_dict)
    for nt in fused:
        torch.testing.assert_close(messages[nt], fused[nt], rtol=1e-12, atol=1e-13)


def test_positions_are_projected_per_family_domain() -> None:
    """The sibling term of two sentences uses the 'doc' domain's matrix, of two tokens the 'sentence' one."""
    data = make_doc(8)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA, heads=1, pos_channels=2)
    conv(data.x_dict, h, data.pos_dict)
    raw = h.node_features({nt: torch.nn.functional.pad(p, (0, 2 - p.size(1))) for nt, p in data.pos_dict.items()})
    emb = conv._positions(data.pos_dict, h).squeeze(1)
    weight = conv.lin_pos.weight.view(4, 2, 2)
    domain = conv._domain_index(h)
    for node in range(h.num_nodes):
        expected = torch.zeros(4) if domain[node] < 0 else weight[:, int(domain[node])] @ raw[node]
        torch.testing.assert_close(emb[node], expected)


def test_gradients_reach_every_parameter_hetero() -> None:
    data = make_doc(9)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv({"token": 6, "patch": 4}, 3, METADATA, heads=2, pos_channels=2)
    out = conv(data.x_dict, h, data.pos_dict)
    sum(o.square().sum() for o in out.values()).backward()
    for name, param in conv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- errors
def test_error_missing_node_type() -> None:
    data = make_doc(10)
    conv = HSAConv(-1, 4, METADATA)
    with pytest.raises(ValueError, match="no features for leaf node type.*patch"):
        conv({"token": data["token"].x}, Hierarchy.from_hetero(data))


def test_error_feature_size_mismatch() -> None:
    data = make_doc(11)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv({"token": 6, "patch": 4}, 4, METADATA)
    with pytest.raises(ValueError, match="'patch' has 5 features but the layer expects 4"):
        conv({"token": data["token"].x, "patch": torch.randn(data["patch"].num_nodes, 5)}, h)
    with pytest.raises(ValueError, match="x has 3 features but the layer expects 8"):
        HSAConv(8, 4)(torch.randn(h.num_leaves, 3), Hierarchy.from_parent(h.parent))


def test_error_rows_do_not_match_hierarchy() -> None:
    data = make_doc(12)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA)
    rows = data["token"].num_nodes + 1
    with pytest.raises(ValueError, match=f"node type 'token': {rows} feature rows"):
        conv({"token": torch.randn(rows, 6), "patch": data["patch"].x}, h)
    with pytest.raises(ValueError, match="x must be \\[N, F\\] with N=12 leaves"):
        HSAConv(4, 4)(torch.randn(13, 4), random_hierarchy(0))
    with pytest.raises(ValueError, match="pos must be \\[T, 2\\]"):
        HSAConv(4, 4, pos_channels=2)(torch.randn(12, 4), random_hierarchy(0), torch.randn(3, 2))


def test_error_wrong_input_kind() -> None:
    data = make_doc(13)
    h = Hierarchy.from_hetero(data)
    with pytest.raises(ValueError, match="built with metadata"):
        HSAConv(-1, 4, METADATA)(torch.randn(h.num_leaves, 4), h)
    with pytest.raises(ValueError, match="needs a layer built with metadata"):
        HSAConv(-1, 4)(data.x_dict, h)
    with pytest.raises(ValueError, match="node types .* do not match"):
        HSAConv(-1, 4, METADATA)(data.x_dict, Hierarchy.from_parent(h.parent))


@pytest.mark.parametrize("num_leaves", [12, 150])
def test_autocast_runs_forward_and_backward(num_leaves: int) -> None:
    """Under ``torch.autocast`` the operator still computes in float32 (small trees take the dense kernel,
    large ones the DP), where autocast used to cast its matrix products down and mix dtypes."""
    torch.manual_seed(0)
    h = random_hierarchy(3, num_leaves)
    conv = HSAConv(8, 4, heads=2, include_self=True, pos_channels=2)
    x = torch.randn(h.num_leaves, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, h, torch.randn(h.num_nodes, 2))
    out.float().square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(param.grad is not None for param in conv.parameters())


def test_nan_features_are_named_on_the_message_path() -> None:
    data = make_doc(14)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA, dropout=0.5).train()
    x_dict = dict(data.x_dict)
    x_dict["token"] = x_dict["token"].clone()
    x_dict["token"][-1, 2] = float("inf")
    row = x_dict["token"].size(0) - 1
    with pytest.raises(ValueError, match=rf"x_dict\['token'\] \(features of node type 'token'\) contains NaN or "
                                         rf"infinite values \(first at row {row}\)"):
        conv(x_dict, h)

