"""Sharded HSA (hgattn.attention.sharded): the rows and gradients of the single-process hgattn.hsa, exactly.

The default suite checks the decomposition in one process (world_size 1 with a real cut: a top tree above
local subtrees) and the shards' structure; the slow tests spawn 2 and 4 gloo processes.
"""
from __future__ import annotations

import datetime
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hgattn import Hierarchy, hsa
from hgattn.attention import count_communication, shard_hierarchy, sharded_hsa
from trees import LONE_LEAF, ONE_LEAF_ROOT, UNARY_CHAIN, UNBALANCED, forest, random_forest, random_tree

HEADS, DIM, DIM_V = 2, 3, 4
TOLERANCE = dict(atol=1e-10, rtol=1e-10)
POS_KINDS = (None, "shared", "per-head")


# ---------------------------------------------------------------------- trees and inputs
def random_unbalanced(seed: int) -> Hierarchy:
    """A preorder forest: random trees (unary chains, mixed depths) and the degenerate hand-made ones."""
    rng = random.Random(seed)
    return Hierarchy.from_parent(forest(random_forest(rng, [37, 9], max_children=5), UNARY_CHAIN, LONE_LEAF,
                                        random_tree(rng, 23, max_children=3, chain_prob=0.3), ONE_LEAF_ROOT))


def one_random_tree(seed: int) -> Hierarchy:
    """One preorder random tree: every rank's subtrees attend to the others' through the top tree."""
    return Hierarchy.from_parent(random_tree(random.Random(seed), 70, max_children=4, chain_prob=0.25))


def bottom_up_random(seed: int) -> Hierarchy:
    """Hierarchy.random: leaves first, inner nodes numbered level by level (not depth-first), skipped levels."""
    return Hierarchy.random(70, (1, 5), skip=0.3, generator=torch.Generator().manual_seed(seed))


def graph_hierarchy(seed: int) -> tuple[Hierarchy, torch.Tensor]:
    """Spectral-partition tree of a random graph of 64 nodes, with its Laplacian position features."""
    from torch_geometric.data import Data
    from torch_geometric.utils import erdos_renyi_graph

    from hgattn.transforms import GraphHierarchy

    torch.manual_seed(seed)
    out = GraphHierarchy(4, method="spectral", pe_dim=3)(Data(edge_index=erdos_renyi_graph(64, 0.08),
                                                              num_nodes=64))
    h = Hierarchy.from_hetero(out)
    return h, h.node_features({nt: out[nt].pos for nt in out.node_types}).double()


def make_inputs(h: Hierarchy, pos_kind: str | None, seed: int, graph_pos: torch.Tensor | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = {name: torch.randn(h.num_leaves, HEADS, size, generator=g, dtype=torch.float64)
              for name, size in (("q", DIM), ("k", DIM), ("v", DIM_V))}
    inputs["weight"] = torch.randn(h.num_leaves, HEADS, DIM_V, generator=g, dtype=torch.float64)
    if pos_kind == "shared":
        inputs["pos"] = graph_pos if graph_pos is not None else torch.randn(h.num_nodes, 2, generator=g,
                                                                            dtype=torch.float64)
    elif pos_kind == "per-head":
        inputs["pos"] = torch.randn(h.num_nodes, HEADS, 2, generator=g, dtype=torch.float64)
    return inputs


def single_process(h: Hierarchy, inputs: dict, include_self: bool) -> dict:
    """Output and gradients (of ``sum(out * weight)``) of the plain hgattn.hsa call on the full hierarchy."""
    leaves = {name: inputs[name].clone().requires_grad_() for name in ("q", "k", "v", "pos") if name in inputs}
    out = hsa(leaves["q"], leaves["k"], leaves["v"], h, pos=leaves.get("pos"), include_self=include_self)
    (out * inputs["weight"]).sum().backward()
    return {"out": out.detach(), **{name: x.grad for name, x in leaves.items()}}


def sharded(shard, inputs: dict, include_self: bool) -> dict:
    """Output and gradients of sharded_hsa on this shard's rows (loss: its rows of ``sum(out * weight)``)."""
    rows = shard.leaf_rows
    local = {name: inputs[name][rows].clone().requires_grad_() for name in ("q", "k", "v")}
    if "pos" in inputs:
        local["pos"] = inputs["pos"][shard.pos_nodes].clone().requires_grad_()
    out = sharded_hsa(local["q"], local["k"], local["v"], shard, pos=local.get("pos"),
                      include_self=include_self)
    (out * inputs["weight"][rows]).sum().backward()
    return {"out": out.detach(), **{name: x.grad for name, x in local.items()}}


def assert_rows_match(shard, got: dict, want: dict, pos_top_grad: torch.Tensor | None = None) -> None:
    """``got`` (this shard) equals the rows of ``want`` (single process); the top tree's ``pos`` rows are
    compared as ``pos_top_grad`` (the sum over ranks) when given."""
    rows = shard.leaf_rows
    for name in ("out", "q", "k", "v"):
        torch.testing.assert_close(got[name], want[name][rows], **TOLERANCE, msg=lambda m: f"{name}: {m}")
    if "pos" in want:
        top = shard.top.nodes.numel()
        torch.testing.assert_close(got["pos"][top:], want["pos"][shard.pos_nodes[top:]], **TOLERANCE)
        top_grad = got["pos"][:top] if pos_top_grad is None else pos_top_grad
        torch.testing.assert_close(top_grad, want["pos"][shard.top.nodes], **TOLERANCE)


# ---------------------------------------------------------------------- one process (default suite)
@pytest.mark.parametrize("tree", ["unbalanced", "bottom-up", "graph"])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("pos_kind", POS_KINDS)
def test_decomposition_matches_hsa_in_one_process(tree, include_self, pos_kind):
    graph_pos = None
    if tree == "graph":
        h, graph_pos = graph_hierarchy(0)
    else:
        h = random_unbalanced(1) if tree == "unbalanced" else bottom_up_random(1)
    shard, = shard_hierarchy(h, 1, imbalance=0.2)
    cuts = shard.top.hierarchy.num_leaves
    assert shard.top.nodes.numel() > cuts and shard.local.num_nodes > cuts     # a real top tree and subtrees
    inputs = make_inputs(h, pos_kind, seed=2, graph_pos=graph_pos)
    assert_rows_match(shard, sharded(shard, inputs, include_self), single_process(h, inputs, include_self))


@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("tree", ["unbalanced", "bottom-up", "graph", "windows"])
def test_shards_cover_the_tree_once_and_balance_leaves(world_size, tree):
    h = {"unbalanced": lambda: random_unbalanced(3), "bottom-up": lambda: bottom_up_random(3),
         "graph": lambda: graph_hierarchy(1)[0], "windows": lambda: Hierarchy.from_windows(200, 4)}[tree]()
    shards = shard_hierarchy(h, world_size, imbalance=0.1)
    top = shards[0].top
    assert all(torch.equal(s.top.nodes, top.nodes) and s.tree_hash == shards[0].tree_hash for s in shards)
    rows = torch.cat([s.leaf_rows for s in shards])
    assert torch.equal(rows.sort().values, torch.arange(h.num_leaves))
    below = torch.cat([s.local_nodes[s.local.parent >= 0] for s in shards])
    assert torch.equal(torch.cat([top.nodes, below]).sort().values, torch.arange(h.num_nodes))
    cut_sizes = h.leaf_count[top.nodes[top.hierarchy.leaf_node]]
    assert int(cut_sizes.max()) <= max(1, 0.1 * h.num_leaves / world_size)
    assert max(s.num_local_leaves for s in shards) - h.num_leaves / world_size <= int(cut_sizes.max())
    for s in shards:
        assert torch.equal(s.local.leaf_count[s.local.parent < 0].sort().values,
                           h.leaf_count[s.local_nodes[s.local.parent < 0]].sort().values)
        if tree in ("unbalanced", "windows"):    # subtrees cover contiguous leaf rows: so does every rank
            assert s.leaf_range is not None


def test_shard_hierarchy_rejects_what_cannot_be_cut():
    with pytest.raises(ValueError, match="1 leaves, fewer than world_size=2"):
        shard_hierarchy(Hierarchy.from_parent(ONE_LEAF_ROOT), 2)
    with pytest.raises(ValueError, match="5 leaves, fewer than world_size=6.*at most 5 ranks"):
        shard_hierarchy(Hierarchy.from_parent(UNBALANCED), 6)
    with pytest.raises(ValueError, match="world_size must be an int >= 1, got 0"):
        shard_hierarchy(Hierarchy.from_parent(UNBALANCED), 0)
    with pytest.raises(ValueError, match="imbalance must be a positive number, got nan"):
        shard_hierarchy(Hierarchy.from_parent(UNBALANCED), 2, imbalance=float("nan"))
    with pytest.raises(TypeError, match="must be a hgattn.Hierarchy, got list"):
        shard_hierarchy(UNBALANCED, 2)
    assert len(shard_hierarchy(Hierarchy.from_parent(UNBALANCED), 5)) == 5    # one leaf per rank still works


def test_sharded_hsa_rejects_bad_inputs_in_one_process():
    h = random_unbalanced(4)
    shard, = shard_hierarchy(h, 1, imbalance=0.3)
    n = shard.num_local_leaves
    q = torch.randn(n, HEADS, DIM)
    with pytest.raises(ValueError, match=f"query has {n - 1} rows but shard 0 holds {n} leaves"):
        sharded_hsa(q[1:], q[1:], q[1:], shard)
    with pytest.raises(ValueError, match="value .* must match query"):
        sharded_hsa(q, q, q[:, :1], shard)
    with pytest.raises(ValueError, match=f"pos must be .*R={shard.pos_nodes.numel()} rows"):
        sharded_hsa(q, q, q, shard, pos=torch.randn(h.num_nodes + 1, 2))
    with pytest.raises(ValueError, match="key contains NaN"):
        sharded_hsa(q, torch.full_like(q, float("nan")), q, shard)
    with pytest.raises(TypeError, match="shard must be a Shard"):
        sharded_hsa(q, q, q, h)
    two = shard_hierarchy(h, 2)[0]
    rows = torch.randn(two.num_local_leaves, HEADS, DIM)
    with pytest.raises(ValueError, match="shard 0 of 2 needs torch.distributed initialised with 2 ranks"):
        sharded_hsa(rows, rows, rows, two)


# ---------------------------------------------------------------------- several processes (slow)
def _cases() -> list[tuple[str, Hierarchy, float, torch.Tensor | None]]:
    h_graph, graph_pos = graph_hierarchy(5)
    return [("forest", random_unbalanced(5), 0.3, None), ("forest-coarse", random_unbalanced(6), 1.0, None),
            ("one-tree", one_random_tree(5), 0.3, None), ("bottom-up", bottom_up_random(5), 0.3, None),
            ("graph", h_graph, 0.3, graph_pos)]


def _worker(rank: int, world_size: int, init_file: str, suite: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        (_exact_suite if suite == "exact" else _error_suite)(rank, world_size)
    finally:
        dist.destroy_process_group()


def _exact_suite(rank: int, world_size: int) -> None:
    for name, h, imbalance, graph_pos in _cases():
        shard = shard_hierarchy(h, world_size, imbalance=imbalance)[rank]
        for include_self in (False, True):
            for pos_kind in POS_KINDS:
                inputs = make_inputs(h, pos_kind, seed=7, graph_pos=graph_pos)
                with count_communication() as stats:
                    got = sharded(shard, inputs, include_self)
                top_grad = None
                if "pos" in got:
                    top_grad = got["pos"][:shard.top.nodes.numel()].clone()
                    dist.all_reduce(top_grad)
                try:
                    assert_rows_match(shard, got, single_process(h, inputs, include_self), top_grad)
                except AssertionError as error:
                    raise AssertionError(f"{name}, include_self={include_self}, pos={pos_kind}: "
                                         f"{error}") from None
                _check_bytes(shard, stats, world_size)


def _check_bytes(shard, stats, world_size: int) -> None:
    """Forward: the 13-integer agreement row and the padded summary chunk; backward: the chunk once more."""
    width = max(b - a for a, b in zip(shard.cut_ptr[:-1], shard.cut_ptr[1:]))
    chunk = width * HEADS * (2 * DIM + DIM_V + 1) * 8
    assert stats.forward_bytes == (world_size - 1) * (13 * 8 + chunk)
    assert stats.backward_bytes == (world_size - 1) * chunk


def _error_suite(rank: int, world_size: int) -> None:
    """Every probe must raise a clear error on every rank, and leave the process group usable."""
    h = random_unbalanced(8)
    shards = shard_hierarchy(h, world_size, imbalance=0.3)
    shard = shards[rank]
    inputs = make_inputs(h, "shared", seed=9)
    rows = shard.leaf_rows
    q, k, v, pos = inputs["q"][rows], inputs["k"][rows], inputs["v"][rows], inputs["pos"][shard.pos_nodes]

    def expect(pattern_here: str, pattern_elsewhere: str, call, failing_rank: int | None = None) -> None:
        pattern = pattern_here if failing_rank in (None, rank) else pattern_elsewhere
        with pytest.raises(ValueError, match=pattern):
            call()

    other = random_unbalanced(9)                        # same leaf count, other tree
    assert other.num_leaves == h.num_leaves and not torch.equal(other.parent, h.parent)
    mixed = shard_hierarchy(other if rank == 1 else h, world_size, imbalance=0.3)[rank]
    expect(r"rank\(s\) \[1\] hold shards of a different hierarchy", "",
           lambda: sharded_hsa(*(inputs[n][mixed.leaf_rows] for n in "qkv"), mixed))
    swapped = shards[(rank + 1) % world_size]
    expect("process rank 0 holds the shard of rank 1", "",
           lambda: sharded_hsa(*(inputs[n][swapped.leaf_rows] for n in "qkv"), swapped))
    bigger = shard_hierarchy(h, world_size + 1, imbalance=0.3)[rank]
    expect(f"built for world_size .*{world_size + 1}.* but the process group has {world_size} ranks", "",
           lambda: sharded_hsa(*(inputs[n][bigger.leaf_rows] for n in "qkv"), bigger))
    heads = 1 if rank == 0 else HEADS
    expect("disagree on heads .rank 0: 1, rank 1: 2", "",
           lambda: sharded_hsa(q[:, :heads], k[:, :heads], v[:, :heads], shard))
    expect("disagree on include_self", "", lambda: sharded_hsa(q, k, v, shard, include_self=rank == 0))
    expect("disagree on pos channels .rank 0: 2, rank 1: no pos", "",
           lambda: sharded_hsa(q, k, v, shard, pos=pos if rank == 0 else None))
    expect("disagree on scale", "", lambda: sharded_hsa(q, k, v, shard, scale=0.5 + rank))
    expect("disagree on need for gradients", "",
           lambda: sharded_hsa(q.clone().requires_grad_(rank == 0), k, v, shard))
    expect(f"on rank 1: query has {q.size(0) - 1} rows", r"rank\(s\) \[1\] gave invalid inputs",
           lambda: sharded_hsa(q[1:] if rank == 1 else q, k[1:] if rank == 1 else k, v[1:] if rank == 1 else v,
                               shard), failing_rank=1)
    expect("on rank 0: pos must be", r"rank\(s\) \[0\] gave invalid inputs",
           lambda: sharded_hsa(q, k, v, shard, pos=pos[1:] if rank == 0 else pos), failing_rank=0)
    expect("on rank 1: value contains NaN", r"rank\(s\) \[1\] gave invalid inputs",
           lambda: sharded_hsa(q, k, v * float("nan") if rank == 1 else v, shard), failing_rank=1)
    assert_rows_match(shard, sharded(shard, inputs, True), single_process(h, inputs, True),
                      _summed_top_grad(shard, inputs))


def _summed_top_grad(shard, inputs: dict) -> torch.Tensor:
    """The sum over ranks of the top tree's ``pos`` gradients (a second, collective, sharded call)."""
    grad = sharded(shard, inputs, True)["pos"][:shard.top.nodes.numel()].clone()
    dist.all_reduce(grad)
    return grad


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("suite", ["exact", "errors"])
def test_sharded_processes_match_single_process(tmp_path, world_size, suite):
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init"), suite), nprocs=world_size, join=True)
