"""Results over seeds: JSON-lines result files (written atomically), summary rows with 95% confidence
intervals, markdown tables, plots."""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import locked_folder, write_atomically
from .metrics import mean_confidence_interval, sample_std

__all__ = [
    "read_jsonl",
    "append_jsonl",
    "record_result",
    "same_run",
    "write_text_atomically",
    "summarize",
    "markdown_table",
    "plot_curves",
]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line that is not a JSON object, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON record ({error}); fix or delete it") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a result record must be a JSON object, got {line[:40]!r}")
        records.append(record)
    return records


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Add one JSON line to ``path`` (folders created): the file is rewritten atomically, under a lock on
    its folder, so an interruption or a concurrent writer never leaves a partial line or loses a record."""
    path = Path(path)
    with locked_folder(path.parent):
        _append_unlocked(path, record)


def record_result(path: str | Path, result: dict[str, Any]) -> bool:
    """Append ``result`` to the JSON-lines file ``path`` unless a record of the same run is already there
    (see :func:`same_run`: e.g. a finished run resumed again); True when it was appended."""
    path = Path(path)
    with locked_folder(path.parent):
        if path.is_file() and any(same_run(record, result) for record in read_jsonl(path)):
            return False
        _append_unlocked(path, result)
        return True


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two result records are of the same run to the same point: same task, model and seed, and
    the same per-epoch history (its timings included, so a fresh re-run is a different run)."""
    keys = ("task", "model", "seed")
    return all(a.get(key) == b.get(key) for key in keys) and json.dumps(
        a.get("history"), sort_keys=True
    ) == json.dumps(b.get("history"), sort_keys=True)


def _append_unlocked(path: Path, record: dict[str, Any]) -> None:
    existing = path.read_bytes() if path.is_file() else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_atomically(path, existing + (json.dumps(record) + "\n").encode())


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`~hgattn.train.checkpoint.write_atomically`)."""
    write_atomically(path, text.encode())


def summarize(results: Sequence[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per (task, model) in first-seen order: number of seeds, ``(mean, CI half-width, std)`` of every
    ``test_*`` metric (sample standard deviation; NaN for one seed), mean seconds per epoch, largest peak
    memory."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[(result["task"], result["model"])].append(result)
    rows = []
    for (task, model), runs in groups.items():
        row: dict[str, Any] = {"task": task, "model": model, "seeds": len(runs)}
        for key in sorted(k for k in runs[0] if k.startswith("test_")):
            values = [run[key] for run in runs]
            row[key] = (*mean_confidence_interval(values, confidence), sample_std(values))
        row["seconds_per_epoch"] = sum(run["seconds_per_epoch"] for run in runs) / len(runs)
        peaks = [run["peak_bytes"] for run in runs if run.get("peak_bytes") is not None]
        row["peak_mib"] = max(peaks) / 2**20 if peaks else None
        row["epochs"] = runs[0]["epochs"]
        rows.append(row)
    return rows


def _interval(value: tuple[float, float, float]) -> str:
    mean, half, std = value
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f} (std {std:.4f})"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`summarize` rows (metrics as mean ± 95% CI half-width over seeds, and the
    standard deviation over seeds)."""
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
    training time (seconds); saved as a PNG at ``path`` (atomically)."""
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
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    write_atomically(path, image.getvalue())
