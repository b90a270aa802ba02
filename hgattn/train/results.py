"""Results over seeds: summary rows with 95% confidence intervals, markdown tables, plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .metrics import mean_confidence_interval

__all__ = ["read_jsonl", "summarize", "markdown_table", "plot_curves"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize(results: Sequence[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per (task, model) in first-seen order: number of seeds, mean and CI half-width of every
    ``test_*`` metric, mean seconds per epoch, largest peak memory."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[(result["task"], result["model"])].append(result)
    rows = []
    for (task, model), runs in groups.items():
        row: dict[str, Any] = {"task": task, "model": model, "seeds": len(runs)}
        for key in sorted(k for k in runs[0] if k.startswith("test_")):
            row[key] = mean_confidence_interval([run[key] for run in runs], confidence)
        row["seconds_per_epoch"] = sum(run["seconds_per_epoch"] for run in runs) / len(runs)
        peaks = [run["peak_bytes"] for run in runs if run.get("peak_bytes") is not None]
        row["peak_mib"] = max(peaks) / 2**20 if peaks else None
        row["epochs"] = runs[0]["epochs"]
        rows.append(row)
    return rows


def _interval(value: tuple[float, float]) -> str:
    mean, half = value
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`summarize` rows (metrics as mean ± 95% CI half-width over seeds)."""
    metrics = sorted({key for row in rows for key in row if key.startswith("test_")})
    header = ["task", "model", "seeds", "epochs", *metrics, "s / epoch", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        cells = [
            row["task"],
            row["model"],
            str(row["seeds"]),
            str(row["epochs"]),
            *[_interval(row[m]) if m in row else "" for m in metrics],
            f"{row['seconds_per_epoch']:.2f}",
            peak,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[dict[str, Any]], metric: str, path: str | Path) -> None:
    """Two panels per run, coloured by model: validation ``metric`` against epoch, and against cumulative
    training time (seconds); saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(result["model"] for result in results))
    colors = {model: f"C{i}" for i, model in enumerate(models)}
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        epochs = [record["epoch"] for record in result["history"]]
        values = [record[f"valid_{metric}"] for record in result["history"]]
        elapsed, seconds = [], 0.0
        for record in result["history"]:
            seconds += record["train_seconds"]
            elapsed.append(seconds)
        label = (
            result["model"] if result is next(r for r in results if r["model"] == result["model"]) else None
        )
        by_epoch.plot(epochs, values, color=colors[result["model"]], alpha=0.7, label=label)
        by_time.plot(elapsed, values, color=colors[result["model"]], alpha=0.7, marker=".", label=label)
    by_epoch.set(xlabel="epoch", ylabel=f"validation {metric}", title="training curves")
    by_time.set(xlabel="training time (s)", ylabel=f"validation {metric}", title=f"{metric} against time")
    for axis in (by_epoch, by_time):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
