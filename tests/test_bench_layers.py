"""The layer benchmark runs end to end (smoke mode) and writes its records and plot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"hsa_gps", "local_only", "gps_multihead", "gps_performer", "sgformer", "polynormer"}


def test_bench_layers_quick_writes_records_and_plot(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_layers.py"), "--quick", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "layers_gps.jsonl").read_text().splitlines()]
    sweep = [r for r in records if r["graph"] == "random-500"]
    assert {r["method"] for r in sweep} == METHODS
    arxiv = {r["method"]: r for r in records if r["graph"] == "ogbn-arxiv-size"}
    assert set(arxiv) == {"interleaved", "hsa_gps", "local_only", "gps_multihead"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in records)
    assert arxiv["interleaved"]["ratio"] > 0 and arxiv["interleaved"]["nodes"] == 600
    assert "ogbn-arxiv size, interleaved: hsa_gps" in result.stdout
    assert (tmp_path / "layers_gps.png").stat().st_size > 0
