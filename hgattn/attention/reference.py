"""Plain float64 reference for Hierarchical Self-Attention (spec sections 2-4).

Materialises the attention matrix Theta from the closed form of section 4 with per-node Python loops,
vectorised over heads only. It is meant for checking the fast implementation on tiny inputs.

Conventions shared by every function here:

- ``hierarchy`` is a 1-D LongTensor ``parent`` of length T over all tree nodes (``-1`` marks a root),
  or any object with a ``.parent`` attribute holding one. Several roots form a forest; attention never
  crosses trees. Leaves are the nodes without children; leaf i is the i-th leaf in increasing node id.
- ``query``/``key``/``value`` are ``[N, H, d]`` or ``[N, d]`` (one head), rows in leaf order.
- ``pos`` is an optional per-node embedding ``[T, C]`` (shared by all heads) or ``[T, H, C]``;
  the sibling term is ``p(B, S) = <pos[B], pos[S]>``.
- ``scale`` defaults to ``1 / sqrt(d)``. Everything is computed and returned in float64.

A logit or log-mass that is ``-inf`` for structural reasons (no siblings, no self term) is represented by
``None`` and handled by branching, so autograd never sees ``-inf - -inf`` and gradients stay finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

LogMass = Optional[Tensor]
"""A per-head log quantity of shape ``[H]``; ``None`` stands for a structural ``-inf``."""


@dataclass(frozen=True)
class _Forest:
    """Python-level view of a parent array."""

    parent: list[int]
    children: list[list[int]]
    leaves: list[int]
    rows_below: list[list[int]]
    postorder: list[int]

    @property
    def num_leaves(self) -> int:
        return len(self.leaves)

    def size(self, node: int) -> int:
        """n(node): the number of leaves below ``node`` (1 for a leaf)."""
        return len(self.rows_below[node])

    def siblings(self, node: int) -> list[int]:
        """sib(node); roots have none, since roots of different trees are not siblings."""
        up = self.parent[node]
        if up < 0:
            return []
        return [child for child in self.children[up] if child != node]

    def path(self, leaf: int) -> list[int]:
        """B_1 .. B_m = leaf, top-down, the root excluded; empty when the leaf is itself a root."""
        path = []
        node = leaf
        while self.parent[node] >= 0:
            path.append(node)
            node = self.parent[node]
        return path[::-1]

    def chain_from_root(self, node: int) -> list[int]:
        """The root, then every ancestor down to ``node`` itself."""
        path = self.path(node)
        return [self.parent[path[0]] if path else node] + path


def _parent_list(hierarchy: Any) -> list[int]:
    parent = getattr(hierarchy, "parent", hierarchy)
    return [int(p) for p in torch.as_tensor(parent).reshape(-1).tolist()]


def _build_forest(hierarchy: Any) -> _Forest:
    parent = _parent_list(hierarchy)
    children: list[list[int]] = [[] for _ in parent]
    for node, up in enumerate(parent):
        if up >= 0:
            children[up].append(node)
    leaves = [node for node, kids in enumerate(children) if not kids]
    row_of = {leaf: row for row, leaf in enumerate(leaves)}

    postorder: list[int] = []
    stack = [(root, False) for root in reversed(range(len(parent))) if parent[root] < 0]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            postorder.append(node)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children[node]))

    rows_below: list[list[int]] = [[] for _ in parent]
    for node in postorder:
        if node in row_of:
            rows_below[node] = [row_of[node]]
        else:
            rows_below[node] = [row for child in children[node] for row in rows_below[child]]
    return _Forest(parent, children, leaves, rows_below, postorder)


def _with_head_axis(x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[N, d]`` -> ``[N, 1, d]``; ``[N, H, d]`` unchanged; cast to ``dtype``."""
    x = x.to(dtype)
    return x.unsqueeze(1) if x.dim() == 2 else x


def _check_rows(forest: _Forest, **tensors: Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.shape[0] != forest.num_leaves:
            raise ValueError(
                f"{name} has {tensor.shape[0]} rows but the hierarchy has {forest.num_leaves} leaves"
            )


class _Logits:
    """Leaf and block logits of one forest, per head: every method returns shape ``[H]``."""

    def __init__(
        self, forest: _Forest, query: Tensor, key: Tensor, pos: Optional[Tensor], scale: Optional[float],
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.forest = forest
        self.query = _with_head_axis(query, dtype)
        self.key = _with_head_axis(key, dtype)
        self.pos = None if pos is None else _with_head_axis(pos, dtype)
        self.scale = 1.0 / math.sqrt(self.query.shape[-1]) if scale is None else scale
        self.rho_q = [self._mean_below(self.query, node) for node in range(len(forest.parent))]
        self.rho_k = [self._mean_below(self.key, node) for node in range(len(forest.parent))]

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    def _mean_below(self, x: Tensor, node: int) -> Tensor:
        return x[self.forest.rows_below[node]].mean(dim=0)

    def position_term(self, node_a: int, node_b: int) -> Tensor:
        """p(A, B) = <pos[A], pos[B]>, zero without positions."""
        if self.pos is None:
            return self.query.new_zeros(self.num_heads)
        return (self.pos[node_a] * self.pos[node_b]).sum(-1).expand(self.num_heads)

    def block(self, node_b: int, node_s: int) -> Tensor:
        """s(B, S) = rho_q(B) . rho_k(S) * scale + p(B, S)."""
        content = (self.rho_q[node_b] * self.rho_k[node_s]).sum(-1) * self.scale
        return content + self.position_term(node_b, node_s)

    def leaf_self(self, leaf: int) -> Tensor:
        """s_ii = q_i . k_i * scale + <pos[i], pos[i]>."""
        return self.block(leaf, leaf)


def _logaddexp(x: LogMass, y: LogMass) -> LogMass:
    if x is None:
        return y
    if y is None:
        return x
    return torch.logaddexp(x, y)


def _sibling_mass(forest: _Forest, logits: _Logits, node: int) -> LogMass:
    """e(B) = logsumexp_{S in sib(B)} [log n(S) + s(B, S)]."""
    siblings = forest.siblings(node)
    if not siblings:
        return None
    terms = [math.log(forest.size(s)) + logits.block(node, s) for s in siblings]
    return torch.logsumexp(torch.stack(terms), dim=0)


def _self_mass(forest: _Forest, logits: _Logits, node: int, z: list[LogMass], include_self: bool) -> LogMass:
    """a(leaf) = s_ii (or -inf); a(A) = sum_C n(C)/n(A) * z(C) for an internal node."""
    children = forest.children[node]
    if not children:
        return logits.leaf_self(node) if include_self else None
    if any(z[child] is None for child in children):
        return None
    return sum(forest.size(child) / forest.size(node) * z[child] for child in children)


@dataclass(frozen=True)
class _Partition:
    """Per node: z(B) = logaddexp(a(B), e(B)) and log mu(B) = a(B) - z(B)."""

    z: list[LogMass]
    log_mu: list[LogMass]


def _partition(forest: _Forest, logits: _Logits, include_self: bool) -> _Partition:
    num_nodes = len(forest.parent)
    z: list[LogMass] = [None] * num_nodes
    log_mu: list[LogMass] = [None] * num_nodes
    for node in forest.postorder:
        a = _self_mass(forest, logits, node, z, include_self)
        z[node] = _logaddexp(a, _sibling_mass(forest, logits, node))
        log_mu[node] = None if a is None else a - z[node]
    return _Partition(z, log_mu)


def _theta_row(
    forest: _Forest, logits: _Logits, partition: _Partition, leaf: int, include_self: bool
) -> Tensor:
    """Row of Theta for one leaf, shape ``[H, N]``."""
    zero = logits.query.new_zeros(logits.num_heads)
    entries = [zero] * forest.num_leaves
    log_prefix = zero
    for node in forest.path(leaf):
        for sibling in forest.siblings(node):
            weight = torch.exp(log_prefix + logits.block(node, sibling) - partition.z[node])
            for row in forest.rows_below[sibling]:
                entries[row] = weight
        if partition.log_mu[node] is None:
            return torch.stack(entries, dim=-1)
        log_prefix = log_prefix + partition.log_mu[node]
    if include_self:
        entries[forest.rows_below[leaf][0]] = torch.exp(log_prefix)
    return torch.stack(entries, dim=-1)


def _closed_form_theta(forest: _Forest, logits: _Logits, include_self: bool) -> Tensor:
    """Theta, ``[H, N, N]``: one closed-form row per leaf."""
    partition = _partition(forest, logits, include_self)
    rows = [_theta_row(forest, logits, partition, leaf, include_self) for leaf in forest.leaves]
    return torch.stack(rows, dim=1)


def attention_matrix(
    query: Tensor,
    key: Tensor,
    hierarchy: Any,
    *,
    pos: Optional[Tensor] = None,
    include_self: bool = False,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """HSA's attention matrix Theta from the closed form (spec section 4).

    query, key: ``[N, H, d]`` or ``[N, d]``. Returns float64 ``[H, N, N]`` (``[1, N, N]`` for one head).
    Rows sum to 1, except rows of leaves with no attention target, which are 0. ``dtype`` other than
    float64 gives a naive low-precision evaluation (the baseline error of low-precision tests).
    """
    forest = _build_forest(hierarchy)
    _check_rows(forest, query=query, key=key)
    return _closed_form_theta(forest, _Logits(forest, query, key, pos, scale, dtype), include_self)


def hsa_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    hierarchy: Any,
    *,
    pos: Optional[Tensor] = None,
    include_self: bool = False,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """HSA output ``out_i = sum_j Theta_ij v_j`` (no residual).

    value: ``[N, H, d_v]`` or ``[N, d_v]``, same head layout as query. Returns float64 of value's shape.
    Raises ValueError when the rows of query, key or value differ from the number of leaves. ``dtype``:
    as in :func:`attention_matrix`.
    """
    _check_rows(_build_forest(hierarchy), value=value)
    theta = attention_matrix(query, key, hierarchy, pos=pos, include_self=include_self, scale=scale, dtype=dtype)
    out = torch.einsum("hij,jhc->ihc", theta, _with_head_axis(value, dtype))
    return out.squeeze(1) if value.dim() == 2 else out


def flat_logits(
    query: Tensor,
    key: Tensor,
    hierarchy: Any,
    *,
    pos: Optional[Tensor] = None,
    include_self: bool = False,
    scale: Optional[float] = None,
) -> Tensor:
    """Flat reference logits s_ij of spec section 2, float64 ``[H, N, N]``.

    ``s_ij = q_i . k_j * scale + <pos[A'], pos[B']>`` with A', B' the highest distinct ancestors of leaves
    i != j. The diagonal is ``q_i . k_i * scale + <pos[i], pos[i]>`` with include_self, else ``-inf``;
    pairs of leaves in different trees are ``-inf``.
    """
    forest = _build_forest(hierarchy)
    _check_rows(forest, query=query, key=key)
    logits = _Logits(forest, query, key, pos, scale)
    content = torch.einsum("ihd,jhd->hij", logits.query, logits.key) * logits.scale
    chains = [forest.chain_from_root(leaf) for leaf in forest.leaves]
    rows = []
    for i, chain_i in enumerate(chains):
        row = []
        for j, chain_j in enumerate(chains):
            if i == j:
                row.append(content[:, i, i] + logits.position_term(chain_i[-1], chain_i[-1]))
                continue
            split = next(t for t, (a, b) in enumerate(zip(chain_i, chain_j)) if a != b)
            row.append(content[:, i, j] + logits.position_term(chain_i[split], chain_j[split]))
        rows.append(torch.stack(row, dim=-1))
    full = torch.stack(rows, dim=1)
    return full.masked_fill(~_allowed_pairs(forest, chains, include_self), float("-inf"))


def _allowed_pairs(forest: _Forest, chains: list[list[int]], include_self: bool) -> Tensor:
    """``[N, N]`` bool: leaves in the same tree, the diagonal only with include_self."""
    roots = torch.tensor([chain[0] for chain in chains])
    allowed = roots[:, None] == roots[None, :]
    if not include_self:
        allowed.fill_diagonal_(False)
    return allowed
