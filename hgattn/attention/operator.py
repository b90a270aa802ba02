"""The public HSA operator: input validation once, then dispatch to the kernel that fits the input.

Kernels: the native CPU kernel (:mod:`hgattn.attention.native`, unless wide families dominate), the batched dense
kernel for forests of small trees (:mod:`hgattn.attention.dense`), the dynamic programme over family blocks
(:mod:`hgattn.attention.dp`, any tree, any device), and column-tied / causal HSA
(:mod:`hgattn.attention.column_tied`). The factored attention matrix (:class:`HSAAttention`) is
computed with plain autograd ops over the sibling pairs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..hierarchy import NEG, Hierarchy
from ..walks import node_means
from . import dp, native
from .column_tied import column_tied_hsa
from .dense import dense_plan, hsa_dense
from .inputs import check_finite, overflow_cause, prepare_inputs, self_logits
from .plan import family_blocks

__all__ = ["hsa", "hsa_attention", "HSAAttention", "leaf_cover", "build_plans"]


@dataclass
class HSAAttention:
    r"""HSA's attention matrix in factored form.

    For siblings ``B != S``, every entry :math:`\Theta_{ij}` with ``i`` below ``B`` and ``j`` below ``S`` equals
    ``sibling_weight`` of the pair; with ``include_self`` the diagonal is ``self_weight``; every other entry is 0.

    Attributes:
        sibling_index: ``[2, P]`` ordered sibling pairs ``(B, S)`` (node ids), as :attr:`Hierarchy.sibling_index`.
        sibling_weight: ``[P, H]`` the per-entry weight of each pair's block.
        self_weight: ``[N, H]`` the diagonal (zeros without ``include_self``).
        hierarchy: the hierarchy the weights refer to.
    """

    sibling_index: Tensor
    sibling_weight: Tensor
    self_weight: Tensor
    hierarchy: Hierarchy

    def to_dense(self) -> Tensor:
        """The full ``[H, N, N]`` matrix (for small inputs: memory is ``O(P N)``)."""
        cover = leaf_cover(self.hierarchy).to(self.sibling_weight.dtype)
        b, s = self.sibling_index
        theta = torch.einsum("pi,ph,pj->hij", cover[b], self.sibling_weight, cover[s])
        return theta + torch.diag_embed(self.self_weight.t())


def leaf_cover(hierarchy: Hierarchy) -> Tensor:
    """``[T, N]`` bool: ``cover[A, i]`` is True when leaf ``i`` lies below (or is) node ``A``."""
    h = hierarchy
    cover = torch.zeros(h.num_nodes, h.num_leaves, dtype=torch.bool, device=h.device)
    rows = torch.arange(h.num_leaves, device=h.device)
    node = h.leaf_node
    for _ in range(h.num_levels):
        alive = node >= 0
        cover[node[alive], rows[alive]] = True
        node = torch.where(alive, h.parent[node.clamp(min=0)], -1)
    return cover


def hsa(query: Tensor, key: Tensor, value: Tensor, hierarchy: Hierarchy, *, pos: Tensor | None = None,
        include_self: bool = False, scale: float | None = None, return_attention: bool = False,
        tie: str | None = None, causal: bool = False) -> Tensor | tuple[Tensor, HSAAttention]:
    r"""Hierarchical Self-Attention (Amizadeh et al., NeurIPS 2025, https://arxiv.org/abs/2509.15448).

    HSA's attention matrix is the row-stochastic matrix closest in KL to softmax attention under the
    constraint that attention between two sibling subtrees is uniform:

    .. math::
        \Theta = \arg\min \sum_i \mathrm{KL}(\Theta_i \,\|\, \mathrm{softmax}_i(s)), \qquad
        s_{ij} = \frac{q_i^\top k_j}{\sqrt{d}} + \langle \mathrm{pos}_{A'}, \mathrm{pos}_{B'} \rangle,

    where ``A', B'`` are the highest distinct ancestors of leaves ``i, j``; the output is
    :math:`o_i = \sum_j \Theta_{ij} v_j`. It is computed exactly, in time and memory linear in the number of
    tree nodes for a bounded branching factor.

    Args:
        query, key, value: ``[N, H, d]`` (or ``[N, d]`` for one head), rows in leaf order.
        hierarchy: the tree or forest; attention never crosses trees.
        pos: optional ``[T, C]`` (shared by the heads) or ``[T, H, C]`` position embedding per tree node,
            giving the sibling term ``<pos[B], pos[S]>`` and, with ``include_self``, ``<pos[i], pos[i]>``.
        include_self: let a leaf attend to itself (standard transformer form); otherwise the diagonal is 0.
        scale: logit scale, default ``1 / sqrt(d)``.
        return_attention: also return the attention in factored form (:class:`HSAAttention`).
        tie: ``'blocks'`` (default unless ``causal``): the constraint above, rows and columns tied per sibling
            block. ``'columns'``: each row is projected on its own onto rows uniform within each block (spec
            section 4b, :func:`hgattn.attention.column_tied.column_tied_hsa`): closer to softmax, ``O(N b D d)``.
        causal: causal column-tied HSA for decoders (leaf ``i`` attends to earlier leaves and itself only);
            needs ``include_self=True`` and leaves numbered depth-first; implies ``tie='columns'``.

    Returns:
        ``[N, H, d]`` (the shape of ``value``), and the :class:`HSAAttention` when requested. Half-precision
        inputs (and inputs under ``torch.autocast``) are computed in float32 and returned in their own dtype.

    Raises:
        NonFiniteError: (a ``ValueError``) an input holds NaN or infinity, or the result does although the
            inputs are finite (the node means or the logits overflow; the message says which).
    """
    if causal or tie not in (None, "blocks"):
        out = column_tied_hsa(query, key, value, hierarchy, pos=pos, include_self=include_self, scale=scale,
                              tie=tie, causal=causal, return_attention=return_attention)
        check_finite({}, [out], lambda: _overflow_of(query, key, value, hierarchy, pos, scale))
        return out
    inputs = {"query": query, "key": key, "value": value, "pos": pos}
    q, k, v, pos, one_head, scale = prepare_inputs(query, key, value, hierarchy, pos, scale, finite=False)
    out_dtype = value.dtype
    h = hierarchy

    with _compute_precision(q):
        out, finite = _dispatch(q, k, v, pos, include_self, h, scale)
    if not finite:
        check_finite(inputs, [out], lambda: overflow_cause(q, k, v, pos, h, scale))
    out = out.to(out_dtype)
    if one_head:
        out = out.squeeze(1)
    if not return_attention:
        return out
    with _compute_precision(q):
        self_logit = self_logits(q, k, pos, h, scale) if include_self else None
        return out, _attention(q, k, pos, self_logit, h, scale)


def _dispatch(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, include_self: bool, h: Hierarchy,
              scale: float) -> tuple[Tensor, bool]:
    """HSA of prepared inputs by the kernel that fits them, and whether that kernel found the inputs and the
    output all finite (False: not checked). The native kernel on the CPU (float32/64, unless wide families
    dominate) checks as it runs; else the dense groups take the small trees and the DP the rest (the DP alone
    under ``torch.compile``)."""
    if not torch.compiler.is_compiling():
        plan = native.native_plan(h)
        if native.takes(plan, q.dtype) and native.fits_in_memory(plan, q.size(1), q.size(2), v.size(2),
                                                                  q.element_size()):
            return native.hsa_native(q, k, v, pos, include_self, plan, scale)
        plan = dense_plan(h)
        if plan is not None:   # the dense groups read their self logits off their family logits
            return hsa_dense(q, k, v, pos, include_self, h, plan, scale), False
    return dp.hsa_dp(q, k, v, pos, self_logits(q, k, pos, h, scale) if include_self else None, h, scale), False


def hsa_attention(query: Tensor, key: Tensor, hierarchy: Hierarchy, *, pos: Tensor | None = None,
                  include_self: bool = False, scale: float | None = None) -> HSAAttention:
    """HSA's attention matrix in factored form (:class:`HSAAttention`), differentiable in ``query``, ``key``
    and ``pos``, with plain autograd ops over the sibling pairs: time and memory ``O(P H d + T H d)``.

    Arguments as :func:`hsa`; the same weights as ``hsa(..., return_attention=True)``.
    """
    inputs = {"query": query, "key": key, "pos": pos}
    q, k, _, pos, _, scale = prepare_inputs(query, key, key, hierarchy, pos, scale, finite=False)
    with _compute_precision(q):
        self_logit = self_logits(q, k, pos, hierarchy, scale) if include_self else None
        attention = _attention(q, k, pos, self_logit, hierarchy, scale)
    check_finite(inputs, [attention.sibling_weight, attention.self_weight],
                 lambda: overflow_cause(q, k, k, pos, hierarchy, scale))
    return attention


def _compute_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off while the kernels run on inputs already in their compute dtype (autocast would cast their
    matrix products back down and mix dtypes)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _overflow_of(query: Tensor, key: Tensor, value: Tensor, h: Hierarchy, pos: Tensor | None,
                 scale: float | None) -> str:
    """:func:`overflow_cause` of the raw inputs (prepared again: the column-tied kernel prepares its own)."""
    q, k, v, pos, _, scale = prepare_inputs(query, key, value, h, pos, scale, finite=False)
    return overflow_cause(q, k, v, pos, h, scale)


def _attention(q: Tensor, k: Tensor, pos: Tensor | None, self_logit: Tensor | None, h: Hierarchy,
               scale: float) -> HSAAttention:
    """Factored attention from sibling-pair logits: grouped logsumexp gives ``e``, the gates give the rest."""
    b, s = h.sibling_index
    logit = (node_means(q, h)[b] * node_means(k, h)[s]).sum(-1) * scale
    if pos is not None:
        logit = logit + (pos[b] * pos[s]).sum(-1)
    slot_b = h.node_slot[b]
    e = _grouped_logsumexp(logit + h.leaf_count[s].to(logit.dtype).log()[:, None], slot_b, h.num_nodes)
    gates = dp.compute_gates(e, self_logit, h)
    u, z = torch.cat(gates.reach), torch.cat(gates.z)
    weight = torch.exp(u[slot_b] + logit - z[slot_b])
    self_weight = gates.keep if gates.keep is not None else q.new_zeros(h.num_leaves, q.size(1))
    return HSAAttention(h.sibling_index, weight, self_weight, h)


def _grouped_logsumexp(x: Tensor, index: Tensor, size: int) -> Tensor:
    """``[size, H]`` logsumexp of the rows of ``x`` ``[P, H]`` grouped by ``index``; ``NEG`` for empty groups."""
    expanded = index[:, None].expand_as(x)
    top = x.new_full((size, x.size(1)), NEG).scatter_reduce(0, expanded, x.detach(), "amax")
    total = x.new_zeros(size, x.size(1)).scatter_add(0, expanded, torch.exp(x - top[index]))
    return torch.where(total > 0, top + total.clamp(min=torch.finfo(x.dtype).tiny).log(), NEG)


def build_plans(hierarchy: Hierarchy, *, for_compile: bool = True) -> Hierarchy:
    """Build and cache the kernels' plans for ``hierarchy`` now, and return it.

    :func:`hsa` builds them on its first call on a hierarchy; build them ahead where that call should not pay
    for it: in a ``DataLoader``'s collate (plans move with ``Hierarchy.to``), or before ``torch.compile``
    traces a model (building them inside a compiled region breaks the graph). Under ``torch.compile`` every
    tree takes the DP: with the dense kernel, inductor (torch 2.13, CPU) gave wrong gradients for
    ``HSAConv`` in training mode (``tests/test_nn_compile.py``). With ``for_compile=False`` only the plans an
    eager call uses are built: the native kernel's where it takes the hierarchy (on the CPU), else the dense
    groups and the DP's family blocks of the trees they leave."""
    if not for_compile and native.takes(native.native_plan(hierarchy)):
        return hierarchy
    plan = dense_plan(hierarchy)
    if for_compile or plan is None:
        family_blocks(hierarchy)
    if plan is not None and plan.rest is not None:
        family_blocks(plan.rest)
    return hierarchy
