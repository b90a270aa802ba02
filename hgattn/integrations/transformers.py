"""Zero-shot HSA inside pretrained Hugging Face transformers (spec section 8, paper Table 3).

:func:`inject_hsa` replaces softmax self-attention in chosen layers of a pretrained model by
:func:`hgattn.hsa`, through transformers' ``AttentionInterface``: the model's attention implementation becomes
:data:`ATTENTION_NAME`, whose function runs HSA in the chosen layers and the model's original attention in the
others. The ``eager_mask`` builder is registered for the same name, so the function receives the padding
(and causal) mask as a 4-D float mask. Each example gets its own tree over its real tokens (padding is
excluded); a batch is one forest. Works for encoders (BERT / RoBERTa family) and, with ``causal=True``, for
decoders (Llama family; full sequences only, no KV cache). Attention dropout is not applied inside HSA.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..attention import hsa
from ..hierarchy import Hierarchy

__all__ = ["ATTENTION_NAME", "inject_hsa", "remove_hsa", "hsa_attention_forward", "sentence_hierarchy",
           "attention_modules"]

ATTENTION_NAME = "hgattn_hsa"
"""The attention implementation name registered in transformers' attention and mask interfaces."""

_STATE = "_hgattn_hsa"

HierarchySpec = int | Sequence[int] | Callable[[int, int], Hierarchy]
"""Branching factors for :meth:`Hierarchy.from_windows` (bottom-up), or a callable
``(example index, number of real tokens) -> Hierarchy`` over the example's real tokens."""


@dataclass(frozen=True)
class HSASettings:
    """How an injected layer computes attention (the arguments of :func:`inject_hsa`)."""

    hierarchy: HierarchySpec
    include_self: bool
    tie: str | None
    causal: bool


@dataclass(frozen=True)
class _LayerState:
    """Stored on every self-attention module of an injected model."""

    settings: HSASettings | None
    original: str


def attention_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Self-attention modules of a transformers model, by layer index (modules with ``layer_idx`` and
    ``scaling`` that call the attention interface; cross-attention is left out)."""
    found = {}
    for module in model.modules():
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "scaling") and \
                "Cross" not in type(module).__name__:
            found[module.layer_idx] = module
    return found


def inject_hsa(model: nn.Module, layers: Iterable[int] | None = None,
               hierarchy: HierarchySpec = (2, 4, 8, 16), *, include_self: bool = True, tie: str | None = None,
               causal: bool = False) -> nn.Module:
    """Swap softmax self-attention for HSA in ``layers`` of a pretrained transformers ``model`` (in place).

    Args:
        model: a ``PreTrainedModel`` whose attention goes through ``AttentionInterface``.
        layers: layer indices (``layer_idx``) to swap; ``None`` swaps all.
        hierarchy: branching factors of fixed windows, bottom-up (``(2, 4, 8, 16)``: the paper's zero-shot
            tree), or a callable ``(example index, number of real tokens) -> Hierarchy`` (for instance
            ``lambda b, n: sentence_hierarchy(sentence_ids[b][:n])``).
        include_self: let a token attend to itself (as softmax attention does).
        tie: ``'blocks'`` (HSA of spec section 4, default) or ``'columns'`` (section 4b).
        causal: causal column-tied HSA for decoders (requires ``include_self``).

    Returns:
        ``model``, whose attention implementation is now :data:`ATTENTION_NAME`; :func:`remove_hsa` undoes it.
    """
    if causal and not include_self:
        raise ValueError("causal HSA needs include_self=True")
    if causal and tie == "blocks":
        raise ValueError("causal HSA ties columns only: use tie='columns' or leave tie unset")
    if tie not in (None, "blocks", "columns"):
        raise ValueError(f"tie must be 'blocks' or 'columns', got {tie!r}")
    _check_hierarchy_spec(hierarchy)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no self-attention module with layer_idx and scaling")
    chosen = set(modules) if layers is None else set(layers)
    unknown = chosen - set(modules)
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} do not exist; the model has layers {sorted(modules)}")
    previous = getattr(next(iter(modules.values())), _STATE, None)
    original = previous.original if previous is not None else model.config._attn_implementation
    register_attention()
    tree = hierarchy if callable(hierarchy) else _branching(hierarchy)
    settings = HSASettings(tree, include_self, tie, causal)
    for index, module in modules.items():
        setattr(module, _STATE, _LayerState(settings if index in chosen else None, original))
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def remove_hsa(model: nn.Module) -> nn.Module:
    """Undo :func:`inject_hsa`: restore the model's original attention implementation (in place)."""
    modules = attention_modules(model).values()
    states = [getattr(module, _STATE, None) for module in modules]
    if not states or states[0] is None:
        raise ValueError("remove_hsa: HSA was not injected into this model")
    model.set_attn_implementation(states[0].original)
    for module in modules:
        delattr(module, _STATE)
    return model


def register_attention() -> None:
    """Register :func:`hsa_attention_forward` and the ``eager_mask`` builder under :data:`ATTENTION_NAME`."""
    AttentionInterface.register(ATTENTION_NAME, hsa_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def hsa_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                          attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs) -> tuple[Tensor, None]:
    """The ``AttentionInterface`` function: HSA in injected layers, the original attention elsewhere.

    Args:
        query: ``[B, H, Q, d]``; key, value: ``[B, H_kv, K, d]`` (grouped heads are repeated).
        attention_mask: ``[B, 1, Q, K]`` float (0 = attend) or bool (True = attend) mask, or ``None``.

    Returns:
        ``([B, Q, H, d], None)``: outputs of padding positions are 0.
    """
    state = getattr(module, _STATE, None)
    if state is None:
        raise ValueError(f"{type(module).__name__} uses attn_implementation {ATTENTION_NAME!r} but was not "
                         "prepared by hgattn.integrations.transformers.inject_hsa")
    if state.settings is None:
        original = _original_attention(module, state.original)
        return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    return _hsa_forward(state.settings, query, key, value, attention_mask, scaling), None


def sentence_hierarchy(sentence_ids: Sequence[int] | Tensor, branching: int | Sequence[int] | None = None,
                       ) -> Hierarchy:
    """Tree over a token sequence: root -> sentences (runs of equal ids) -> tokens, numbered depth-first.

    With ``branching``, each sentence's tokens are grouped further by fixed windows (bottom-up).
    """
    ids = torch.as_tensor(sentence_ids).reshape(-1).tolist()
    if not ids:
        raise ValueError("sentence_hierarchy: no tokens")
    runs: list[int] = []
    for previous, current in zip([None] + ids[:-1], ids):
        if current == previous:
            runs[-1] += 1
        else:
            runs.append(1)
    parent = [-1]
    for length in runs:
        parent.extend(_sentence_subtree(length, branching, offset=len(parent)))
    return Hierarchy.from_parent(parent)


def _sentence_subtree(length: int, branching: int | Sequence[int] | None, offset: int) -> list[int]:
    """Parent list of one sentence below root 0, its nodes numbered from ``offset``; tokens come before
    their window nodes, so leaf order stays depth-first."""
    if branching is None:
        return [0] + [offset] * length
    tree = Hierarchy.from_windows(length, _branching(branching)).parent
    return torch.where(tree >= 0, tree + offset, 0).tolist()


def _branching(spec: int | Sequence[int]) -> tuple[int, ...] | int:
    return spec if isinstance(spec, int) else tuple(int(b) for b in spec)


def _check_hierarchy_spec(spec: HierarchySpec) -> None:
    if callable(spec):
        return
    widths = [spec] if isinstance(spec, int) else list(spec)
    if not widths or any(not isinstance(b, int) or b < 2 for b in widths):
        raise ValueError(f"hierarchy must be branching factors >= 2 or a callable, got {spec!r}")


def _original_attention(module: nn.Module, name: str) -> Callable:
    """The attention function the model used before injection (its own eager function for ``'eager'``)."""
    if name != "eager" and name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"cannot find the original {name!r} attention of {type(module).__name__}")
    return eager


def _real_tokens(attention_mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """``[B, K]`` bool: the keys the last query may attend to (every real token, encoders and decoders)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 4:
        raise ValueError(f"expected a 4-D attention mask, got shape {list(attention_mask.shape)}")
    last_row = attention_mask[:, 0, -1, :]
    allowed = last_row if last_row.dtype == torch.bool else last_row == 0
    return allowed.expand(batch, length)


def _hsa_forward(settings: HSASettings, query: Tensor, key: Tensor, value: Tensor,
                 attention_mask: Tensor | None, scaling: float | None) -> Tensor:
    batch, heads, length, _ = query.shape
    if key.size(2) != length:
        raise ValueError(f"HSA needs the whole sequence: {length} queries against {key.size(2)} keys "
                         "(incremental decoding with a KV cache is not supported)")
    if key.size(1) != heads:
        key = key.repeat_interleave(heads // key.size(1), dim=1)
        value = value.repeat_interleave(heads // value.size(1), dim=1)
    real = _real_tokens(attention_mask, batch, length, query.device)
    counts = real.sum(1).tolist()
    forest = _forest(settings.hierarchy, tuple(counts)).to(query.device)
    rows = [x.transpose(1, 2)[real] for x in (query, key, value)]
    out_rows = hsa(*rows, forest, include_self=settings.include_self, scale=scaling, tie=settings.tie,
                   causal=settings.causal)
    out = out_rows.new_zeros(batch, length, heads, value.size(-1))
    out[real] = out_rows
    return out


def _forest(spec: HierarchySpec, counts: tuple[int, ...]) -> Hierarchy:
    """One tree per example over its real tokens, as one forest."""
    if not callable(spec):
        return _window_forest(spec, counts)
    trees = []
    for index, count in enumerate(counts):
        tree = spec(index, count)
        if not isinstance(tree, Hierarchy) or tree.num_leaves != count or tree.num_trees != 1:
            raise ValueError(f"the hierarchy callable must return a one-tree Hierarchy with {count} leaves "
                             f"for example {index}, got {tree!r}")
        trees.append(tree)
    return Hierarchy.cat(trees)


@lru_cache(maxsize=64)
def _window_forest(branching: tuple[int, ...] | int, counts: tuple[int, ...]) -> Hierarchy:
    return Hierarchy.cat([Hierarchy.from_windows(count, branching) for count in counts])


def _concatenate(parents: list[Tensor]) -> Hierarchy:
    shifted, offset = [], 0
    for parent in parents:
        shifted.append(torch.where(parent >= 0, parent + offset, -1))
        offset += parent.numel()
    return Hierarchy.from_parent(torch.cat(shifted))
