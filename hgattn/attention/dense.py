r"""HSA for forests of small trees: every tree as per-tree padded dense tensors, a few batched operations.

A batch of molecules or short documents is a forest of many small trees. The dynamic programme
(:mod:`hgattn.attention.dp`) pays per tree level and per family size; here each group of trees of similar
size is padded to ``n`` leaves and ``K`` inner nodes (``T = n + K`` slots per tree, leaves first) and the
closed form of spec section 4 is evaluated with batched matrix products over ``[B, H, T, ...]``, as SDPA does
over ``[B, H, n, d]``:

1. means of the inner nodes: ``M @ x`` with the ``[B, K, n]`` matrix of ``1 / n(A)`` over the leaves below;
2. family attention over every slot pair at once, ``[B, H, T, T]`` logits with ``log n(S)`` on sibling pairs
   and a large negative number elsewhere (a custom autograd function that keeps the softmax for the backward);
3. the self masses ``a = W @ z`` (``W[A, C] = n(C) / n(A)`` for the children ``C`` of ``A``), iterated once per
   tree level, and the reach ``u = U @ (a - z)`` over the strict inner ancestors below the root;
4. the outputs: each leaf's own gated summary plus ``P @ y`` over its inner ancestors.

:func:`dense_plan` splits a forest by a cost model: trees of at most :data:`MAX_DENSE_NODES` nodes go to this
path, in groups of similar size chosen to minimise padded work plus a fixed price per group; larger trees go
to the DP. The plan
depends on the tree only; it is built on the first call and cached on the hierarchy.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..hierarchy import NEG, Hierarchy
from . import dp
from .inputs import self_logits
from .numerics import exp

__all__ = ["DenseGroup", "DensePlan", "dense_plan", "hsa_dense"]

#: Largest number of nodes a tree may have to take the dense path (its ``T x T`` logits per head): on this
#: project's CPU (2 threads, 4 heads x 32) the dense path beat the DP up to T ~ 96 and lost from T ~ 130.
MAX_DENSE_NODES = 96
#: Cost of one group, in logit entries: the fixed price of its ~60 operations, against ``T^2`` per tree.
GROUP_OVERHEAD = 1 << 16


@dataclass
class DenseGroup:
    """``B`` trees padded to ``n`` leaf slots and ``K`` inner slots (``T = n + K``; leaves first).

    Attributes:
        trees, leaves, inner, height: ``B``, ``n``, ``K`` and the largest tree height.
        leaf_row: ``[B * n]`` leaf row of each leaf slot (``N`` for padding: a zero row).
        node: ``[B * T]`` node id of each slot (``num_nodes`` for padding), to gather position embeddings.
        mean: ``[B, K, n]`` ``1 / n(A)`` where leaf slot ``i`` lies below inner slot ``A``.
        path: ``[B, n, K]`` 1 where inner slot ``A`` is an ancestor of leaf slot ``i``.
        bias: ``[B, T, T]`` ``log n(S)`` for sibling slots ``B != S``, ``NEG`` elsewhere.
        child_weight: ``[B, T, K]`` ``n(C) / n(A)`` for a child slot ``C`` of inner slot ``A``.
        reach: ``[B, K, T]`` 1 where inner slot ``A`` is a strict ancestor of slot ``C`` and not a root.
        has_sibling: ``[B, T]`` 1 for slots with a sibling.
        leaf_mask: ``[B, n]`` bool, True for real leaf slots.
    """

    trees: int
    leaves: int
    inner: int
    height: int
    leaf_row: Tensor
    node: Tensor
    mean: Tensor
    path: Tensor
    bias: Tensor
    child_weight: Tensor
    reach: Tensor
    has_sibling: Tensor
    leaf_mask: Tensor
    _cast: dict = field(default_factory=dict, repr=False)

    @property
    def slots(self) -> int:
        return self.leaves + self.inner

    def matrices(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``mean, path, bias, child_weight, reach, has_sibling`` in ``dtype`` (cast once, then cached)."""
        if dtype not in self._cast:
            self._cast[dtype] = tuple(getattr(self, f).to(dtype) for f in _MATRICES)
        return self._cast[dtype]

    def to(self, device: torch.device | str) -> "DenseGroup":
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_cast"}
        return DenseGroup(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in values.items()})


_MATRICES = ("mean", "path", "bias", "child_weight", "reach", "has_sibling")


@dataclass
class DensePlan:
    """How :func:`hsa_dense` splits a forest: dense groups, and the remaining trees for the DP.

    Attributes:
        groups: the dense groups.
        rest: the hierarchy of the trees left to the DP (None when every tree is dense).
        rest_leaf_row, rest_node: ``[N_rest]`` leaf rows and ``[T_rest]`` node ids of ``rest`` in ``h``.
        order: ``[N]`` where each leaf row lies in the concatenation of the groups' padded leaf slots and the
            DP's leaves (``slots`` rows in all).
        identity: whether ``order`` is ``0 .. N-1`` (no padding, leaves already in that order).
    """

    groups: list[DenseGroup]
    rest: Hierarchy | None
    rest_leaf_row: Tensor
    rest_node: Tensor
    order: Tensor
    identity: bool

    @property
    def slots(self) -> int:
        return sum(g.trees * g.leaves for g in self.groups) + self.rest_leaf_row.numel()

    def to(self, device: torch.device | str) -> "DensePlan":
        return DensePlan([g.to(device) for g in self.groups], None if self.rest is None else self.rest.to(device),
                         self.rest_leaf_row.to(device), self.rest_node.to(device), self.order.to(device),
                         self.identity)


def dense_plan(h: Hierarchy) -> DensePlan | None:
    """The dense split of ``h`` (cached on it), or None when no tree is worth the dense path."""
    if "dense" not in h._plans:
        h._plans["dense"] = _build_plan(h)
    return h._plans["dense"]


def hsa_dense(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, include_self: bool, h: Hierarchy,
              plan: DensePlan, scale: float) -> Tensor:
    """HSA of prepared inputs (``[N, H, d]``, ``pos`` ``[T, H or 1, C]``) with the dense groups of ``plan`` and
    the DP for the rest; differentiable by autograd. The dense groups read their self logits ``s_ii`` off the
    diagonal of their family logits."""
    if not plan.identity:
        q, k, v = (_ToSlots.apply(x, plan.order, plan.slots) for x in (q, k, v))
    parts, start = [], 0
    for g in plan.groups:
        rows = slice(start, start + g.trees * g.leaves)
        parts.append(_group_output(g, q[rows], k[rows], v[rows], pos, include_self, scale))
        start = rows.stop
    if plan.rest is not None:
        q_rest, k_rest, v_rest = q[start:], k[start:], v[start:]
        pos_rest = None if pos is None else pos[plan.rest_node]
        self_logit = self_logits(q_rest, k_rest, pos_rest, plan.rest, scale) if include_self else None
        parts.append(dp.hsa_dp(q_rest, k_rest, v_rest, pos_rest, self_logit, plan.rest, scale))
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out if plan.identity else _FromSlots.apply(out, plan.order)


class _ToSlots(torch.autograd.Function):
    """Leaf rows ``[N, ...]`` placed at rows ``order`` of a zero ``[slots, ...]`` tensor (the groups' padded leaf
    slots, then the DP's leaves); the backward pass reads them back."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, slots: int) -> Tensor:
        ctx.save_for_backward(order)
        return x.new_zeros(slots, *x.shape[1:]).index_copy_(0, order, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (order,) = ctx.saved_tensors
        return grad.index_select(0, order), None, None


class _FromSlots(torch.autograd.Function):
    """The inverse of :class:`_ToSlots`: rows ``order`` of ``[slots, ...]``, copied back (not added) in the
    backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor) -> Tensor:
        ctx.save_for_backward(order)
        ctx.rows = x.size(0)
        return x.index_select(0, order)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (order,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy_(0, order, grad), None


# ---------------------------------------------------------------------- forward
def _group_output(g: DenseGroup, q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, include_self: bool,
                  scale: float) -> Tensor:
    """``[B * n, H, dv]`` outputs of the leaf slots of one group (padding rows included) from its leaf slots
    ``q, k, v`` ``[B * n, H, d]``: the family attention and the output assembly are custom autograd functions
    over the large tensors; the gates between them are plain autograd ops on ``[B, H, T]`` scalars."""
    heads, b, n = q.size(1), g.trees, g.leaves
    mean, path, bias, child_weight, reach, has_sibling = g.matrices(q.dtype)
    pn = None if pos is None else _pad_rows(pos, g.node).view(b, g.slots, *pos.shape[1:]).transpose(1, 2)
    e, theta, self_logit = _FamilyAttention.apply(q, k, v, pn, mean, bias, has_sibling, scale, include_self)
    if self_logit is None:
        a_leaf = e.new_full((b, 1, n), NEG).expand(b, heads, n)
    else:
        a_leaf = torch.where(g.leaf_mask[:, None], self_logit, NEG)
    a_inner = e.new_zeros(b, heads, g.inner)
    for _ in range(max(g.height, 1)):
        z = torch.logaddexp(torch.cat([a_leaf, a_inner], -1), e)
        a_inner = torch.matmul(z, child_weight)
    z = torch.logaddexp(torch.cat([a_leaf, a_inner], -1), e)
    u = torch.matmul(a_inner - z[..., n:], reach)                         # [B, H, T]
    gain = exp(u + e - z) * has_sibling[:, None]
    keep = None if self_logit is None else exp(u[..., :n] + a_leaf - z[..., :n])
    return _Combine.apply(gain, theta, keep, v, path)


def _pad_rows(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of ``x`` ``[R, ...]``, where index ``R`` gives a zero row."""
    return torch.cat([x, x.new_zeros((1,) + x.shape[1:])]).index_select(0, index)


def _to_nodes(x: Tensor, mean: Tensor, factor: float = 1.0) -> Tensor:
    """``[B, H, T, d]``: the leaf slots ``x`` ``[B * n, H, d]`` followed by the means of the inner slots, times
    ``factor``."""
    b, k, n = mean.shape
    heads, dim = x.shape[1:]
    out = x.new_empty(b, heads, n + k, dim)
    leaves = x.view(b, n, heads, dim)
    torch.mul(leaves.transpose(1, 2), factor, out=out[:, :, :n])
    inner = torch.bmm(mean, leaves.reshape(b, n, heads * dim)).view(b, k, heads, dim).transpose(1, 2)
    torch.mul(inner, factor, out=out[:, :, n:])
    return out


def _to_leaves(grad: Tensor, mean: Tensor, factor: float = 1.0) -> Tensor:
    """The adjoint of :func:`_to_nodes`: ``[B * n, H, d]`` from the gradient ``[B, H, T, d]`` of the slots."""
    b, k, n = mean.shape
    heads, dim = grad.shape[1], grad.shape[3]
    out = grad.new_empty(b, n, heads, dim)
    torch.mul(grad[:, :, :n].transpose(1, 2), factor, out=out)
    inner = grad[:, :, n:].transpose(1, 2).reshape(b, k, heads * dim)
    out.view(b, n, heads * dim).baddbmm_(mean.transpose(1, 2), inner, alpha=factor)
    return out.view(b * n, heads, dim)


class _FamilyAttention(torch.autograd.Function):
    """Masked attention of every slot over its siblings, from the leaf slots ``q, k, v`` ``[B * n, H, d]``:
    ``e = logsumexp_S(L)`` ``[B, H, T]`` and ``theta = softmax_S(L) @ v`` ``[B, H, T, d]`` with
    ``L = q k^T scale + <pos, pos> + bias`` over the slots (leaves, then inner means ``mean @ x``); rows
    without a sibling give ``e = NEG`` and no gradient (their ``theta`` is a uniform average, gated to 0 by
    the caller). With ``include_self`` also the leaves' self logits ``s_ii`` ``[B, H, n]``, the diagonal of
    ``L`` before the bias (else None). The softmax is kept for the backward pass."""

    @staticmethod
    def forward(ctx, q, k, v, pos, mean, bias, has_sibling, scale, include_self):
        qn, kn, vn = _to_nodes(q, mean), _to_nodes(k, mean, scale), _to_nodes(v, mean)
        logit = torch.matmul(qn, kn.transpose(-1, -2))
        if pos is not None:
            logit.add_(torch.matmul(pos, pos.transpose(-1, -2)))
        leaves = mean.size(-1)
        self_logit = logit.diagonal(dim1=-2, dim2=-1)[..., :leaves].clone() if include_self else None
        logit.add_(bias[:, None])
        top = logit.amax(dim=-1)
        weight = torch.softmax(logit, dim=-1)
        e = torch.where(has_sibling[:, None] > 0, top - _max_log(weight), NEG)
        theta = torch.matmul(weight, vn)
        ctx.save_for_backward(qn, kn, vn, pos, mean, weight, theta, has_sibling)
        ctx.scale = scale
        return e, theta, self_logit

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_e, grad_theta, grad_self):
        qn, kn, vn, pos, mean, weight, theta, has_sibling = ctx.saved_tensors
        grad_e = grad_e * has_sibling[:, None]
        grad_logit = torch.matmul(grad_theta, vn.transpose(-1, -2))
        drift = torch.linalg.vecdot(grad_theta, theta) - grad_e
        grad_logit.sub_(drift.unsqueeze(-1)).mul_(weight)
        if grad_self is not None:
            grad_logit.diagonal(dim1=-2, dim2=-1)[..., :mean.size(-1)].add_(grad_self)
        grad_q = _to_leaves(torch.matmul(grad_logit, kn), mean)
        grad_k = _to_leaves(torch.matmul(grad_logit.transpose(-1, -2), qn), mean, ctx.scale)
        grad_v = _to_leaves(torch.matmul(weight.transpose(-1, -2), grad_theta), mean)
        grad_pos = None
        if pos is not None:
            grad_pair = grad_logit if pos.size(1) > 1 else grad_logit.sum(1, keepdim=True)
            grad_pos = torch.matmul(grad_pair + grad_pair.transpose(-1, -2), pos)
        return grad_q, grad_k, grad_v, grad_pos, None, None, None, None, None


def _max_log(weight: Tensor) -> Tensor:
    """``log max_S softmax`` per row: with the row maximum ``top`` of the logits, ``top - _max_log`` is the
    row's logsumexp (the largest weight is at least ``1 / T``, so the log is exact)."""
    return weight.amax(dim=-1).log()


class _Combine(torch.autograd.Function):
    """The leaf outputs ``[B * n, H, dv]`` of one group: ``gain * theta`` at the leaf's own slot, plus
    ``path @ (gain * theta)`` over its inner ancestors, plus ``keep * v`` (with the self term)."""

    @staticmethod
    def forward(ctx, gain, theta, keep, v, path):
        b, n, k = path.shape
        heads, dim = theta.size(1), theta.size(-1)
        out = theta.new_empty(b, n, heads, dim)
        torch.mul(theta[:, :, :n].transpose(1, 2), gain[:, :, :n, None].transpose(1, 2), out=out)
        inner = (theta[:, :, n:] * gain[:, :, n:, None]).transpose(1, 2).reshape(b, k, heads * dim)
        out.view(b, n, heads * dim).baddbmm_(path, inner)
        leaves_v = v.view(b, n, heads, dim)
        if keep is not None:
            out.addcmul_(keep.transpose(1, 2).unsqueeze(-1), leaves_v)
        ctx.save_for_backward(gain, theta, keep, leaves_v, path)
        return out.view(b * n, heads, dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gain, theta, keep, leaves_v, path = ctx.saved_tensors
        b, n, k = path.shape
        heads, dim = theta.size(1), theta.size(-1)
        grad = grad.view(b, n, heads, dim)
        grad_leaf = grad.transpose(1, 2)                                        # [B, H, n, dv]
        grad_inner = torch.bmm(path.transpose(1, 2), grad.reshape(b, n, heads * dim))
        grad_inner = grad_inner.view(b, k, heads, dim).transpose(1, 2)          # [B, H, K, dv]
        grad_theta = torch.empty_like(theta)
        torch.mul(grad_leaf, gain[:, :, :n, None], out=grad_theta[:, :, :n])
        torch.mul(grad_inner, gain[:, :, n:, None], out=grad_theta[:, :, n:])
        grad_gain = torch.cat([torch.linalg.vecdot(grad_leaf, theta[:, :, :n]),
                               torch.linalg.vecdot(grad_inner, theta[:, :, n:])], -1)
        grad_keep = grad_v = None
        if keep is not None:
            grad_keep = torch.linalg.vecdot(grad, leaves_v).transpose(1, 2)
            grad_v = (grad * keep.transpose(1, 2).unsqueeze(-1)).view(b * n, heads, dim)
        return grad_gain, grad_theta, grad_keep, grad_v, None


# ---------------------------------------------------------------------- plan
@torch.compiler.disable
def _build_plan(h: Hierarchy) -> DensePlan | None:
    tree = h.tree
    leaves = torch.bincount(tree[h.is_leaf], minlength=h.num_trees)
    inner = torch.bincount(tree[~h.is_leaf], minlength=h.num_trees)
    groups = _choose_groups(leaves + inner)
    if not groups:
        return None
    dense = torch.zeros(h.num_trees, dtype=torch.bool, device=h.device)
    built = []
    for members in groups:
        dense[members] = True
        built.append(_build_group(h, tree, members, int(leaves[members].max()), int(inner[members].max())))
    rest_nodes = (~dense[tree]).nonzero().view(-1)
    rest = _sub_hierarchy(h, rest_nodes) if rest_nodes.numel() else None
    rest_leaf_row = h.node_leaf[rest_nodes[h.is_leaf[rest_nodes]]]
    position = torch.cat([g.leaf_row for g in built] + [rest_leaf_row])
    real = (position < h.num_leaves).nonzero().view(-1)
    order = torch.empty(h.num_leaves, dtype=torch.long, device=h.device)
    order[position[real]] = real
    identity = position.numel() == h.num_leaves and bool(
        (order == torch.arange(h.num_leaves, device=h.device)).all())
    return DensePlan(built, rest, rest_leaf_row, rest_nodes, order, identity)


def _choose_groups(size: Tensor) -> list[Tensor]:
    """Partition the trees worth the dense path (``size``: ``T = n + K`` per tree) into groups.

    A tree takes the dense path when its ``T`` is at most :data:`MAX_DENSE_NODES`. These trees, sorted by
    ``T``, are split into consecutive groups by a dynamic programme minimising the padded logit entries
    ``count x T_max^2`` plus :data:`GROUP_OVERHEAD` per group."""
    candidates = (size <= MAX_DENSE_NODES).nonzero().view(-1)
    if candidates.numel() == 0:
        return []
    candidates = candidates[torch.argsort(size[candidates], stable=True)]
    sizes = size[candidates].tolist()
    count = len(sizes)
    best = [0.0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for stop in range(1, count + 1):
        for start in _group_starts(sizes, stop):
            cost = best[start] + GROUP_OVERHEAD + (stop - start) * sizes[stop - 1] ** 2
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    bounds, stop = [], count
    while stop:
        bounds.append((cut[stop], stop))
        stop = cut[stop]
    return [candidates[a:b] for a, b in reversed(bounds)]


def _group_starts(sizes: list[int], stop: int) -> range:
    """Group starts worth trying for a group ending at ``stop``: trees at least half its largest size."""
    start = stop - 1
    while start > 0 and 2 * sizes[start - 1] >= sizes[stop - 1]:
        start -= 1
    return range(start, stop)


def _build_group(h: Hierarchy, tree: Tensor, members: Tensor, n: int, k: int) -> DenseGroup:
    device = h.device
    b, t = members.numel(), n + k
    group_index = torch.full((h.num_trees,), -1, dtype=torch.long, device=device)
    group_index[members] = torch.arange(b, device=device)
    nodes = (group_index[tree] >= 0).nonzero().view(-1)
    slot = _slots(h, nodes, group_index[tree[nodes]], n)
    flat = torch.full((h.num_nodes,), -1, dtype=torch.long, device=device)
    flat[nodes] = group_index[tree[nodes]] * t + slot
    node = torch.full((b * t,), h.num_nodes, dtype=torch.long, device=device)
    node[flat[nodes]] = nodes
    parent = torch.full((b * t,), -1, dtype=torch.long, device=device)
    child = nodes[h.parent[nodes] >= 0]
    parent[flat[child]] = flat[h.parent[child]] % t
    parent = parent.view(b, t)
    count = torch.zeros(b * t, dtype=torch.float64, device=device)
    count[flat[nodes]] = h.leaf_count[nodes].double()
    count = count.view(b, t)
    is_root = torch.zeros(b * t, dtype=torch.bool, device=device)
    is_root[flat[nodes[h.parent[nodes] < 0]]] = True
    ancestors = _ancestor_matrix(parent, int(h.depth[nodes].max()) + 1)       # [B, T, T], strict
    not_root = (~is_root).view(b, 1, t)
    sibling = ((parent[:, :, None] == parent[:, None, :]) & (parent[:, :, None] >= 0)
               & ~torch.eye(t, dtype=torch.bool, device=device))
    bias = torch.where(sibling, count.clamp(min=1).log()[:, None, :], NEG)
    child_of = torch.zeros(b, t, t, dtype=torch.float64, device=device)
    has_parent = parent >= 0
    rows = torch.arange(b, device=device)[:, None].expand(b, t)[has_parent]
    cols = torch.arange(t, device=device)[None].expand(b, t)[has_parent]
    child_of[rows, cols, parent[has_parent]] = (count / torch.gather(count, 1, parent.clamp(min=0)))[has_parent]
    leaf_row = torch.full((b * n,), h.num_leaves, dtype=torch.long, device=device)
    leaf_nodes = nodes[h.is_leaf[nodes]]
    leaf_row[group_index[tree[leaf_nodes]] * n + slot[h.is_leaf[nodes]]] = h.node_leaf[leaf_nodes]
    leaf_mask = (leaf_row < h.num_leaves).view(b, n)
    below = ancestors[:, :n, n:].double() * leaf_mask[:, :, None]              # [B, n, K] leaf i below A
    return DenseGroup(
        trees=b, leaves=n, inner=k, height=int(h.height[nodes].max()), leaf_row=leaf_row, node=node,
        mean=(below / count[:, None, n:].clamp(min=1)).transpose(1, 2).contiguous(), path=below,
        bias=bias, child_weight=child_of[:, :, n:].contiguous(),
        reach=(ancestors & not_root)[:, :, n:].transpose(1, 2).double().contiguous(),
        has_sibling=_has_sibling(parent).double(), leaf_mask=leaf_mask)


def _has_sibling(parent: Tensor) -> Tensor:
    """``[B, T]`` bool: slots whose parent slot has another child (``parent`` ``[B, T]``, ``-1`` for none)."""
    b, t = parent.shape
    children = torch.zeros(b, t + 1, dtype=torch.long, device=parent.device)
    children.scatter_add_(1, torch.where(parent >= 0, parent, t), torch.ones_like(parent))
    return (parent >= 0) & (torch.gather(children, 1, torch.where(parent >= 0, parent, t)) > 1)


def _slots(h: Hierarchy, nodes: Tensor, group_tree: Tensor, n: int) -> Tensor:
    """Slot of each node within its tree: leaves ``0 ..`` by leaf row, inner nodes ``n ..`` by id."""
    is_inner = (~h.is_leaf[nodes]).long()
    key = group_tree * 2 + is_inner
    order = torch.argsort(key * h.num_nodes + nodes)
    starts = torch.zeros(int(key.max()) + 2, dtype=torch.long, device=nodes.device)
    starts[1:] = torch.cumsum(torch.bincount(key, minlength=int(key.max()) + 1), 0)
    rank = torch.empty_like(nodes)
    rank[order] = torch.arange(nodes.numel(), device=nodes.device) - starts[key[order]]
    return rank + is_inner * n


def _ancestor_matrix(parent: Tensor, depth: int) -> Tensor:
    """``[B, T, T]`` bool: ``out[b, c, a]`` when slot ``a`` is a strict ancestor of slot ``c``."""
    b, t = parent.shape
    out = torch.zeros(b, t, t, dtype=torch.bool, device=parent.device)
    up = parent
    for _ in range(depth):
        alive = up >= 0
        # a slot without an ancestor this far up writes False at slot 0, a leaf slot, never an ancestor
        out.scatter_(2, up.clamp(min=0).unsqueeze(-1), alive.unsqueeze(-1))
        up = torch.where(alive, torch.gather(parent, 1, up.clamp(min=0)), -1)
    return out


def _sub_hierarchy(h: Hierarchy, nodes: Tensor) -> Hierarchy:
    """The hierarchy of the whole trees ``nodes`` (sorted node ids), renumbered in the same order."""
    new_id = torch.full((h.num_nodes,), -1, dtype=torch.long, device=h.device)
    new_id[nodes] = torch.arange(nodes.numel(), device=h.device)
    parent = h.parent[nodes]
    return Hierarchy(torch.where(parent >= 0, new_id[parent.clamp(min=0)], -1))
