"""Summarise ``hgattn train`` runs of an OGB molecule task from their checkpoints, stopped runs included.

Usage: ``python benchmarks/molhiv_collect.py RUNS_DIR OUT.jsonl``. Every ``RUNS_DIR/*/*/checkpoint.pt`` gives
one record (best validation epoch and its test ROC-AUC, time per epoch, curves), written as JSON lines; then
one line per model: test ROC-AUC mean ± 95% CI over seeds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from hgattn.train.metrics import mean_confidence_interval


def run_record(checkpoint: Path) -> dict[str, Any]:
    """The record of one run from its checkpoint's per-epoch history."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    history, config = state["history"], state["config"]
    best = max(history, key=lambda record: record["valid_roc_auc"])
    return {
        "model": config["model"],
        "seed": config["seed"],
        "epochs_done": len(history),
        "epochs_planned": config["epochs"],
        "best_epoch": best["epoch"],
        "valid_roc_auc": best["valid_roc_auc"],
        "test_roc_auc": best["test_roc_auc"],
        "s_per_epoch": sum(record["train_seconds"] for record in history) / len(history),
        "peak_mib": max((record["peak_bytes"] or 0) for record in history) / 2**20,
        "test_curve": [round(record["test_roc_auc"], 4) for record in history],
        "valid_curve": [round(record["valid_roc_auc"], 4) for record in history],
        "config": config,
    }


def model_line(model: str, records: list[dict[str, Any]]) -> str:
    """One summary line: epochs per seed, test ROC-AUC mean ± 95% CI and per seed, time per epoch."""
    tests = [record["test_roc_auc"] for record in records]
    mean, half = mean_confidence_interval(tests)
    seconds = sum(record["s_per_epoch"] for record in records) / len(records)
    return (f"{model:8s} seeds {len(records)} epochs {[r['epochs_done'] for r in records]} "
            f"test {mean:.4f} ± {half:.4f} {[round(t, 4) for t in tests]} s/epoch {seconds:.1f}")


def main(runs: Path, out: Path) -> None:
    records = [run_record(path) for path in sorted(runs.glob("*/*/checkpoint.pt"))]
    out.write_text("".join(json.dumps(record) + "\n" for record in records))
    for model in sorted({record["model"] for record in records}):
        print(model_line(model, [record for record in records if record["model"] == model]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
