"""The training loop: epochs with progress bars, evaluation, a verified checkpoint after every epoch, exact
resume checked against the run's config."""

from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..batching import TreeLoader
from . import distributed, sharded
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .memory import PeakMemory
from .results import append_jsonl
from .tasks import Task

__all__ = ["train", "run_name", "load_resume_state", "config_changes", "append_jsonl", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def run_name(config: TrainConfig) -> str:
    """``<task>-<model>-seed<seed>``: the run's folder under ``out_dir`` (a user task's ``module:function`` or
    ``file.py:function`` with every character but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', config.task)}-{config.model}-seed{config.seed}"


def compute_loss(task: Task, logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for classes, or binary cross-entropy over the labelled (non-NaN) entries."""
    if task.loss == "cross_entropy":
        return F.cross_entropy(logits, y.view(-1))
    y = y.view(logits.shape).float()
    labelled = ~torch.isnan(y)
    return F.binary_cross_entropy_with_logits(logits[labelled], y[labelled])


def _loader(task: Task, split: str, config: TrainConfig, epoch: int) -> Iterable[Any]:
    """Batches of a graph task's split; training batches are shuffled by a generator seeded with
    ``(seed, epoch)`` (so a resumed run sees the same order), split over ranks when distributed."""
    dataset, collate = task.splits[split], {"hierarchy": task.hierarchy_in_collate, "plans": task.plans_in_collate}
    if split != "train":
        return TreeLoader(dataset, batch_size=config.batch_size, **collate)
    sampler = distributed.train_sampler(dataset, config.seed, epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return TreeLoader(dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                      generator=generator, **collate)


def _train_epoch(
    task: Task,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    """One epoch of training; returns the mean training loss (over this rank's batches)."""
    model.train()
    if task.kind == "node":
        graph = task.graph.to(device)
        store = graph[task.target_type]
        optimizer.zero_grad()
        loss = compute_loss(task, model(graph)[store.train_mask], store.y[store.train_mask])
        if not sharded.is_sharded(task):
            loss.backward()
            optimizer.step()
            return float(loss.detach())
        loss = loss * sharded.global_share(store.train_mask)   # the mean over all ranks' nodes, summed
        loss.backward()
        sharded.sum_gradients(model)
        optimizer.step()
        total = loss.detach().reshape(1)
        torch.distributed.all_reduce(total)
        return float(total)
    total, count = 0.0, 0
    batches = _loader(task, "train", config, epoch)
    for batch in tqdm(
        batches,
        desc=f"epoch {epoch}",
        leave=False,
        file=sys.stderr,
        disable=not (config.progress and distributed.is_main()),
    ):
        batch = batch.to(device)
        optimizer.zero_grad()
        loss = compute_loss(task, model(batch), batch.y)
        loss.backward()
        optimizer.step()
        total, count = total + float(loss.detach()) * batch.num_graphs, count + batch.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    task: Task, model: torch.nn.Module, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Metrics on ``valid`` and ``test`` (keys ``valid_<metric>``, ``test_<metric>``)."""
    model.eval()
    results: dict[str, float] = {}
    if task.kind == "node":
        graph = task.graph.to(device)
        store = graph[task.target_type]
        logits = model(graph)
        for split, mask in (("valid", store.val_mask), ("test", store.test_mask)):
            split_logits, y = logits[mask], store.y[mask]
            if sharded.is_sharded(task):
                split_logits, y = sharded.gather_rows(split_logits, y)
            results.update({f"{split}_{k}": v for k, v in task.evaluate(split_logits, y).items()})
        return results
    for split in ("valid", "test"):
        logits, targets = [], []
        for batch in _loader(task, split, config, 0):
            batch = batch.to(device)
            logits.append(model(batch).cpu())
            targets.append(batch.y.cpu())
        scores = task.evaluate(torch.cat(logits), torch.cat(targets))
        results.update({f"{split}_{k}": v for k, v in scores.items()})
    return results


#: Options that may change when a run is resumed: how long and where it runs, not what it learns.
RUNTIME_OPTIONS = ("epochs", "resume", "progress", "device", "out_dir", "data_root", "source")
#: Options that fix the run's identity, the shapes of its parameters or its optimizer: never changed on resume.
FIXED_OPTIONS = ("task", "model", "seed", "hidden", "heads", "layers", "optimizer")


def load_resume_state(
    config: TrainConfig, *, apply_changes: bool = False, require_checkpoint: bool = True
) -> dict[str, Any] | None:
    """The verified checkpoint that ``config`` resumes (``None`` without ``config.resume``), checked against
    ``config`` before any data loads.

    Every option but :data:`RUNTIME_OPTIONS` must equal the checkpoint's: a difference is refused, naming
    each option with the checkpoint's and the new value, unless ``apply_changes`` (then the new values
    apply from the next epoch on, the optimizer's ``lr`` and ``weight_decay`` included, and the change is
    recorded in the result's ``config_changes``). :data:`FIXED_OPTIONS` cannot change even then.

    Raises:
        FileNotFoundError: no checkpoint, when ``require_checkpoint`` (else a warning, and ``None``: the run
            starts from epoch 1).
        CheckpointError: a damaged checkpoint (named).
        ValueError: options that differ from the checkpoint's, or a checkpoint past ``config.epochs``.
    """
    if not config.resume:
        return None
    path = Path(config.out_dir) / run_name(config) / CHECKPOINT_NAME
    if not path.is_file():
        message = f"resume: no checkpoint at {path}, so there is nothing to resume"
        if require_checkpoint:
            raise FileNotFoundError(f"{message}; run without --resume to start {run_name(config)} at epoch 1")
        warnings.warn(f"{message}; starting {run_name(config)} at epoch 1", RuntimeWarning, stacklevel=3)
        return None
    state = load_checkpoint(path)
    if state["epoch"] > config.epochs:
        raise ValueError(
            f"{path} has finished epoch {state['epoch']}, past epochs={config.epochs}; resume with "
            f"--epochs {state['epoch']} or more"
        )
    changes = config_changes(state["config"], config)
    fixed = [name for name in changes if name in FIXED_OPTIONS]
    if fixed:
        raise ValueError(
            f"cannot resume {path} with {_describe(changes, fixed)}: these options shape the model or its "
            "optimizer, or name the run; resume with the checkpoint's values, or choose another --out-dir for a "
            "new run"
        )
    if changes and not apply_changes:
        raise ValueError(
            f"{path} differs from this run's config: {_describe(changes, list(changes))}; resume with the "
            f"checkpoint's values, or pass --apply-config-changes to continue with the new values from epoch "
            f"{state['epoch'] + 1}"
        )
    if changes and state["epoch"] == config.epochs:
        raise ValueError(
            f"{path} has finished all {config.epochs} epochs, so {_describe(changes, list(changes))} would "
            "apply to no epoch; ask for more --epochs to train on with the new values"
        )
    return state


def config_changes(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{option: (checkpoint's value, new value)}`` for every option outside :data:`RUNTIME_OPTIONS` whose
    value differs between a checkpoint's saved config and ``config``."""
    new = config.to_dict()
    saved = {**_DEFAULTS, **saved}
    names = [name for name in dict.fromkeys([*saved, *new]) if name not in RUNTIME_OPTIONS]
    return {name: (saved.get(name), new.get(name)) for name in names if saved.get(name) != new.get(name)}


#: Options added after checkpoints were first written, at the value that older checkpoints' runs used.
_DEFAULTS: dict[str, Any] = {"optimizer": "adamw"}


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` (``adamw`` or ``adam``) over the model's trainable parameters, with ``config.lr``
    and ``config.weight_decay``."""
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)


def _describe(changes: dict[str, tuple[Any, Any]], names: list[str]) -> str:
    return ", ".join(f"{name}={changes[name][1]!r} (checkpoint: {changes[name][0]!r})" for name in names)


def train(task: Task, config: TrainConfig, *, apply_config_changes: bool = False) -> dict[str, Any]:
    """Train ``config.model`` on ``task`` for ``config.epochs`` epochs, checkpointing after every epoch to
    ``<out_dir>/<run_name>/checkpoint.pt`` (``config.resume``: continue from it, see
    :func:`load_resume_state`; a finished run resumed trains nothing and returns its result again).

    Returns the run's result: the config, the epoch with the best validation metric and its test metrics,
    mean training time per epoch, peak training memory, parameter count, the per-epoch history, the epoch
    it was resumed from (``resumed_from_epoch``, 0 for a fresh run) and the options changed on resume
    (``config_changes``).
    """
    device = torch.device(config.device)
    run_dir = Path(config.out_dir) / run_name(config)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    state = load_resume_state(config, apply_changes=apply_config_changes, require_checkpoint=False)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = task.build_model(config.model, config).to(device)
    optimizer = make_optimizer(model, config)
    history: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    start = 1
    if state is not None:
        history, start, changed = _restore(state, model, optimizer, config)
    trained = model if sharded.is_sharded(task) else distributed.wrap(model)
    bar = tqdm(
        range(start, config.epochs + 1),
        desc=run_name(config),
        initial=start - 1,
        total=config.epochs,
        file=sys.stderr,
        disable=not (config.progress and distributed.is_main()),
    )
    for epoch in bar:
        with PeakMemory(device) as memory:
            began = time.perf_counter()
            loss = _train_epoch(task, trained, optimizer, config, epoch, device)
            seconds = time.perf_counter() - began
        record = {
            "epoch": epoch,
            "loss": loss,
            "train_seconds": seconds,
            "peak_bytes": memory.peak,
            **evaluate(task, model, config, device),
        }
        history.append(record)
        bar.set_postfix(
            loss=f"{loss:.3f}", **{f"valid_{task.metric}": f"{record[f'valid_{task.metric}']:.3f}"}
        )
        if distributed.is_main():
            save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "rng": rng_state(),
                    "config": config.to_dict(),
                    "config_changes": changed,
                },
            )
    return {
        **summarize_run(task, config, model, history),
        "resumed_from_epoch": start - 1,
        "config_changes": changed,
    }


def _restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """Load a checkpoint checked by :func:`load_resume_state` into ``model``, ``optimizer`` and the random
    generators; returns its history, the first epoch to train and the config changes so far (this one's
    appended). The optimizer takes ``config``'s ``lr`` and ``weight_decay``: the checkpoint's own unless
    changes were applied, so the recorded config and the optimizer never disagree."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = config.lr, config.weight_decay
    set_rng_state(state["rng"])
    start = state["epoch"] + 1
    changed = list(state.get("config_changes", []))
    changes = config_changes(state["config"], config)
    if changes:
        changed.append({"epoch": start, "changes": {name: list(pair) for name, pair in changes.items()}})
    return state["history"], start, changed


def summarize_run(
    task: Task, config: TrainConfig, model: torch.nn.Module, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The result record of a run (JSON-serialisable)."""
    if not history:
        raise ValueError(f"run {run_name(config)} has no finished epoch (epochs={config.epochs})")
    best = max(history, key=lambda record: record[f"valid_{task.metric}"])
    peaks = [record["peak_bytes"] for record in history if record["peak_bytes"] is not None]
    return {
        "task": config.task,
        "model": config.model,
        "seed": config.seed,
        "epochs": len(history),
        "metric": task.metric,
        "best_epoch": best["epoch"],
        **{key: value for key, value in best.items() if key.startswith(("valid_", "test_"))},
        "seconds_per_epoch": sum(record["train_seconds"] for record in history) / len(history),
        "peak_bytes": max(peaks) if peaks else None,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "world_size": distributed.world_size(),
        "config": config.to_dict(),
        "history": history,
    }
