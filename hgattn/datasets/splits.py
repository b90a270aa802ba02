"""Fixed, seeded dataset splits."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["stratified_split"]


def stratified_split(y: Tensor, fractions: tuple[float, float] = (0.8, 0.1), seed: int = 0) -> dict[str, Tensor]:
    """Seeded class-stratified split of graph indices, OGB-style keys ``train``, ``valid``, ``test``.

    Each class is shuffled by a generator seeded with ``seed`` and cut at ``round(fractions[0] * n_c)`` and
    ``round((fractions[0] + fractions[1]) * n_c)``; the rest is test. Indices are sorted within each part.

    Args:
        y: ``[n]`` integer labels.
        fractions: train and validation fractions.
        seed: generator seed.
    """
    train_fraction, valid_fraction = fractions
    if y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"stratified_split: y must be 1-D integer labels, got {y.dtype} {list(y.shape)}")
    if train_fraction <= 0 or valid_fraction < 0 or train_fraction + valid_fraction > 1:
        raise ValueError(f"stratified_split: fractions must be positive and sum to at most 1, got {fractions}")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[Tensor]] = {"train": [], "valid": [], "test": []}
    for label in torch.unique(y).tolist():
        members = (y == label).nonzero().view(-1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        cut_train = round(train_fraction * members.numel())
        cut_valid = round((train_fraction + valid_fraction) * members.numel())
        for name, part in zip(parts, (members[:cut_train], members[cut_train:cut_valid], members[cut_valid:])):
            parts[name].append(part)
    return {name: torch.sort(torch.cat(chunks)).values for name, chunks in parts.items()}
