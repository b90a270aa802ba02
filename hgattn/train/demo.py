"""``hgattn demo``: BBC News topic classification, HSA against FSA and DeepSet over several seeds."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .config import TrainConfig
from .loop import append_jsonl, train
from .results import markdown_table, plot_curves, summarize
from .tasks import load_task

__all__ = ["run_demo", "DEMO_MODELS"]

DEMO_MODELS = ("hsa", "fsa", "deepset")


def run_demo(base: TrainConfig, seeds: int, models: Sequence[str] = DEMO_MODELS) -> list[dict[str, Any]]:
    """Train every model of ``models`` on ``base.task`` with seeds ``0 .. seeds-1`` (other settings from
    ``base``); writes ``results.jsonl`` (one line per run, rewritten), ``summary.md`` and
    ``curves.png`` to ``base.out_dir`` and returns the summary rows. With ``base.resume`` each run continues
    from its checkpoint (finished runs are read back without training)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out_dir = Path(base.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    results_path.unlink(missing_ok=True)
    results = []
    for model in models:
        began = time.perf_counter()
        task = load_task(replace(base, model=model))
        _log(
            f"{model}: data ready in {time.perf_counter() - began:.1f} s "
            f"({', '.join(f'{k} {len(v)}' for k, v in task.splits.items())} articles)"
        )
        for seed in range(seeds):
            result = train(task, replace(base, model=model, seed=seed, out_dir=str(out_dir / "runs")))
            results.append(result)
            append_jsonl(results_path, result)
            _log(
                f"{model} seed {seed}: test accuracy {result['test_accuracy']:.4f}, "
                f"macro-F1 {result['test_macro_f1']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch"
            )
    rows = summarize(results)
    (out_dir / "summary.md").write_text(markdown_table(rows))
    plot_curves(results, "accuracy", out_dir / "curves.png")
    return rows


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
