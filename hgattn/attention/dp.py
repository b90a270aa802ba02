r"""The exact HSA operator as the dynamic programme of spec section 5, over padded family blocks.

Passes (``T`` tree nodes, ``N`` leaves, ``H`` heads, ``d`` head size):

1. upward means ``rho_q, rho_k, rho_v`` of the inner nodes, one scatter per level;
2. family attention over all sibling pairs at once, as padded dense blocks (:mod:`hgattn.attention.plan`) with
   recomputation in the backward pass (a flash-attention-style custom autograd function): sibling mass
   ``e(B)`` and summary ``theta(B)``;
3. upward self mass ``a(A)`` and partition ``z(A)``, one scatter per level (scalars per head);
4. downward gates and outputs, one gather per level.

Time and memory are ``O(P d + T d)`` with ``P`` the number of ordered sibling pairs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import walks
from ..hierarchy import NEG, Hierarchy
from ..walks import add_inner_means_grad, add_path_sums, inner_means, inner_sums
from .numerics import exp, exp_
from .plan import FamilyBlock, GatherSpec, family_blocks

__all__ = ["hsa_dp", "compute_gates"]

#: Bytes of inner-node state (query/key/value means, their gradients, summed output gradients) the backward
#: pass may hold at once; above it the heads are processed in groups and the means recomputed per group.
BACKWARD_INNER_BYTES = 1 << 30
#: Bytes of dense blocks (operands, softmax, summaries) the forward pass may keep for the backward pass, which
#: otherwise recomputes them twice: small problems, where the per-block overhead dominates, skip both.
SAVED_BLOCKS_BYTES = 1 << 26


def hsa_dp(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, self_logit: Tensor | None, h: Hierarchy,
           scale: float) -> Tensor:
    """HSA of prepared inputs (:func:`~hgattn.attention.inputs.prepare_inputs`): ``[N, H, d]``; one autograd
    node when gradients are needed, the plain forward pass otherwise."""
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, pos)):
        return _HSAFunction.apply(q, k, v, pos, self_logit, h, scale)
    return _forward(q, k, v, pos, self_logit, h, scale)[0]


@dataclass
class _Gates:
    """How the family summaries and the values combine into the outputs (all in log space but ``gain``).

    Attributes:
        gain: ``[T, H]`` (level order) weight of ``theta(B)`` in the output of every leaf below ``B``,
            ``exp(u(B) + e(B) - z(B))``.
        keep: ``[N, H]`` (leaf order) weight of ``v_i`` in ``out_i``, or None without the self term.
        a, z, reach: per level ``[n_level, H]``: self mass, partition, and ``u = log prod mu`` above each node.
    """

    gain: Tensor
    keep: Tensor | None
    a: list[Tensor]
    z: list[Tensor]
    reach: list[Tensor]


def compute_gates(e: Tensor, self_logit: Tensor | None, h: Hierarchy) -> _Gates:
    """Steps 3 and 4 of the DP on scalars per head: upward masses by level, then downward reach."""
    a, z = _upward_mass(e, self_logit, h)
    gains, keeps, reach = [], [], []
    u = e.new_zeros(h.level_sizes[0], e.size(1))
    for depth, (level, e_level) in enumerate(zip(h.levels, e.split(h.level_sizes))):
        if depth:
            u = (u + a[depth - 1] - z[depth - 1])[level.parent_local]
        reach.append(u)
        gains.append(exp(u + e_level - z[depth]))
        if self_logit is not None and level.leaf_local.numel():
            keeps.append(exp(u + a[depth] - z[depth])[level.leaf_local])
    keep = None
    if self_logit is not None:
        keep = torch.cat(keeps)
        keep = keep if h.leaf_gather is None else keep[h.leaf_gather]
    return _Gates(torch.cat(gains), keep, a, z, reach)


def _upward_mass(e: Tensor, self_logit: Tensor | None, h: Hierarchy) -> tuple[list[Tensor], list[Tensor]]:
    """Per level ``a`` (self mass) and ``z`` (partition), ``[n_level, H]`` each, indexed by depth.

    The leaves' ``log 0`` is applied last, with ``where``: inductor (torch 2.13, CPU) miscompiled
    ``new_zeros().masked_fill().index_add()`` here (``z`` computed from the tensor before the ``index_add``)."""
    a_levels, z_levels = [None] * h.num_levels, [None] * h.num_levels
    e_levels = e.split(h.level_sizes)
    for depth in range(h.num_levels - 1, -1, -1):
        level, e_level = h.levels[depth], e_levels[depth]
        a = e_level.new_zeros(e_level.shape)
        if self_logit is not None and level.leaf_local.numel():
            a = a.index_copy(0, level.leaf_local, self_logit[level.leaf_row])
        if depth + 1 < h.num_levels:
            child = h.levels[depth + 1]
            a = a.index_add(0, child.parent_local, z_levels[depth + 1] * child.child_weight.to(e.dtype)[:, None])
        if self_logit is None:
            a = torch.where(level.leaf_mask[:, None], NEG, a)
        a_levels[depth], z_levels[depth] = a, torch.logaddexp(a, e_level)
    return a_levels, z_levels


def _rowwise_dot(x: Tensor, y: Tensor) -> Tensor:
    """``[N, H]`` dot products over the last dim of ``[N, H, d]`` tensors, in chunks of rows."""
    out = x.new_empty(x.shape[:-1])
    for start in range(0, x.size(0), walks.LEAF_CHUNK):
        torch.sum(x[start:start + walks.LEAF_CHUNK] * y[start:start + walks.LEAF_CHUNK], dim=-1,
                  out=out[start:start + walks.LEAF_CHUNK])
    return out


# ---------------------------------------------------------------------- family attention
def _gather(spec: GatherSpec, leaf_x: Tensor, inner_x: Tensor, families: int) -> Tensor:
    """Block rows heads-first, ``[H, F, size / F, d]``, from leaf and inner rows ``[*, H, d]``; padding is 0."""
    heads, dim = leaf_x.shape[1:]
    if _reads_leaf_view(spec):
        out = leaf_x.narrow(0, spec.leaf_start, spec.size).transpose(0, 1).contiguous()
    else:
        out = leaf_x.new_zeros(heads, spec.size, dim)
        if spec.leaf_pos.numel():
            out.index_copy_(1, spec.leaf_pos, leaf_x.index_select(0, spec.leaf_row).transpose(0, 1))
        if spec.inner_pos.numel():
            out.index_copy_(1, spec.inner_pos, inner_x.index_select(0, spec.inner_row).transpose(0, 1))
    return out.view(heads, families, -1, dim)


def _reads_leaf_view(spec: GatherSpec) -> bool:
    """Whether a block reads (and adds back) its leaf rows as a view of a contiguous range. Not under
    torch.compile: with it, inductor (torch 2.13, CPU) gave wrong values now and then (random trees with
    ``include_self``); the index path compiles exactly."""
    return spec.leaf_start >= 0 and not torch.compiler.is_compiling()


def _scatter_add(spec: GatherSpec, grad: Tensor, leaf_g: Tensor, inner_g: Tensor) -> None:
    """Adjoint of :func:`_gather`: add ``[H, F, R, d]`` block rows into ``[*, H, d]`` gradients.

    The rows are made contiguous before ``index_add_``: on CPU (torch 2.13) it runs 8-13x slower from a
    transposed source (7k rows x 4 x 32: 3.3 ms against 0.25 ms, one thread)."""
    grad = grad.reshape(grad.size(0), spec.size, grad.size(-1))
    if _reads_leaf_view(spec):
        leaf_g.narrow(0, spec.leaf_start, spec.size).add_(grad.transpose(0, 1))
        return
    if spec.leaf_pos.numel():
        leaf_g.index_add_(0, spec.leaf_row, grad.index_select(1, spec.leaf_pos).transpose(0, 1).contiguous())
    if spec.inner_pos.numel():
        inner_g.index_add_(0, spec.inner_row, grad.index_select(1, spec.inner_pos).transpose(0, 1).contiguous())


def _gather_pos(spec: GatherSpec, pos: Tensor, families: int) -> Tensor:
    """``[Hp, F, size / F, C]`` position embeddings of a block's nodes (padding rows hold node 0's)."""
    return pos.index_select(0, spec.node).transpose(0, 1).reshape(pos.size(1), families, -1, pos.size(-1))


def _write_rows(spec: GatherSpec, block: Tensor, full: Tensor) -> None:
    """Write the real rows of a heads-first block ``[H, F, R, ...]`` into level-ordered ``[T, H, ...]``."""
    rows = block.reshape(block.size(0), spec.size, *block.shape[3:]).transpose(0, 1)
    if spec.valid_pos.numel() != spec.size:
        rows = rows.index_select(0, spec.valid_pos)
    full.index_copy_(0, spec.valid_slot, rows)


def _read_rows(spec: GatherSpec, full: Tensor, families: int) -> Tensor:
    """Adjoint of :func:`_write_rows`: ``[T, H, ...]`` -> heads-first ``[H, F, R, ...]``, padding 0."""
    rows = full.index_select(0, spec.valid_slot)
    if spec.valid_pos.numel() != spec.size:
        rows = full.new_zeros((spec.size,) + full.shape[1:]).index_copy_(0, spec.valid_pos, rows)
    return rows.transpose(0, 1).reshape(full.size(1), families, -1, *full.shape[2:])


class _BlockInputs:
    """The dense heads-first operands of one block and its softmax over sibling columns."""

    def __init__(self, block: FamilyBlock, q, k, v, q_in, k_in, v_in, pos, scale: float) -> None:
        fam = block.families
        self.q = _gather(block.rows, q, q_in, fam)
        self.k = _gather(block.cols, k, k_in, fam)
        self.v = _gather(block.cols, v, v_in, fam)
        logit = torch.matmul(self.q, self.k.transpose(-1, -2)).mul_(scale)
        self.pos_rows = self.pos_cols = None
        if pos is not None:
            self.pos_rows = _gather_pos(block.rows, pos, fam)
            self.pos_cols = _gather_pos(block.cols, pos, fam)
            logit += torch.matmul(self.pos_rows, self.pos_cols.transpose(-1, -2))
        logit += block.log_count.to(logit.dtype)[None, :, None, :]
        logit.diagonal(offset=block.row_start, dim1=-2, dim2=-1).fill_(NEG)
        top = logit.amax(dim=-1, keepdim=True)
        total = exp_(logit.sub_(top)).sum(dim=-1, keepdim=True)
        self.lse = (top + total.log()).squeeze(-1)
        self.weight = logit.div_(total)
        self.theta = torch.matmul(self.weight, self.v)

    def nbytes(self) -> int:
        parts = (self.q, self.k, self.v, self.pos_rows, self.pos_cols, self.lse, self.weight, self.theta)
        return sum(x.numel() * x.element_size() for x in parts if x is not None)


def _forward(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, self_logit: Tensor | None, h: Hierarchy,
             scale: float, keep_blocks: bool = False, keep_means: bool = False
             ) -> tuple[Tensor, Tensor, _Gates, list[Tensor] | None, list[_BlockInputs] | None]:
    """The DP's forward pass: the output ``[N, H, d]``, the sibling masses ``e`` ``[T, H]``, the gates, the
    inner means of q, k, v with ``keep_means`` (else None, freed before the downward pass), and, with
    ``keep_blocks``, the blocks while they fit in :data:`SAVED_BLOCKS_BYTES` (else None)."""
    means = [inner_means(x, h) for x in (q, k, v)]
    e = q.new_full((h.num_nodes, q.size(1)), NEG)
    out, y_inner = q.new_zeros(h.num_leaves, *v.shape[1:]), q.new_zeros(h.num_inner, *v.shape[1:])
    saved, saved_bytes = ([] if keep_blocks else None), 0
    for block in family_blocks(h):
        inputs = _BlockInputs(block, q, k, v, *means, pos, scale)
        _write_rows(block.rows, inputs.lse, e)
        _scatter_add(block.rows, inputs.theta, out, y_inner)
        if saved is not None:
            saved_bytes += inputs.nbytes()
            if saved_bytes <= SAVED_BLOCKS_BYTES:
                saved.append(inputs)
            else:
                saved = None
    if not keep_means:
        means = None
    gates = compute_gates(e, self_logit, h)
    out.mul_(gates.gain[h.leaf_slot].unsqueeze(-1))
    y_inner.mul_(gates.gain[h.inner_slot].unsqueeze(-1))
    add_path_sums(y_inner, h, out)
    if gates.keep is not None:
        out.addcmul_(gates.keep.unsqueeze(-1), v)
    return out, e, gates, means, saved


class _HSAFunction(torch.autograd.Function):
    """The whole DP as one autograd node: the output ``[N, H, d]``.

    Forward: family attention block by block writes ``theta`` of the leaves into the output and that of the
    inner nodes into a ``[K, H, d]`` buffer; both are scaled in place by the gates, and every leaf adds the
    rows of its inner ancestors. Backward: recompute the blocks twice, first for the gates' gradients
    (``<G(B), theta(B)>`` with ``G(B)`` the output gradient summed over the leaves below ``B``), then for the
    block gradients, for groups of heads within :data:`BACKWARD_INNER_BYTES`. No leaf-sized temporary besides
    the output and the gradients. Without gradients :func:`hsa` calls :func:`_forward` directly.
    """

    @staticmethod
    def forward(ctx, q, k, v, pos, self_logit, hierarchy, scale):
        h = hierarchy
        ctx.head_groups = _head_groups(h, q)
        single = len(ctx.head_groups) == 1
        out, e, gates, means, ctx.saved_blocks = _forward(q, k, v, pos, self_logit, h, scale,
                                                          keep_blocks=single and not torch.compiler.is_compiling(),
                                                          keep_means=single)
        ctx.save_for_backward(q, k, v, *(means or [None] * 3), pos, self_logit, e, gates.gain, gates.keep)
        ctx.hierarchy, ctx.scale = h, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, q_in, k_in, v_in, pos, self_logit, e, gain, keep = ctx.saved_tensors
        h = ctx.hierarchy
        grad_out = grad_out.contiguous()
        grads = [torch.zeros_like(x) for x in (q, k, v)]
        grad_pos = torch.zeros_like(pos) if pos is not None else None
        grad_self = torch.zeros_like(self_logit) if self_logit is not None else None
        pos_per_head = pos is not None and pos.size(1) > 1
        for heads in ctx.head_groups:
            pick = functools.partial(_select_heads, heads=heads)
            means = [pick(x) for x in (q_in, k_in, v_in)] if q_in is not None else [
                inner_means(pick(x), h) for x in (q, k, v)]
            _backward_heads(h, ctx.scale, pick(q), pick(k), pick(v), means,
                            pick(pos) if pos_per_head else pos, pick(self_logit), pick(e), pick(gain),
                            pick(keep), pick(grad_out), [pick(g) for g in grads],
                            pick(grad_pos) if pos_per_head else grad_pos, pick(grad_self), ctx.saved_blocks)
        ctx.saved_blocks = None
        return (*grads, grad_pos, grad_self, None, None)


def _select_heads(x: Tensor | None, heads: slice) -> Tensor | None:
    """The heads ``heads`` of ``[rows, H, ...]`` (a view), or None."""
    return None if x is None else x[:, heads]


def _head_groups(h: Hierarchy, q: Tensor) -> list[slice]:
    """Groups of heads the backward pass handles at once, within :data:`BACKWARD_INNER_BYTES`."""
    heads = q.size(1)
    per_head = 7 * h.num_inner * q.size(-1) * q.element_size()
    size = max(1, min(heads, BACKWARD_INNER_BYTES // max(per_head, 1)))
    return [slice(start, min(start + size, heads)) for start in range(0, heads, size)]


def _backward_heads(h: Hierarchy, scale: float, q: Tensor, k: Tensor, v: Tensor, means: list[Tensor],
                    pos: Tensor | None, self_logit: Tensor | None, e: Tensor, gain: Tensor,
                    keep: Tensor | None, grad_out: Tensor, grads: list[Tensor], grad_pos: Tensor | None,
                    grad_self: Tensor | None, saved_blocks: list[_BlockInputs] | None) -> None:
    """The backward pass for a group of heads: every argument holds those heads only (``pos`` and
    ``grad_pos`` all of theirs when shared by the heads); adds into ``grads`` (q, k, v), ``grad_pos`` and
    ``grad_self``. Uses the forward pass's ``saved_blocks`` (all heads) or recomputes the blocks twice, first
    for the gates' gradients, then for the block gradients."""
    grad_in = inner_sums(grad_out, h)
    operands = (q, k, v, *means, pos, scale)
    grad_gain = torch.zeros_like(e)

    def block_inputs():
        return saved_blocks if saved_blocks is not None else (_BlockInputs(b, *operands) for b in family_blocks(h))

    for block, inputs in zip(family_blocks(h), block_inputs()):
        g_rows = _gather(block.rows, grad_out, grad_in, block.families)
        _write_rows(block.rows, (inputs.theta * g_rows).sum(-1), grad_gain)
    grad_keep = _rowwise_dot(grad_out, v) if keep is not None else None
    grad_e, grad_self_part = _gates_backward(e, self_logit, h, grad_gain, grad_keep)
    if grad_self is not None:
        grad_self.copy_(grad_self_part)
    grad_means = [torch.zeros_like(x) for x in means]
    all_grads = grads + grad_means
    for block, inputs in zip(family_blocks(h), block_inputs()):
        _block_backward(block, inputs, grad_e, grad_out, grad_in, gain, all_grads, grad_pos, scale)
    if keep is not None:
        grads[2].addcmul_(keep.unsqueeze(-1), grad_out)
    for grad_leaf, grad_mean in zip(grads, grad_means):
        add_inner_means_grad(grad_mean, h, grad_leaf)


def _gates_backward(e: Tensor, self_logit: Tensor | None, h: Hierarchy, grad_gain: Tensor,
                    grad_keep: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Adjoint of :func:`compute_gates`: gradients of ``e`` ``[T, H]`` and of the self logits ``[N, H]``.

    Two passes over the levels: bottom-up through the downward reach ``u`` (``dz = -du``), then top-down
    through the upward masses ``a``, ``z = logaddexp(a, e)``.
    """
    gates = compute_gates(e, self_logit, h)
    keep_grad = grad_keep * gates.keep if grad_keep is not None else None
    grad_exponent = (gates.gain * grad_gain).split(h.level_sizes)
    grad_u, grad_a = [None] * h.num_levels, [None] * h.num_levels
    for depth in range(h.num_levels - 1, -1, -1):
        level = h.levels[depth]
        grad_a[depth] = torch.zeros_like(grad_exponent[depth])
        if keep_grad is not None and level.leaf_local.numel():
            grad_a[depth].index_copy_(0, level.leaf_local, keep_grad[level.leaf_row])
        if depth + 1 < h.num_levels:
            grad_a[depth].index_add_(0, h.levels[depth + 1].parent_local, grad_u[depth + 1])
        grad_u[depth] = grad_exponent[depth] + grad_a[depth]
    grad_e, grad_self, above = [], None if self_logit is None else torch.zeros_like(self_logit), None
    for depth, e_level in enumerate(e.split(h.level_sizes)):
        level, a, z = h.levels[depth], gates.a[depth], gates.z[depth]
        grad_z = -grad_u[depth]
        if above is not None:
            grad_z = grad_z + level.child_weight.to(e.dtype)[:, None] * above[level.parent_local]
        above = grad_a[depth] + grad_z * exp(a - z)
        grad_e.append(grad_exponent[depth] + grad_z * exp(e_level - z))
        if grad_self is not None and level.leaf_local.numel():
            grad_self[level.leaf_row] = above[level.leaf_local]
    return torch.cat(grad_e), grad_self


def _block_backward(block: FamilyBlock, inputs: _BlockInputs, grad_e: Tensor, grad_out: Tensor,
                    grad_in: Tensor, gain: Tensor, grads: list[Tensor], grad_pos: Tensor | None,
                    scale: float) -> None:
    rows, cols, fam = block.rows, block.cols, block.families
    g_e = _read_rows(rows, grad_e, fam).unsqueeze(-1)
    g_theta = _gather(rows, grad_out, grad_in, fam) * _read_rows(rows, gain, fam).unsqueeze(-1)
    w = inputs.weight
    g_logit = torch.matmul(g_theta, inputs.v.transpose(-1, -2))
    g_logit.sub_((g_logit * w).sum(-1, keepdim=True) - g_e).mul_(w)
    gq, gk, gv, gq_in, gk_in, gv_in = grads
    _scatter_add(rows, torch.matmul(g_logit, inputs.k).mul_(scale), gq, gq_in)
    _scatter_add(cols, torch.matmul(g_logit.transpose(-1, -2), inputs.q).mul_(scale), gk, gk_in)
    _scatter_add(cols, torch.matmul(w.transpose(-1, -2), g_theta), gv, gv_in)
    if grad_pos is not None:
        g_pos_logit = g_logit if inputs.pos_rows.size(0) > 1 else g_logit.sum(0, keepdim=True)
        _add_pos_grad(rows, torch.matmul(g_pos_logit, inputs.pos_cols), grad_pos)
        _add_pos_grad(cols, torch.matmul(g_pos_logit.transpose(-1, -2), inputs.pos_rows), grad_pos)


def _add_pos_grad(spec: GatherSpec, grad: Tensor, grad_pos: Tensor) -> None:
    grad_pos.index_add_(0, spec.node,
                        grad.reshape(grad.size(0), spec.size, grad.size(-1)).transpose(0, 1).contiguous())
