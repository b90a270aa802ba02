"""Column-tied and causal HSA (spec section 4b) against a brute-force per-row KL projection."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from hgattn import Hierarchy, hsa
from hgattn.attention.column_tied import attended_summaries, check_depth_first
from hgattn.attention.reference import flat_logits
from trees import (LONE_LEAF, ONE_LEAF_CHAIN, ONE_LEAF_ROOT, UNARY_CHAIN, UNBALANCED, flat_tree, forest,
                   leaves_of, random_forest)

DOUBLE = torch.float64
FIXED = {"unbalanced": UNBALANCED, "unary_chain": UNARY_CHAIN, "lone_leaf": LONE_LEAF,
         "one_leaf_root": ONE_LEAF_ROOT, "one_leaf_chain": ONE_LEAF_CHAIN, "flat": flat_tree(5),
         "forest": forest(UNBALANCED, ONE_LEAF_ROOT, flat_tree(3), UNARY_CHAIN)}


def depth_first_case(seed: int) -> list[int]:
    """A random forest numbered in preorder (depth-first, children left to right)."""
    rng = random.Random(seed)
    counts = [rng.randint(1, 16) for _ in range(rng.randint(1, 3))]
    return random_forest(rng, counts, max_children=rng.randint(2, 5), chain_prob=rng.choice([0.0, 0.3]))


def make_inputs(parent: list[int], heads: int = 2, dim: int = 4, pos_dim: int | None = 3, seed: int = 0,
                dtype: torch.dtype = DOUBLE, requires_grad: bool = False) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    n = len(leaves_of(parent))
    tensors = [torch.randn(n, heads, dim, generator=gen, dtype=DOUBLE) for _ in range(3)]
    tensors.append(None if pos_dim is None else 0.5 * torch.randn(len(parent), pos_dim, generator=gen,
                                                                    dtype=DOUBLE))
    return [None if t is None else t.to(dtype).requires_grad_(requires_grad) for t in tensors]


def _chains(parent: list[int]) -> list[list[int]]:
    """Per leaf row, its nodes from the root down to the leaf."""
    chains = []
    for leaf in leaves_of(parent):
        chain = [leaf]
        while parent[chain[-1]] >= 0:
            chain.append(parent[chain[-1]])
        chains.append(chain[::-1])
    return chains


def _split(chain_i: list[int], chain_j: list[int]) -> int:
    """Depth at which two root-to-leaf chains of one tree part."""
    return next(t for t, (a, b) in enumerate(zip(chain_i, chain_j)) if a != b)


def brute_force_theta(query, key, parent, pos=None, include_self=False, causal=False) -> torch.Tensor:
    """``[H, N, N]``: each row of softmax attention projected in KL onto rows uniform within every block.

    The blocks of row ``i`` group the leaves ``j`` by their highest ancestor not above ``i``. Minimising
    ``KL(theta || softmax(s_i))`` with ``theta`` constant on each block gives block values proportional to
    ``exp(mean of s_ij over the block)``; causal rows keep only ``j <= i``.
    """
    logits = flat_logits(query, key, torch.tensor(parent), pos=pos, include_self=include_self)
    chains = _chains(parent)
    heads, n = logits.shape[0], len(chains)
    rows = []
    for i, chain_i in enumerate(chains):
        blocks: dict[int, list[int]] = {}
        for j, chain_j in enumerate(chains):
            if chain_j[0] != chain_i[0] or j == i or (causal and j > i):
                continue
            blocks.setdefault(chain_j[_split(chain_i, chain_j)], []).append(j)
        if include_self:
            blocks[-1 - i] = [i]
        entries = [logits.new_zeros(heads)] * n
        if blocks:
            members = list(blocks.values())
            block_logit = torch.stack([logits[:, i, cols].mean(-1) for cols in members], -1)
            sizes = torch.tensor([len(cols) for cols in members], dtype=DOUBLE)
            value = torch.exp(block_logit - torch.logsumexp(block_logit + sizes.log(), -1, keepdim=True))
            for b, cols in enumerate(members):
                for j in cols:
                    entries[j] = value[:, b]
        rows.append(torch.stack(entries, -1))
    return torch.stack(rows, 1)


def brute_force(query, key, value, parent, pos=None, include_self=False, causal=False) -> torch.Tensor:
    theta = brute_force_theta(query, key, parent, pos, include_self, causal)
    return torch.einsum("hij,jhc->ihc", theta, value.to(DOUBLE))


def column_theta(query, key, parent, pos=None, include_self=False, causal=False) -> torch.Tensor:
    """``[H, N, N]`` attention of the fast operator, read with an identity value."""
    n, heads = query.shape[:2]
    eye = torch.eye(n, dtype=query.dtype).unsqueeze(1).expand(n, heads, n)
    out = hsa(query, key, eye, Hierarchy.from_parent(parent), pos=pos, include_self=include_self,
              tie="columns", causal=causal)
    return out.transpose(0, 1)


VARIANTS = [(False, False), (True, False), (True, True)]


@pytest.mark.parametrize("include_self,causal", VARIANTS)
@pytest.mark.parametrize("seed", range(12))
def test_random_trees_match_brute_force(seed: int, include_self: bool, causal: bool) -> None:
    parent = depth_first_case(seed)
    q, k, v, pos = make_inputs(parent, seed=seed, pos_dim=None if seed % 3 == 0 else 3)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self, tie="columns",
              causal=causal)
    expected = brute_force(q, k, v, parent, pos, include_self, causal)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("include_self,causal", VARIANTS)
@pytest.mark.parametrize("name", FIXED)
def test_fixed_trees_match_brute_force(name: str, include_self: bool, causal: bool) -> None:
    parent = FIXED[name]
    q, k, v, pos = make_inputs(parent, heads=1, seed=3)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self, tie="columns",
              causal=causal)
    expected = brute_force(q, k, v, parent, pos, include_self, causal)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("include_self,causal", VARIANTS)
@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_brute_force(seed: int, include_self: bool, causal: bool) -> None:
    parent = depth_first_case(100 + seed)
    inputs = make_inputs(parent, seed=seed, requires_grad=True)
    q, k, v, pos = inputs
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)
    fast = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=include_self, tie="columns",
               causal=causal)
    slow = brute_force(q, k, v, parent, pos, include_self, causal)
    for g_fast, g_slow in zip(torch.autograd.grad((fast * upstream).sum(), inputs),
                              torch.autograd.grad((slow * upstream).sum(), inputs)):
        torch.testing.assert_close(g_fast, g_slow, atol=1e-10, rtol=1e-8)


def test_brute_force_is_the_kl_minimiser() -> None:
    """The brute force's block formula equals a numerical minimiser of the per-row KL (scipy)."""
    optimize = pytest.importorskip("scipy.optimize")
    parent = UNBALANCED
    q, k, _, pos = make_inputs(parent, heads=1, seed=5)
    theta = brute_force_theta(q, k, parent, pos, include_self=True)[0]
    softmax = torch.softmax(flat_logits(q, k, torch.tensor(parent), pos=pos, include_self=True)[0], -1)
    chains = _chains(parent)
    for i, chain_i in enumerate(chains):
        labels = [-1 if j == i else chain_j[_split(chain_i, chain_j)] for j, chain_j in enumerate(chains)]
        groups = sorted(set(labels))
        member = torch.tensor([[float(label == g) for label in labels] for g in groups], dtype=DOUBLE)

        def kl(free, row=softmax[i], member=member):
            values = torch.softmax(torch.tensor(free), 0) / member.sum(1)
            dense = values @ member
            return float((dense * (dense / row).log()).sum())

        best = optimize.minimize(kl, [0.0] * len(groups), method="BFGS", options={"gtol": 1e-10})
        values = torch.softmax(torch.tensor(best.x), 0) / member.sum(1)
        torch.testing.assert_close(values @ member, theta[i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_causal_gradients_never_reach_later_leaves(seed: int) -> None:
    parent = depth_first_case(200 + seed)
    q, k, v, pos = make_inputs(parent, seed=seed, requires_grad=True)
    out = hsa(q, k, v, Hierarchy.from_parent(parent), pos=pos, include_self=True, causal=True)
    for i in range(out.size(0)):
        grads = torch.autograd.grad(out[i].sum(), (q, k, v), retain_graph=True, allow_unused=True)
        for grad in grads:
            if grad is not None:
                assert bool((grad[i + 1:] == 0).all())
        assert bool((grads[2][i] != 0).all())


def test_causal_windows_depend_only_on_the_past() -> None:
    """Changing later tokens leaves earlier outputs bit-identical on a fixed-window hierarchy."""
    h = Hierarchy.from_windows(37, (2, 4, 3))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(37, 3, 8, generator=gen) for _ in range(3))
    out = hsa(q, k, v, h, include_self=True, causal=True)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[20:] = torch.randn(17, 3, 8, generator=gen)
    assert torch.equal(out[:20], hsa(q2, k2, v2, h, include_self=True, causal=True)[:20])


@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
def test_flat_tree_causal_is_causal_softmax(dtype: torch.dtype) -> None:
    q, k, v, _ = make_inputs(flat_tree(23), heads=3, dim=8, seed=1, dtype=dtype)
    out = hsa(q, k, v, Hierarchy.from_parent(flat_tree(23)), include_self=True, causal=True)
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                              is_causal=True).transpose(0, 1)
    tol = 1e-12 if dtype == DOUBLE else 1e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("include_self", [True, False])
def test_flat_tree_columns_is_softmax(include_self: bool) -> None:
    q, k, v, _ = make_inputs(flat_tree(17), heads=2, dim=8, seed=2)
    out = hsa(q, k, v, Hierarchy.from_parent(flat_tree(17)), include_self=include_self, tie="columns")
    logits = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(8)
    if not include_self:
        logits = logits.masked_fill(torch.eye(17, dtype=torch.bool), float("-inf"))
    expected = torch.einsum("hij,jhd->ihd", torch.softmax(logits, -1), v)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_columns_at_least_as_close_to_softmax_as_blocks(seed: int, include_self: bool) -> None:
    parent = depth_first_case(300 + seed)
    q, k, _, pos = make_inputs(parent, seed=seed)
    flat = flat_logits(q, k, torch.tensor(parent), pos=pos, include_self=include_self)
    log_softmax = torch.log_softmax(flat, -1)

    def kl(theta: torch.Tensor) -> torch.Tensor:
        terms = torch.where(theta > 0, theta * (theta.clamp(min=1e-300).log() - log_softmax), 0.0)
        return terms.sum()

    blocks = hsa(q, k, q, Hierarchy.from_parent(parent), pos=pos, include_self=include_self,
                 return_attention=True)[1].to_dense()
    columns = column_theta(q, k, parent, pos, include_self)
    assert float(kl(columns)) <= float(kl(blocks)) + 1e-9


def test_half_precision_is_computed_in_float32() -> None:
    h = Hierarchy.from_windows(40, (2, 4))
    q, k, v = (torch.randn(40, 2, 16, generator=torch.Generator().manual_seed(s)) for s in range(3))
    out = hsa(q.half(), k.half(), v.half(), h, include_self=True, causal=True)
    assert out.dtype == torch.float16
    expected = hsa(q.half().float(), k.half().float(), v.half().float(), h, include_self=True, causal=True)
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)


def test_one_head_inputs_and_window_tree_match_brute_force() -> None:
    h = Hierarchy.from_windows(19, (2, 3))
    parent = h.parent.tolist()
    q, k, v, _ = make_inputs(parent, heads=1, seed=4, pos_dim=None)
    out = hsa(q[:, 0], k[:, 0], v[:, 0], h, include_self=True, causal=True)
    expected = brute_force(q, k, v, parent, None, True, True)[:, 0]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import hgattn.attention.column_tied as column_tied

    h = Hierarchy.from_windows(50, (3, 4))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(50, 2, 4, generator=gen, dtype=DOUBLE) for _ in range(3))
    whole = hsa(q, k, v, h, tie="columns")
    monkeypatch.setattr(column_tied, "CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(hsa(q, k, v, h, tie="columns"), whole, atol=1e-14, rtol=0)


def test_depth_first_check() -> None:
    check_depth_first(Hierarchy.from_parent(UNBALANCED))
    check_depth_first(Hierarchy.from_windows(30, (2, 5)))
    with pytest.raises(ValueError, match="not consecutive"):
        check_depth_first(Hierarchy.from_parent([-1, 0, 0, 1, 2, 1]))
    with pytest.raises(ValueError, match="earlier leaves"):
        check_depth_first(Hierarchy.from_parent([-1, 0, 0, 2, 2, 1, 1]))


def test_bad_arguments_raise() -> None:
    h = Hierarchy.from_parent([-1, 0, 0, 1, 2, 1])
    q = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="depth-first"):
        hsa(q, q, q, h, include_self=True, causal=True)
    flat = Hierarchy.from_parent(flat_tree(3))
    with pytest.raises(ValueError, match="include_self"):
        hsa(q, q, q, flat, causal=True)
    with pytest.raises(ValueError, match="ties columns only"):
        hsa(q, q, q, flat, include_self=True, causal=True, tie="blocks")
    with pytest.raises(ValueError, match="tie must be one of"):
        hsa(q, q, q, flat, tie="rows")
    with pytest.raises(ValueError, match="return_attention"):
        hsa(q, q, q, flat, tie="columns", return_attention=True)
    with pytest.raises(ValueError, match="leaves"):
        hsa(q[:2], q[:2], q[:2], flat, tie="columns")


@pytest.mark.parametrize("causal", [False, True])
def test_attended_summaries_counts_the_brute_force_blocks(causal: bool) -> None:
    parent = depth_first_case(400)
    q, k, _, _ = make_inputs(parent, heads=1, seed=0)
    theta = brute_force_theta(q, k, parent, include_self=True, causal=causal)[0]
    blocks = sum(len(set(torch.round(row[row > 0], decimals=12).tolist())) for row in theta)
    assert attended_summaries(Hierarchy.from_parent(parent), causal=causal, include_self=True) == blocks
