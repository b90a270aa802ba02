"""Tests of the float64 closed-form reference (spec sections 2-4), including a brute-force KL minimiser."""
from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from hgattn.attention.reference import attention_matrix, flat_logits, hsa_reference
from trees import (
    LONE_LEAF,
    ONE_LEAF_CHAIN,
    ONE_LEAF_ROOT,
    UNARY_CHAIN,
    UNBALANCED,
    flat_tree,
    forest,
    leaves_of,
    random_forest,
    random_tree,
    relabel,
)

DTYPE = torch.float64


def make_inputs(
    parent: list[int], *, heads: int = 2, dim: int = 4, pos_dim: int = 3, seed: int = 0
) -> SimpleNamespace:
    """Seeded query/key/value ``[N, H, d]`` and per-head positions ``[T, H, C]`` for a parent array."""
    gen = torch.Generator().manual_seed(seed)
    num_leaves = len(leaves_of(parent))

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    return SimpleNamespace(
        parent=torch.tensor(parent),
        query=draw(num_leaves, heads, dim),
        key=draw(num_leaves, heads, dim),
        value=draw(num_leaves, heads, dim),
        pos=0.5 * draw(len(parent), heads, pos_dim),
    )


def ancestors(parent: list[int], node: int) -> list[int]:
    """``node`` and its ancestors, bottom-up."""
    chain = [node]
    while parent[chain[-1]] >= 0:
        chain.append(parent[chain[-1]])
    return chain


def highest_distinct_ancestors(parent: list[int], i: int, j: int) -> Optional[tuple[int, int]]:
    """The children of the lowest common ancestor above leaves i and j; None across trees."""
    up_i, up_j = ancestors(parent, i), ancestors(parent, j)
    common = set(up_i) & set(up_j)
    if not common:
        return None
    lca = next(node for node in up_i if node in common)
    return up_i[up_i.index(lca) - 1], up_j[up_j.index(lca) - 1]


def brute_flat_logits(
    parent: list[int], query: torch.Tensor, key: torch.Tensor, pos: Optional[torch.Tensor], include_self: bool
) -> torch.Tensor:
    """Section 2's s_ij for one head (``query``/``key`` ``[N, d]``, ``pos`` ``[T, C]``), entry by entry."""
    leaves = leaves_of(parent)
    scale = query.shape[-1] ** -0.5
    logits = torch.full((len(leaves), len(leaves)), float("-inf"), dtype=DTYPE)
    for i, leaf_i in enumerate(leaves):
        for j, leaf_j in enumerate(leaves):
            if i == j:
                pair: Optional[tuple[int, int]] = (leaf_i, leaf_i) if include_self else None
            else:
                pair = highest_distinct_ancestors(parent, leaf_i, leaf_j)
            if pair is not None:
                position = 0.0 if pos is None else float(pos[pair[0]] @ pos[pair[1]])
                logits[i, j] = float(query[i] @ key[j]) * scale + position
    return logits


def sibling_blocks(parent: list[int]) -> list[list[tuple[int, int]]]:
    """Leaf-row pairs (i, j) of each ordered sibling block leaves(A) x leaves(B), A != B."""
    leaves = leaves_of(parent)
    row_of = {leaf: row for row, leaf in enumerate(leaves)}
    rows_below = {node: [row_of[leaf] for leaf in leaves if node in ancestors(parent, leaf)]
                  for node in range(len(parent))}
    blocks = []
    for node_a, up_a in enumerate(parent):
        for node_b, up_b in enumerate(parent):
            if up_a >= 0 and up_a == up_b and node_a != node_b:
                blocks.append([(i, j) for i in rows_below[node_a] for j in rows_below[node_b]])
    return blocks


def kl_projection(parent: list[int], logits: torch.Tensor, include_self: bool) -> np.ndarray:
    """argmin sum_i KL(Theta_i || softmax_i(logits)) over block-constant row-stochastic Theta, by SLSQP.

    One free variable per ordered sibling block (shared by all its rows and columns), plus one per
    diagonal entry with include_self. Rows with no attention target stay zero.
    """
    num_leaves = logits.shape[0]
    log_target = torch.log_softmax(logits, dim=-1).numpy()
    groups = sibling_blocks(parent)
    if include_self:
        groups += [[(i, i)] for i in range(num_leaves)]
    covered = sorted(entry for group in groups for entry in group)
    assert covered == sorted(zip(*np.nonzero(np.isfinite(logits.numpy())))), "blocks must tile the support"

    var = np.array([v for v, group in enumerate(groups) for _ in group])
    rows = np.array([i for group in groups for i, _ in group])
    cols = np.array([j for group in groups for _, j in group])
    log_p = log_target[rows, cols]
    row_sums = np.zeros((num_leaves, len(groups)))
    np.add.at(row_sums, (rows, var), 1.0)
    row_sums = row_sums[row_sums.any(axis=1)]

    def objective(x: np.ndarray) -> float:
        return float(np.sum(x[var] * (np.log(x[var]) - log_p)))

    def gradient(x: np.ndarray) -> np.ndarray:
        return np.bincount(var, weights=np.log(x[var]) + 1.0 - log_p, minlength=len(groups))

    start = np.bincount(var, weights=np.exp(log_p), minlength=len(groups)) / np.bincount(var)
    result = minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=[(1e-12, 1.0)] * len(groups),
        constraints=[{"type": "eq", "fun": lambda x: row_sums @ x - 1.0, "jac": lambda x: row_sums}],
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    assert result.success, result.message
    theta = np.zeros((num_leaves, num_leaves))
    theta[rows, cols] = result.x[var]
    return theta


def has_target(parent: list[int], include_self: bool) -> torch.Tensor:
    """Per leaf row: whether it has anything to attend to (itself, or another leaf of its tree)."""
    leaves = leaves_of(parent)
    roots = [ancestors(parent, leaf)[-1] for leaf in leaves]
    return torch.tensor([include_self or roots.count(root) > 1 for root in roots])


KL_TREES = {
    "flat": flat_tree(4),
    "unbalanced": UNBALANCED,
    "unary_chain": UNARY_CHAIN,
    "lone_leaf": LONE_LEAF,
    "forest": forest([-1, 0, 0, 0], [-1, 0, 0, 1, 1], ONE_LEAF_ROOT),
    "binary7": [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6],
    "random": random_tree(random.Random(3), 6, chain_prob=0.3),
}


@pytest.mark.parametrize("name", KL_TREES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("with_pos", [False, True])
def test_closed_form_is_the_kl_projection(name: str, include_self: bool, with_pos: bool) -> None:
    parent = KL_TREES[name]
    data = make_inputs(parent, heads=1, seed=len(parent))
    query, key = data.query[:, 0], data.key[:, 0]
    pos = data.pos[:, 0] if with_pos else None
    logits = brute_flat_logits(parent, query, key, pos, include_self)
    expected = kl_projection(parent, logits, include_self)
    theta = attention_matrix(query, key, data.parent, pos=pos, include_self=include_self)
    torch.testing.assert_close(theta[0], torch.from_numpy(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", KL_TREES)
@pytest.mark.parametrize("include_self", [False, True])
def test_flat_logits_match_entrywise_definition(name: str, include_self: bool) -> None:
    parent = KL_TREES[name]
    data = make_inputs(parent, heads=2, seed=1)
    logits = flat_logits(data.query, data.key, data.parent, pos=data.pos, include_self=include_self)
    for head in range(2):
        expected = brute_flat_logits(parent, data.query[:, head], data.key[:, head], data.pos[:, head],
                                     include_self)
        torch.testing.assert_close(logits[head], expected, rtol=0, atol=1e-12)


def test_flat_tree_is_standard_attention() -> None:
    data = make_inputs(flat_tree(7), heads=3, dim=5)
    q, k, v = (x.transpose(0, 1) for x in (data.query, data.key, data.value))
    out = hsa_reference(data.query, data.key, data.value, data.parent, include_self=True)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_flat_tree_without_self_is_diagonal_masked_softmax() -> None:
    data = make_inputs(flat_tree(7), heads=3, dim=5)
    q, k, v = (x.transpose(0, 1) for x in (data.query, data.key, data.value))
    off_diagonal = ~torch.eye(7, dtype=torch.bool)
    out = hsa_reference(data.query, data.key, data.value, data.parent)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=off_diagonal).transpose(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    theta = attention_matrix(data.query, data.key, data.parent)
    logits = flat_logits(data.query, data.key, data.parent)
    torch.testing.assert_close(theta, torch.softmax(logits, dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("include_self", [False, True])
def test_rows_are_stochastic_or_empty(seed: int, include_self: bool) -> None:
    rng = random.Random(seed)
    parent = random_forest(rng, [rng.randint(1, 9) for _ in range(3)] + [1])
    data = make_inputs(parent, seed=seed)
    theta = attention_matrix(data.query, data.key, data.parent, pos=data.pos, include_self=include_self)
    assert (theta >= 0).all()
    targets = has_target(parent, include_self)
    sums = theta.sum(-1)
    torch.testing.assert_close(sums[:, targets], torch.ones_like(sums[:, targets]), rtol=0, atol=1e-12)
    assert (theta[:, ~targets] == 0).all()
    if not include_self:
        assert (torch.diagonal(theta, dim1=-2, dim2=-1) == 0).all()


@pytest.mark.parametrize("include_self", [False, True])
def test_forest_is_block_diagonal_of_its_trees(include_self: bool) -> None:
    rng = random.Random(7)
    trees = [random_tree(rng, count) for count in (4, 1, 6)]
    data = make_inputs(forest(*trees))
    theta = attention_matrix(data.query, data.key, data.parent, pos=data.pos, include_self=include_self)
    blocks = []
    start_row, start_node = 0, 0
    for tree in trees:
        rows = slice(start_row, start_row + len(leaves_of(tree)))
        nodes = slice(start_node, start_node + len(tree))
        blocks.append(attention_matrix(data.query[rows], data.key[rows], torch.tensor(tree),
                                       pos=data.pos[nodes], include_self=include_self))
        start_row, start_node = rows.stop, nodes.stop
    expected = torch.stack([torch.block_diag(*(block[head] for block in blocks)) for head in range(2)])
    torch.testing.assert_close(theta, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("include_self", [False, True])
def test_inserting_a_unary_link_changes_nothing(include_self: bool) -> None:
    parent = UNBALANCED
    data = make_inputs(parent)
    for node in range(1, len(parent)):
        linked = parent + [parent[node]]
        linked[node] = len(parent)
        pos = torch.cat([data.pos, data.pos[node : node + 1]])
        theta = attention_matrix(data.query, data.key, torch.tensor(linked), pos=pos,
                                 include_self=include_self)
        expected = attention_matrix(data.query, data.key, data.parent, pos=data.pos,
                                    include_self=include_self)
        torch.testing.assert_close(theta, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("include_self", [False, True])
def test_node_numbering_does_not_matter(include_self: bool) -> None:
    rng = random.Random(11)
    parent = random_forest(rng, [5, 3, 1])
    new_id = list(range(len(parent)))
    rng.shuffle(new_id)
    shuffled = relabel(parent, new_id)
    data = make_inputs(parent)
    row_of_new = {leaf: row for row, leaf in enumerate(leaves_of(shuffled))}
    perm = torch.tensor([row_of_new[new_id[leaf]] for leaf in leaves_of(parent)])
    inverse = torch.argsort(perm)
    node_inverse = torch.argsort(torch.tensor(new_id))
    theta = attention_matrix(data.query[inverse], data.key[inverse], torch.tensor(shuffled),
                             pos=data.pos[node_inverse], include_self=include_self)
    expected = attention_matrix(data.query, data.key, data.parent, pos=data.pos, include_self=include_self)
    torch.testing.assert_close(theta[:, perm][:, :, perm], expected, rtol=0, atol=1e-12)


GRAD_TREES = {
    "unbalanced": UNBALANCED,
    "unary_chain": UNARY_CHAIN,
    "lone_leaf": LONE_LEAF,
    "one_leaf_root": ONE_LEAF_ROOT,
    "one_leaf_chain": ONE_LEAF_CHAIN,
    "forest": forest(ONE_LEAF_CHAIN, [-1, 0, 0]),
}


@pytest.mark.parametrize("name", GRAD_TREES)
@pytest.mark.parametrize("include_self", [False, True])
def test_gradcheck(name: str, include_self: bool) -> None:
    data = make_inputs(GRAD_TREES[name], heads=2, dim=2, pos_dim=2)
    inputs = tuple(x.requires_grad_() for x in (data.query, data.key, data.value, data.pos))

    def hsa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return hsa_reference(query, key, value, data.parent, pos=pos, include_self=include_self)

    assert torch.autograd.gradcheck(hsa, inputs)


@pytest.mark.parametrize("name", ["one_leaf_root", "one_leaf_chain", "unary_chain", "lone_leaf"])
@pytest.mark.parametrize("include_self", [False, True])
def test_degenerate_trees_have_finite_gradients(name: str, include_self: bool) -> None:
    data = make_inputs(GRAD_TREES[name])
    inputs = [x.requires_grad_() for x in (data.query, data.key, data.value, data.pos)]
    out = hsa_reference(*inputs[:3], data.parent, pos=inputs[3], include_self=include_self)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.square().sum(), inputs, allow_unused=True, materialize_grads=True)
    assert all(torch.isfinite(grad).all() for grad in grads)


def test_one_leaf_tree_attends_only_to_itself() -> None:
    for parent in (ONE_LEAF_ROOT, ONE_LEAF_CHAIN):
        data = make_inputs(parent)
        with_self = hsa_reference(data.query, data.key, data.value, data.parent, include_self=True)
        without = hsa_reference(data.query, data.key, data.value, data.parent)
        torch.testing.assert_close(with_self, data.value, rtol=0, atol=1e-15)
        assert (without == 0).all()


def test_single_head_inputs_keep_their_shape() -> None:
    data = make_inputs(UNARY_CHAIN, heads=1)
    query, key, value = (x[:, 0].float() for x in (data.query, data.key, data.value))
    out = hsa_reference(query, key, value, data.parent, pos=data.pos[:, 0])
    assert out.shape == value.shape and out.dtype == DTYPE
    theta = attention_matrix(query, key, data.parent, pos=data.pos[:, 0])
    assert theta.shape == (1, len(value), len(value)) and theta.dtype == DTYPE


def test_heads_are_independent_and_shared_pos_broadcasts() -> None:
    data = make_inputs(UNBALANCED, heads=3)
    per_head = hsa_reference(data.query, data.key, data.value, data.parent, pos=data.pos)
    shared = hsa_reference(data.query, data.key, data.value, data.parent, pos=data.pos[:, 1])
    for head in range(3):
        alone = hsa_reference(data.query[:, head], data.key[:, head], data.value[:, head], data.parent,
                              pos=data.pos[:, head])
        torch.testing.assert_close(per_head[:, head], alone, rtol=0, atol=1e-12)
        alone_shared = hsa_reference(data.query[:, head], data.key[:, head], data.value[:, head],
                                     data.parent, pos=data.pos[:, 1])
        torch.testing.assert_close(shared[:, head], alone_shared, rtol=0, atol=1e-12)


def test_scale_and_hierarchy_object() -> None:
    data = make_inputs(UNBALANCED)
    hierarchy = SimpleNamespace(parent=data.parent)
    doubled = attention_matrix(2 * data.query, data.key, hierarchy, scale=0.25)
    expected = attention_matrix(data.query, data.key, data.parent, scale=0.5)
    torch.testing.assert_close(doubled, expected, rtol=0, atol=1e-12)


def test_value_rows_must_match_leaves() -> None:
    data = make_inputs(UNBALANCED)
    with pytest.raises(ValueError, match="leaves"):
        hsa_reference(data.query, data.key, data.value[:-1], data.parent)
