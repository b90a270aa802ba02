"""The fast DP (`hgattn.hsa`) against the float64 closed-form reference (`hgattn.attention.reference`)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from hgattn import Hierarchy, hsa, hsa_attention
import hgattn.attention.dp as dp_module
import hgattn.attention.plan as plan_module
import hgattn.walks as walks_module
from hgattn.attention.plan import family_blocks
from hgattn.attention.reference import attention_matrix, hsa_reference
from trees import (LONE_LEAF, ONE_LEAF_CHAIN, ONE_LEAF_ROOT, UNARY_CHAIN, UNBALANCED, flat_tree, forest,
                   random_forest, random_tree)

DOUBLE = torch.float64


def relabel(parent: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
    """Shuffle node ids; returns the new parent list and, per new leaf row, the old leaf row."""
    order = list(range(len(parent)))
    rng.shuffle(order)
    new_of = {old: new for new, old in enumerate(order)}
    new_parent = [-1 if parent[old] < 0 else new_of[parent[old]] for old in order]
    old_leaves = [v for v in range(len(parent)) if v not in set(parent)]
    old_row = {v: r for r, v in enumerate(old_leaves)}
    new_leaves = sorted(new_of[v] for v in old_leaves)
    return new_parent, [old_row[order[v]] for v in new_leaves]


def random_case(seed: int) -> list[int]:
    """A random forest (1-3 trees of 1-24 leaves), ids shuffled on odd seeds."""
    rng = random.Random(seed)
    counts = [rng.randint(1, 24) for _ in range(rng.randint(1, 3))]
    parent = random_forest(rng, counts, max_children=rng.randint(2, 6), chain_prob=rng.choice([0.0, 0.2, 0.4]))
    return relabel(parent, rng)[0] if seed % 2 else parent


def make_inputs(parent: list[int], heads: int = 2, dim: int = 5, pos_dim: int | None = 3, seed: int = 0,
                dtype: torch.dtype = DOUBLE, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    num_leaves = len([v for v in range(len(parent)) if v not in set(parent)])
    q, k, v = (torch.randn(num_leaves, heads, dim, generator=gen, dtype=DOUBLE) for _ in range(3))
    pos = None if pos_dim is None else 0.5 * torch.randn(len(parent), pos_dim, generator=gen, dtype=DOUBLE)
    tensors = [t.to(dtype).requires_grad_(requires_grad) if t is not None else None for t in (q, k, v, pos)]
    return tensors


def gradients(out: torch.Tensor, inputs: list, upstream: torch.Tensor) -> list[torch.Tensor]:
    """d <out, upstream> / d inputs, zeros for inputs the output does not depend on."""
    used = [x for x in inputs if x is not None]
    grads = torch.autograd.grad((out * upstream).sum(), used, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(used, grads)]


FIXED = {"unbalanced": UNBALANCED, "unary_chain": UNARY_CHAIN, "lone_leaf": LONE_LEAF,
         "one_leaf_root": ONE_LEAF_ROOT, "one_leaf_chain": ONE_LEAF_CHAIN, "flat": flat_tree(6),
         "forest": forest(UNBALANCED, ONE_LEAF_ROOT, flat_tree(3), ONE_LEAF_CHAIN, UNARY_CHAIN)}


@pytest.mark.parametrize("seed", range(100))
def test_random_trees_match_reference(seed: int, kernel: str) -> None:
    parent = random_case(seed)
    include_self, use_pos = bool(seed % 3), seed % 4 != 0
    q, k, v, pos = make_inputs(parent, pos_dim=3 if use_pos else None, seed=seed)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self)
    ref = hsa_reference(q, k, v, parent, pos=pos, include_self=include_self)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("pos_dim", [None, 3])
def test_fixed_trees_match_reference_values_and_gradients(name: str, include_self: bool, pos_dim,
                                                          kernel: str) -> None:
    parent = FIXED[name]
    inputs = make_inputs(parent, pos_dim=pos_dim, requires_grad=True)
    upstream = torch.randn(inputs[2].shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(1))
    out = hsa(*inputs[:3], Hierarchy.from_parent(parent), pos=inputs[3], include_self=include_self)
    ref = hsa_reference(*inputs[:3], parent, pos=inputs[3], include_self=include_self)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for g, r in zip(gradients(out, inputs, upstream), gradients(ref, inputs, upstream)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(20))
def test_random_gradients_match_reference(seed: int, kernel: str) -> None:
    parent = random_case(1000 + seed)
    include_self = bool(seed % 2)
    inputs = make_inputs(parent, seed=seed, requires_grad=True)
    upstream = torch.randn(inputs[2].shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))
    out = hsa(*inputs[:3], Hierarchy.from_parent(parent), pos=inputs[3], include_self=include_self)
    ref = hsa_reference(*inputs[:3], parent, pos=inputs[3], include_self=include_self)
    for g, r in zip(gradients(out, inputs, upstream), gradients(ref, inputs, upstream)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["unbalanced", "unary_chain", "one_leaf_chain", "forest"])
@pytest.mark.parametrize("include_self", [False, True])
def test_gradcheck(name: str, include_self: bool, kernel: str) -> None:
    parent = FIXED[name]
    h = Hierarchy.from_parent(parent)
    inputs = make_inputs(parent, heads=2, dim=3, pos_dim=2, requires_grad=True)
    torch.autograd.gradcheck(lambda q, k, v, p: hsa(q, k, v, h, pos=p, include_self=include_self), inputs)


def test_per_head_positions_match_reference(kernel: str) -> None:
    parent = FIXED["forest"]
    q, k, v, _ = make_inputs(parent, heads=3)
    pos = torch.randn(len(parent), 3, 2, dtype=DOUBLE)
    for include_self in (False, True):
        out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self)
        ref = hsa_reference(q, k, v, parent, pos=pos, include_self=include_self)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_leaves", [1, 2, 7, 40])
def test_flat_tree_is_softmax_attention(num_leaves: int, kernel: str) -> None:
    h = Hierarchy.from_parent(flat_tree(num_leaves))
    q, k, v = (torch.randn(num_leaves, 4, 8, dtype=DOUBLE) for _ in range(3))
    heads_first = [x.transpose(0, 1) for x in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*heads_first).transpose(0, 1)
    torch.testing.assert_close(hsa(q, k, v, h, include_self=True), sdpa, rtol=0, atol=1e-12)
    logits = torch.einsum("ihd,jhd->hij", q, k) / 8 ** 0.5
    logits = logits.masked_fill(torch.eye(num_leaves, dtype=torch.bool), float("-inf"))
    masked = torch.einsum("hij,jhd->ihd", torch.softmax(logits, -1).nan_to_num(0.0), v)
    torch.testing.assert_close(hsa(q, k, v, h), masked, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("include_self", [False, True])
def test_factored_attention_is_theta(name: str, include_self: bool) -> None:
    parent = FIXED[name]
    q, k, v, pos = make_inputs(parent)
    h = Hierarchy.from_parent(parent)
    out, attention = hsa(q, k, v, h, pos=pos, include_self=include_self, return_attention=True)
    theta = attention.to_dense()
    torch.testing.assert_close(theta, attention_matrix(q, k, parent, pos=pos, include_self=include_self),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.einsum("hij,jhd->ihd", theta, v), out, rtol=0, atol=1e-12)
    rows = theta.sum(-1)
    no_target = rows.abs() < 1e-12
    torch.testing.assert_close(rows[~no_target], torch.ones_like(rows[~no_target]))
    assert attention.sibling_weight.shape == (h.sibling_index.size(1), 2)


@pytest.mark.parametrize("seed", range(6))
def test_attention_weights_are_differentiable_like_the_reference(seed: int) -> None:
    parent = random_case(seed)
    include_self = bool(seed % 2)
    q, k, _, pos = make_inputs(parent, seed=seed, requires_grad=True)
    attention = hsa_attention(q, k, Hierarchy.from_parent(parent), pos=pos, include_self=include_self)
    theta = attention.to_dense()
    ref = attention_matrix(q, k, parent, pos=pos, include_self=include_self)
    torch.testing.assert_close(theta, ref, rtol=0, atol=1e-12)
    upstream = torch.randn(theta.shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))
    for g, r in zip(gradients(theta, [q, k, pos], upstream), gradients(ref, [q, k, pos], upstream)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_row_sums_on_random_forests() -> None:
    for seed in range(10):
        parent = random_case(seed)
        q, k, v, pos = make_inputs(parent, seed=seed)
        h = Hierarchy.from_parent(parent)
        alone = h.leaf_count[h.root[h.leaf_node]] == 1
        for include_self in (False, True):
            _, attention = hsa(q, k, v, h, pos=pos, include_self=include_self, return_attention=True)
            rows = attention.to_dense().sum(-1)
            expected = torch.where(alone & (not include_self), 0.0, 1.0).to(DOUBLE)
            torch.testing.assert_close(rows, expected.expand_as(rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_relabelling_invariance(seed: int) -> None:
    rng = random.Random(seed)
    parent = random_forest(rng, [9, 5, 1], max_children=4, chain_prob=0.3)
    new_parent, old_row = relabel(parent, rng)
    q, k, v, _ = make_inputs(parent, pos_dim=None, seed=seed)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), include_self=True)
    new_out = hsa(q[old_row], k[old_row], v[old_row], Hierarchy.from_parent(new_parent), include_self=True)
    torch.testing.assert_close(new_out, out[old_row], rtol=0, atol=1e-12)


def test_forest_equals_trees_run_separately(kernel: str) -> None:
    rng = random.Random(7)
    trees = [random_tree(rng, n, max_children=5, chain_prob=0.2) for n in (11, 1, 6, 17)]
    q, k, v, pos = make_inputs(forest(*trees), seed=3)
    for include_self in (False, True):
        out = hsa(q, k, v, Hierarchy.from_parent(forest(*trees)), pos=pos, include_self=include_self)
        row = node = 0
        for tree in trees:
            n_leaves = len([x for x in range(len(tree)) if x not in set(tree)])
            rows, nodes = slice(row, row + n_leaves), slice(node, node + len(tree))
            alone = hsa(q[rows], k[rows], v[rows], Hierarchy.from_parent(tree), pos=pos[nodes],
                        include_self=include_self)
            torch.testing.assert_close(out[rows], alone, rtol=0, atol=1e-12)
            row, node = row + n_leaves, node + len(tree)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("include_self", [False, True])
def test_low_precision_error_within_twice_naive(dtype: torch.dtype, include_self: bool, kernel: str) -> None:
    check_low_precision(dtype, include_self, torch.device("cpu"))


def check_low_precision(dtype: torch.dtype, include_self: bool, device: torch.device) -> None:
    """HSA's error against float64 in ``dtype`` on ``device`` is within 2x the naive dense one's."""
    parent = random_forest(random.Random(3), [30, 12], max_children=6, chain_prob=0.2)
    q, k, v, pos = make_inputs(parent, heads=2, dim=16, seed=5)
    exact = hsa_reference(q, k, v, parent, pos=pos, include_self=include_self)
    low = [x.to(dtype) for x in (q, k, v, pos)]
    out = hsa(*[x.to(device) for x in low[:3]], Hierarchy.from_parent(parent).to(device), pos=low[3].to(device),
              include_self=include_self)
    naive = hsa_reference(*low[:3], parent, pos=low[3], include_self=include_self, dtype=dtype)
    assert out.dtype == dtype and out.device.type == device.type
    error = (out.cpu().double() - exact).abs().max()
    naive_error = (naive.double() - exact).abs().max()
    assert error <= 2 * naive_error, (error, naive_error)


@pytest.mark.parametrize("include_self", [False, True])
def test_huge_logits_stay_finite(include_self: bool, kernel: str) -> None:
    parent = FIXED["forest"]
    q, k, v, pos = make_inputs(parent, dim=4, seed=2, dtype=torch.float32)
    q = (q * 5e3).requires_grad_()
    k = (k * 5e3).requires_grad_()
    pos = (pos * 100).requires_grad_()
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self)
    out.square().sum().backward()
    for t in (out, q.grad, k.grad, pos.grad):
        assert torch.isfinite(t).all()
    ref = hsa_reference(q, k, v, parent, pos=pos, include_self=include_self)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-3)


def test_one_head_shape_scale_and_dtype() -> None:
    parent = FIXED["unbalanced"]
    q, k, v, pos = make_inputs(parent, heads=1)
    out = hsa(q[:, 0], k[:, 0], v[:, 0], Hierarchy.from_parent(parent), pos=pos, scale=0.3)
    assert out.shape == v[:, 0].shape
    ref = hsa_reference(q, k, v, parent, pos=pos, scale=0.3)[:, 0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_value_dim_may_differ(kernel: str) -> None:
    parent = FIXED["unary_chain"]
    q, k, _, pos = make_inputs(parent, heads=2, dim=4)
    v = torch.randn(q.size(0), 2, 7, dtype=DOUBLE)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=True)
    torch.testing.assert_close(out, hsa_reference(q, k, v, parent, pos=pos, include_self=True),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("saved_blocks_bytes", [0, 1 << 20])
def test_small_blocks_and_leaf_chunks_give_the_same_result(monkeypatch, saved_blocks_bytes: int,
                                                           dp_kernel) -> None:
    """Blocks split by rows, leaf rows in chunks, and the backward pass with the forward's blocks kept or
    recomputed."""
    monkeypatch.setattr(plan_module, "BLOCK_BUDGET", 64)
    monkeypatch.setattr(walks_module, "LEAF_CHUNK", 5)
    monkeypatch.setattr(dp_module, "SAVED_BLOCKS_BYTES", saved_blocks_bytes)
    parent = forest(flat_tree(23), random_tree(random.Random(1), 30, max_children=9))
    h = Hierarchy.from_parent(parent)
    assert any(block.num_rows < block.width for block in family_blocks(h))
    assert_values_and_gradients_match_reference(h, parent, make_inputs(parent, requires_grad=True), True)


def assert_values_and_gradients_match_reference(h: Hierarchy, parent: list[int], inputs: list,
                                                include_self: bool) -> None:
    """``hsa`` on ``h`` equals the float64 reference on ``parent`` in values and gradients (``inputs``: q, k,
    v, pos)."""
    out = hsa(*inputs[:3], h, pos=inputs[3], include_self=include_self)
    ref = hsa_reference(*inputs[:3], parent, pos=inputs[3], include_self=include_self)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    upstream = torch.randn_like(out)
    for g, r in zip(gradients(out, inputs, upstream), gradients(ref, inputs, upstream)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("min_contiguous", [1, 10, 1 << 20])
def test_contiguous_leaf_families_read_as_views_give_the_same_result(monkeypatch, min_contiguous: int,
                                                                    dp_kernel) -> None:
    """Runs of adjacent all-leaf families covering at least ``MIN_CONTIGUOUS_LEAVES`` leaves get blocks of
    their own that read the leaf rows as views; shorter runs share blocks with the other families."""
    monkeypatch.setattr(plan_module, "MIN_CONTIGUOUS_LEAVES", min_contiguous)
    windows = Hierarchy.from_windows(24, (3, 2)).parent.tolist()     # a run of 8 families of 3 leaves
    parent = forest(windows, random_tree(random.Random(4), 30, max_children=4))
    h = Hierarchy.from_parent(parent)
    views = [block for block in family_blocks(h) if block.rows.leaf_start >= 0]
    assert sum(block.families for block in views) >= (8 if min_contiguous <= 24 else 0)
    if min_contiguous > 24:
        assert all(block.families == 1 for block in views)
    inputs = make_inputs(parent, requires_grad=True)
    for include_self in (False, True):
        assert_values_and_gradients_match_reference(h, parent, inputs, include_self)


@pytest.mark.parametrize("pos_per_head", [False, True])
@pytest.mark.parametrize("include_self", [False, True])
def test_backward_by_groups_of_heads_gives_the_same_gradients(monkeypatch, pos_per_head: bool,
                                                              include_self: bool, dp_kernel) -> None:
    monkeypatch.setattr(dp_module, "BACKWARD_INNER_BYTES", 1)
    parent = forest(random_tree(random.Random(2), 25, max_children=5), flat_tree(4))
    h = Hierarchy.from_parent(parent)
    q, k, v, _ = make_inputs(parent, heads=3)
    assert len(dp_module._head_groups(h, q)) == 3
    pos = 0.5 * torch.randn((len(parent), 3, 2) if pos_per_head else (len(parent), 2), dtype=DOUBLE)
    inputs = [x.requires_grad_(True) for x in (q, k, v, pos)]
    out = hsa(*inputs[:3], h, pos=inputs[3], include_self=include_self)
    ref = hsa_reference(*inputs[:3], parent, pos=inputs[3], include_self=include_self)
    upstream = torch.randn_like(out)
    for g, r in zip(gradients(out, inputs, upstream), gradients(ref, inputs, upstream)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad, message", [
    (lambda q, k, v, h: hsa(q[:-1], k[:-1], v[:-1], h), "rows but the hierarchy has"),
    (lambda q, k, v, h: hsa(q, k[..., :-1], v, h), "same shape"),
    (lambda q, k, v, h: hsa(q, k, v[:, :1], h), "must match query"),
    (lambda q, k, v, h: hsa(q.int(), k, v, h), "floating-point"),
    (lambda q, k, v, h: hsa(q, k, v, h, pos=torch.zeros(3, 2)), "pos must be"),
    (lambda q, k, v, h: hsa(q.clone().index_fill_(0, torch.tensor([1]), float("nan")), k, v, h), "NaN"),
    (lambda q, k, v, h: hsa(q, k, v.clone().index_fill_(0, torch.tensor([0]), float("inf")), h), "NaN"),
    (lambda q, k, v, h: hsa(q, k, v, h.parent), "hgattn.Hierarchy"),
])
def test_bad_inputs_raise_clear_errors(bad, message: str) -> None:
    parent = FIXED["unbalanced"]
    q, k, v, _ = make_inputs(parent)
    with pytest.raises((ValueError, TypeError), match=message):
        bad(q, k, v, Hierarchy.from_parent(parent))


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("pos_dim", [None, 3])
def test_forest_of_small_and_large_trees_is_split_between_dense_and_dp(include_self: bool, pos_dim) -> None:
    """With the default cost model, small trees go to dense groups of similar size and large ones to the DP
    in the same call; the result equals the reference in values and gradients."""
    from hgattn.attention.dense import MAX_DENSE_NODES, dense_plan

    rng = random.Random(7)
    sizes = [3, 120, 9, 1, 25, 2, 60, 14]
    parent = relabel(random_forest(rng, sizes, max_children=5, chain_prob=0.2), rng)[0]
    h = Hierarchy.from_parent(parent)
    plan = dense_plan(h)
    dense_trees = sum(group.trees for group in plan.groups)
    assert len(plan.groups) >= 2 and plan.rest is not None and 0 < plan.rest.num_trees < len(sizes)
    assert dense_trees + plan.rest.num_trees == len(sizes)
    assert all(group.leaves + group.inner <= MAX_DENSE_NODES for group in plan.groups)
    inputs = make_inputs(parent, heads=3, pos_dim=pos_dim, requires_grad=True)
    assert_values_and_gradients_match_reference(h, parent, inputs, include_self)


def test_dense_plan_is_cached_and_moves_with_the_hierarchy() -> None:
    from hgattn.attention.dense import dense_plan

    h = Hierarchy.from_parent(forest(UNBALANCED, flat_tree(4)))
    plan = dense_plan(h)
    assert dense_plan(h) is plan
    moved = h.to("meta")
    assert dense_plan(moved).groups[0].bias.device.type == "meta"
