"""Summarise the molhiv runs under a folder: finished runs from results.jsonl, cut runs from their checkpoint."""
import json, statistics, sys
from pathlib import Path
import torch
runs, rows = Path(sys.argv[1]), []
for ckpt in sorted(runs.glob("*/*/checkpoint.pt")):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    hist, cfg = state["history"], state["config"]
    best = max(hist, key=lambda r: r["valid_roc_auc"])
    rows.append({"model": cfg["model"], "seed": cfg["seed"], "epochs_done": len(hist), "epochs_planned": cfg["epochs"],
                 "best_epoch": best["epoch"], "valid_roc_auc": best["valid_roc_auc"], "test_roc_auc": best["test_roc_auc"],
                 "s_per_epoch": sum(r["train_seconds"] for r in hist) / len(hist),
                 "peak_mib": max((r["peak_bytes"] or 0) for r in hist) / 2**20,
                 "test_curve": [round(r["test_roc_auc"], 4) for r in hist], "valid_curve": [round(r["valid_roc_auc"], 4) for r in hist],
                 "config": cfg})
out = Path(sys.argv[2])
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
for model in sorted({r["model"] for r in rows}):
    sel = [r for r in rows if r["model"] == model]
    t = [r["test_roc_auc"] for r in sel]
    sd = statistics.stdev(t) if len(t) > 1 else float("nan")
    print(f"{model:8s} seeds {len(sel)} epochs {[r['epochs_done'] for r in sel]} test {statistics.mean(t):.4f} sd {sd:.4f} "
          f"valid {statistics.mean(r['valid_roc_auc'] for r in sel):.4f} s/epoch {statistics.mean(r['s_per_epoch'] for r in sel):.1f} "
          f"tests {[round(x, 4) for x in t]}")
