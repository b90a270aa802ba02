"""Evaluation metrics and confidence intervals over seeds."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["accuracy", "accuracy_ogb", "macro_f1", "mean_confidence_interval", "roc_auc_ogb", "sample_std"]


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of equal entries of the ``[n]`` integer predictions and targets."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(
            f"accuracy: predictions {list(pred.shape)} and targets {list(target.shape)} must have "
            "the same non-empty shape"
        )
    return float((pred == target).float().mean())


def macro_f1(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Unweighted mean over the classes present in ``target`` or ``pred`` of the per-class F1 score
    (scikit-learn's ``f1_score(average='macro')``, with 0 for a class that is never predicted correctly)."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(
            f"macro_f1: predictions {list(pred.shape)} and targets {list(target.shape)} must have "
            "the same non-empty shape"
        )
    pred, target = pred.long().view(-1), target.long().view(-1)
    true_pos = torch.bincount(target[pred == target], minlength=num_classes).double()
    predicted = torch.bincount(pred, minlength=num_classes).double()
    actual = torch.bincount(target, minlength=num_classes).double()
    present = (predicted + actual) > 0
    f1 = 2 * true_pos[present] / (predicted[present] + actual[present])
    return float(f1.mean())


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of the two-sided Student-t confidence interval of the mean of ``values``
    (``half_width`` is NaN for a single value)."""
    from scipy import stats

    if not values:
        raise ValueError("mean_confidence_interval: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"mean_confidence_interval: confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sample_std(values) / math.sqrt(n)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (``n - 1`` in the denominator; NaN for fewer than two values)."""
    if len(values) < 2:
        return math.nan
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def roc_auc_ogb(name: str, scores: Tensor, target: Tensor) -> float:
    """The official ``ogb.graphproppred.Evaluator(name)`` metric of ``[n, tasks]`` scores against targets
    (ROC-AUC averaged over tasks for ``ogbg-molhiv``; NaN targets are skipped by the evaluator)."""
    from ogb.graphproppred import Evaluator

    evaluator = Evaluator(name)
    result = evaluator.eval(
        {"y_true": target.view(scores.shape).cpu().numpy(), "y_pred": scores.detach().cpu().numpy()}
    )
    return float(result[evaluator.eval_metric])


def accuracy_ogb(name: str, logits: Tensor, target: Tensor) -> float:
    """The official ``ogb.nodeproppred.Evaluator(name)`` accuracy of ``[n, C]`` logits against ``[n]`` labels."""
    from ogb.nodeproppred import Evaluator

    result = Evaluator(name).eval(
        {"y_true": target.view(-1, 1).cpu(), "y_pred": logits.argmax(dim=-1, keepdim=True).cpu()}
    )
    return float(result["acc"])
