r"""The native CPU kernel: the whole dynamic programme (spec section 5), forward and backward, in C.

The PyTorch kernels (:mod:`~hgattn.attention.dense`, :mod:`~hgattn.attention.dp`) pay a fixed price per
operation, and a forest of small trees needs many small operations; on the CPU this kernel instead runs each
pass of the DP as one OpenMP loop over a tree level (over all families at once for the family attention),
touching every node once: time ``O(P d + T d)`` with no padding, and no temporaries but the node means, one
value per sibling pair and head (the softmax weights) and per-head scalars. It is compiled from ``csrc/hsa_native.c`` when the package is installed
(``setup.py``; optional: without a C compiler :func:`available` is False and :func:`hgattn.hsa` uses the
PyTorch kernels) and loaded with :mod:`ctypes`.

The family attention is a scalar loop over sibling pairs, so wide families (where a blocked matrix product
wins) are better served by the PyTorch DP: :func:`hgattn.hsa` takes this kernel unless more than
:data:`WIDE_SHARE` of the sibling pairs lie in families of more than :data:`WIDE_FAMILY` children.
"""
from __future__ import annotations

import ctypes
import importlib.util
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..hierarchy import Hierarchy

__all__ = ["available", "NativePlan", "native_plan", "takes", "fits_in_memory", "hsa_native", "WIDE_FAMILY",
           "WIDE_SHARE"]

#: Families wider than this are "wide": on this project's CPU (2 threads, 4 heads x 32, fwd+bwd, 16k leaves in
#: windows of F) the native kernel against the PyTorch DP took 0.52x the time at F = 16, 1.14x at 32, 2.1x at
#: 64, 2.0x at 128 and 2.7x at 256.
WIDE_FAMILY = 24
#: The native kernel takes a hierarchy when at most this share of its sibling pairs lies in wide families.
WIDE_SHARE = 0.5
#: Above this size of the node state (bytes: the inner nodes' means and the sibling pairs' softmax weights),
#: the forward pass keeps only per-head scalars for the backward pass, which computes the state again in
#: cached work arrays: glibc serves allocations beyond 32 MB with fresh pages, and on this project's CPU
#: machine faulting them in cost more than the recomputation (1M leaves: ~0.4 s per GB, and more in a
#: process's first steps).
RECOMPUTE_BYTES = 32 << 20
#: Factor on the kernel's estimated memory that must be available for it to run; otherwise the PyTorch DP,
#: which processes the heads in groups when its inner state is large, takes the call.
MEMORY_MARGIN = 1.15
#: Calls needing less memory than this (bytes) run without asking the system what is available.
MEMORY_CHECK_BYTES = 1 << 30

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


class _Tree(ctypes.Structure):
    _fields_ = [(name, _i64) for name in ("num_slots", "num_levels", "num_leaves", "num_inner", "max_width")] + [
        (name, _ptr) for name in ("level_ptr", "parent", "child_start", "child_count", "leaf_row", "inner_row",
                                  "pair_ptr", "count", "log_count")] + [
        (name, _i64) for name in ("heads", "dim", "vdim", "pos_heads", "pos_dim", "include_self", "threads")]


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("hgattn.attention._native")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    for suffix, real in (("_f32", ctypes.c_float), ("_f64", ctypes.c_double)):
        getattr(lib, "hsa_forward" + suffix).argtypes = [ctypes.POINTER(_Tree)] + [_ptr] * 4 + [real] + [_ptr] * 10
        getattr(lib, "hsa_forward" + suffix).restype = _i64
        getattr(lib, "hsa_backward" + suffix).argtypes = ([ctypes.POINTER(_Tree)] + [_ptr] * 4 + [real, _i64]
                                                          + [_ptr] * 19)
    return lib


def available() -> bool:
    """Whether the native kernel was built (at install time) and loads."""
    return _library() is not None


@dataclass
class NativePlan:
    """A hierarchy in level order, as the C kernel reads it (int64 and float64 arrays, ``[T]`` by slot).

    Attributes:
        level_ptr: ``[L + 1]`` slot range of each level.
        parent, child_start, child_count: parent slot (-1 for a root), first child slot, number of children.
        leaf_row, inner_row: leaf row of a leaf slot and inner row of an inner slot (-1 otherwise).
        pair_ptr: first sibling pair (``bi * F + si`` within a family of ``F``) of the family of each slot.
        wide_share: the share of the pairs (``F^2`` per family) in families wider than :data:`WIDE_FAMILY`.
        count, log_count: leaves below each slot, and their log.
        slot_node, node_slot: node id of each slot, and its inverse.
        max_width: the widest family.
    """

    level_ptr: Tensor
    parent: Tensor
    child_start: Tensor
    child_count: Tensor
    leaf_row: Tensor
    inner_row: Tensor
    pair_ptr: Tensor
    count: Tensor
    log_count: Tensor
    slot_node: Tensor
    node_slot: Tensor
    num_leaves: int
    num_inner: int
    num_pairs: int
    max_width: int
    wide_share: float
    workspace: dict = field(default_factory=dict, repr=False)

    def to(self, device: torch.device | str) -> "NativePlan":
        return NativePlan(*(getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor)
                            else getattr(self, f.name) for f in fields(self) if f.name != "workspace"))

    def borrow(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A work array of one call (uninitialised), taken from the plan's cache or freshly allocated: the
        kernel's temporaries are allocated once per hierarchy and shape, not per call (large fresh
        allocations cost a page fault per 4 KB on every call)."""
        found = self.workspace.pop((name, like.dtype, shape), None)
        return fresh(shape, like) if found is None else found

    def give_back(self, name: str, work: Tensor) -> None:
        self.workspace[(name, work.dtype, tuple(work.shape))] = work

    def tree(self, heads: int, dim: int, vdim: int, pos: Tensor | None, include_self: bool) -> _Tree:
        return _Tree(self.parent.numel(), self.level_ptr.numel() - 1, self.num_leaves, self.num_inner,
                     self.max_width, *(t.data_ptr() for t in (self.level_ptr, self.parent, self.child_start,
                                                              self.child_count, self.leaf_row, self.inner_row,
                                                              self.pair_ptr, self.count, self.log_count)),
                     heads, dim, vdim, 0 if pos is None else pos.size(1), 0 if pos is None else pos.size(2),
                     int(include_self), torch.get_num_threads())


def native_plan(h: Hierarchy) -> NativePlan | None:
    """The plan of ``h`` for the native kernel (cached on it), or None when the kernel is not built or ``h`` is
    not on the CPU."""
    if "native" not in h._plans:
        h._plans["native"] = _build_plan(h) if available() and h.device.type == "cpu" else None
    return h._plans["native"]


@torch.compiler.disable
def _build_plan(h: Hierarchy) -> NativePlan:
    slots = h.num_nodes
    slot_node = h.level_node
    parent_node = h.parent[slot_node]
    parent = torch.where(parent_node >= 0, h.node_slot[parent_node.clamp(min=0)], -1)
    child = (parent >= 0).nonzero().view(-1)
    child_count = torch.bincount(parent[child], minlength=slots)
    child_start = torch.full((slots,), slots, dtype=torch.long).scatter_reduce_(0, parent[child], child, "amin")
    count = h.leaf_count[slot_node].double()
    pairs = child_count.square()
    pair_ptr = torch.cumsum(pairs, 0) - pairs
    total = int(pairs.sum())
    wide = int(pairs[child_count > WIDE_FAMILY].sum())
    return NativePlan(torch.tensor(h.level_ptr, dtype=torch.long), parent, child_start, child_count,
                      h.node_leaf[slot_node], h.inner_index[slot_node], pair_ptr, count, count.log(), slot_node,
                      h.node_slot, h.num_leaves, h.num_inner, total, int(child_count.max()),
                      wide / total if total else 0.0)


def fits_in_memory(plan: NativePlan, heads: int, dim: int, vdim: int, itemsize: int) -> bool:
    """Whether one forward and backward pass of the kernel (outputs, gradients, node state and work arrays,
    less the work arrays already cached on the plan) fit in the memory the system reports available, with a
    margin of :data:`MEMORY_MARGIN`; always True below :data:`MEMORY_CHECK_BYTES` or where ``/proc/meminfo``
    is not readable."""
    shapes = [*_state_shapes(plan, heads, dim, vdim).values(), *_work_shapes(plan, heads, dim, vdim).values(),
              (4, plan.parent.numel(), heads),                                         # e, a, z, u
              *[(plan.num_leaves, heads, width) for width in (vdim, dim, dim, vdim)]]   # out, dq, dk, dv
    need = _values(shapes) * itemsize - sum(t.numel() * t.element_size() for t in plan.workspace.values())
    if need < MEMORY_CHECK_BYTES:
        return True
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return True
    return need * MEMORY_MARGIN < available


def takes(plan: NativePlan | None, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the native kernel computes HSA of inputs of ``dtype`` over the hierarchy of ``plan`` (on the
    CPU: inputs are on the hierarchy's device)."""
    return (plan is not None and plan.wide_share <= WIDE_SHARE and plan.parent.device.type == "cpu"
            and dtype in (torch.float32, torch.float64))


def hsa_native(q: Tensor, k: Tensor, v: Tensor, pos: Tensor | None, include_self: bool, plan: NativePlan,
               scale: float) -> tuple[Tensor, bool]:
    """HSA of prepared inputs (``[N, H, d]`` float32 or float64 CPU tensors, ``pos`` ``[T, H or 1, C]`` by
    node) with the native kernel, differentiable in all four; and whether the inputs and the output are all
    finite (checked by the kernel as it runs)."""
    status = _Status()
    out = _NativeHSA.apply(q, k, v, pos, include_self, plan, scale, status)
    return out, status.finite


class _Status:
    finite = False


def _suffix(x: Tensor) -> str:
    return "_f32" if x.dtype == torch.float32 else "_f64"


def _address(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


class _NativeHSA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pos, include_self, plan, scale, status):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        pos_slot = None if pos is None else pos.index_select(0, plan.slot_node)
        heads, dim, vdim = q.size(1), q.size(2), v.size(2)
        tree = plan.tree(heads, dim, vdim, pos_slot, include_self)
        out = fresh((plan.num_leaves, heads, vdim), v)
        shapes = _state_shapes(plan, heads, dim, vdim)
        recompute = _values(shapes.values()) * v.element_size() > RECOMPUTE_BYTES
        state = {name: plan.borrow(name, shape, q) if recompute else fresh(shape, q)
                 for name, shape in shapes.items()}
        e, a, z, u = fresh((4, plan.parent.numel(), heads), q).unbind(0)
        y = plan.borrow("g", (plan.num_inner, heads, vdim), v)   # the backward pass's "g" in between
        status.finite = bool(getattr(_library(), "hsa_forward" + _suffix(q))(
            ctypes.byref(tree), *map(_address, (q, k, v, pos_slot)), scale,
            *map(_address, (out, *state.values(), e, a, z, u, y))))
        plan.give_back("g", y)
        if recompute:
            for name, tensor in state.items():
                plan.give_back(name, tensor)
        ctx.save_for_backward(q, k, v, pos_slot, e, a, z, u, *(() if recompute else state.values()))
        ctx.plan, ctx.include_self, ctx.scale, ctx.recompute = plan, include_self, scale, recompute
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, pos_slot, e, a, z, u, *state = ctx.saved_tensors
        plan = ctx.plan
        grad = grad.contiguous()
        heads, dim, vdim = q.size(1), q.size(2), v.size(2)
        tree = plan.tree(heads, dim, vdim, pos_slot, ctx.include_self)
        dq, dk, dv = fresh(q.shape, q), fresh(k.shape, k), fresh(v.shape, v)
        dpos = None if pos_slot is None else torch.empty_like(pos_slot)
        shapes = _work_shapes(plan, heads, dim, vdim)
        if ctx.recompute:   # the state and e are computed again into work arrays (the saved e stays untouched)
            shapes.update(_state_shapes(plan, heads, dim, vdim), e=tuple(e.shape))
        work = {name: plan.borrow(name, shape, q) for name, shape in shapes.items()}
        if ctx.recompute:
            state, e = [work[name] for name in _STATE], work["e"]
        getattr(_library(), "hsa_backward" + _suffix(q))(
            ctypes.byref(tree), *map(_address, (q, k, v, pos_slot)), ctx.scale, int(ctx.recompute),
            *map(_address, (*state, e, a, z, u, grad, dq, dk, dv, dpos, *(work[name] for name in _WORK))))
        for name, tensor in work.items():
            plan.give_back(name, tensor)
        grad_pos = None if dpos is None else dpos.index_select(0, plan.node_slot)
        return dq, dk, dv, grad_pos, None, None, None, None


#: The forward pass's node state: inner means of q, k, v and the softmax weights of the sibling pairs (the
#: family summaries are formed from them where needed, never stored).
_STATE = ("rq", "rk", "rv", "W")


def _state_shapes(plan: NativePlan, heads: int, dim: int, vdim: int) -> dict[str, tuple[int, ...]]:
    inner = plan.num_inner
    return dict(zip(_STATE, ((inner, heads, dim), (inner, heads, dim), (inner, heads, vdim),
                             (plan.num_pairs, heads))))


#: The backward pass's work arrays, in the kernel's argument order: the summed output gradients of the inner
#: nodes, the gradients of their means of q, k, v, one value per sibling pair and head, and per-head scalars.
_WORK = ("g", "q", "k", "v", "gv", "scalars")


def _work_shapes(plan: NativePlan, heads: int, dim: int, vdim: int) -> dict[str, tuple[int, ...]]:
    inner = plan.num_inner
    return dict(zip(_WORK, ((inner, heads, vdim), (inner, heads, dim), (inner, heads, dim), (inner, heads, vdim),
                            (plan.num_pairs, heads), (5, plan.parent.numel(), heads))))


#: Fresh arrays of at least this many bytes are given to the kernel on transparent huge pages where the system
#: offers them (``madvise``): their first touch then faults once per 2 MB instead of once per 4 KB.
HUGE_PAGE_BYTES = 4 << 20
_HUGE = 1 << 21


def fresh(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised array of ``shape`` with the dtype and device of ``like``; when it is at least
    :data:`HUGE_PAGE_BYTES`, its whole 2 MB pages are advised to be backed by transparent huge pages
    (``MADV_HUGEPAGE``; ignored where the system has none)."""
    out = like.new_empty(tuple(shape))
    size = out.numel() * out.element_size()
    libc = _libc()
    if size >= HUGE_PAGE_BYTES and libc is not None:
        start = -(-out.data_ptr() // _HUGE) * _HUGE
        end = (out.data_ptr() + size) // _HUGE * _HUGE
        if end > start:
            libc.madvise(start, end - start, _MADV_HUGEPAGE)
    return out


_MADV_HUGEPAGE = 14


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library's ``madvise`` (Linux), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.madvise.argtypes, libc.madvise.restype = [_ptr, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return libc


def _values(shapes) -> int:
    """The number of values in tensors of the given shapes."""
    return sum(math.prod(shape) for shape in shapes)
