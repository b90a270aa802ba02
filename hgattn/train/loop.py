"""The training loop: epochs with progress bars, evaluation, a checkpoint after every epoch, exact resume."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .memory import PeakMemory
from .tasks import Task

__all__ = ["train", "run_name", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def run_name(config: TrainConfig) -> str:
    """``<task>-<model>-seed<seed>``: the run's folder under ``out_dir``."""
    return f"{config.task}-{config.model}-seed{config.seed}"


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
    dataset = task.splits[split]
    if split != "train":
        return DataLoader(dataset, batch_size=config.batch_size)
    sampler = distributed.train_sampler(dataset, config.seed, epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(
        dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator
    )


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
        loss.backward()
        optimizer.step()
        return float(loss.detach())
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
            results.update({f"{split}_{k}": v for k, v in task.evaluate(logits[mask], store.y[mask]).items()})
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


def train(task: Task, config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``task`` for ``config.epochs`` epochs, checkpointing after every epoch to
    ``<out_dir>/<run_name>/checkpoint.pt`` (``config.resume``: continue from it).

    Returns the run's result: the config, the epoch with the best validation metric and its test metrics,
    mean training time per epoch, peak training memory, parameter count and the per-epoch history.
    """
    device = torch.device(config.device)
    run_dir = Path(config.out_dir) / run_name(config)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    torch.manual_seed(config.seed)
    model = task.build_model(config.model, config).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    history: list[dict[str, Any]] = []
    start = 1
    if config.resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"] + 1
        set_rng_state(state["rng"])
    trained = distributed.wrap(model)
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
                },
            )
    return summarize_run(task, config, model, history)


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


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")
