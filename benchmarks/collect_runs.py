"""Summarise ``hgattn train`` runs from their checkpoints, stopped runs included.

Usage: ``python benchmarks/collect_runs.py RUNS_DIR OUT.jsonl [--metric roc_auc]``. Every
``RUNS_DIR/*/*/checkpoint.pt`` gives one record (the best validation epoch by ``metric`` and its test score,
time per epoch, curves), written as JSON lines; then one line per model: the test score's mean ± 95% CI and
std over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from hgattn.train.checkpoint import load_checkpoint
from hgattn.train.metrics import mean_confidence_interval


def run_record(checkpoint: Path, metric: str) -> dict[str, Any]:
    """The record of one run from its checkpoint's per-epoch history."""
    state = load_checkpoint(checkpoint)
    history, config = state["history"], state["config"]
    best = max(history, key=lambda record: record[f"valid_{metric}"])
    return {
        "model": config["model"],
        "seed": config["seed"],
        "epochs_done": len(history),
        "epochs_planned": config["epochs"],
        "best_epoch": best["epoch"],
        f"valid_{metric}": best[f"valid_{metric}"],
        f"test_{metric}": best[f"test_{metric}"],
        "s_per_epoch": sum(record["train_seconds"] for record in history) / len(history),
        "peak_mib": max((record["peak_bytes"] or 0) for record in history) / 2**20,
        "test_curve": [round(record[f"test_{metric}"], 4) for record in history],
        "valid_curve": [round(record[f"valid_{metric}"], 4) for record in history],
        "config": config,
    }


def model_line(model: str, records: list[dict[str, Any]], metric: str) -> str:
    """One summary line: epochs per seed, test score mean ± 95% CI, std and per seed, time per epoch."""
    tests = [record[f"test_{metric}"] for record in records]
    mean, half = mean_confidence_interval(tests)
    std = statistics.stdev(tests) if len(tests) > 1 else float("nan")
    seconds = sum(record["s_per_epoch"] for record in records) / len(records)
    return (f"{model:8s} seeds {len(records)} epochs {[r['epochs_done'] for r in records]} "
            f"test {metric} {mean:.4f} ± {half:.4f} (std {std:.4f}) {[round(t, 4) for t in tests]} "
            f"s/epoch {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--metric", default="roc_auc", help="the task's selection metric (default: roc_auc)")
    args = parser.parse_args()
    records = [run_record(path, args.metric) for path in sorted(args.runs.glob("*/*/checkpoint.pt"))]
    args.out.write_text("".join(json.dumps(record) + "\n" for record in records))
    for model in sorted({record["model"] for record in records}):
        print(model_line(model, [record for record in records if record["model"] == model], args.metric))


if __name__ == "__main__":
    main()
