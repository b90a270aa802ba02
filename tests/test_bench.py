"""The benchmark script runs end to end (smoke mode) and writes its table, records and plot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_writes_records_and_plot(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_hsa.py"), "--quick", "--max-leaves", "1024",
           "--trees", "balanced-4", "random-2-30", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "hsa_vs_sdpa.jsonl").read_text().splitlines()]
    assert {(r["method"], r["tree"], r["mode"]) for r in records} == {
        (m, t, mode) for mode in ("fwd", "fwd+bwd")
        for m, t in (("hsa", "balanced-4"), ("hsa", "random-2-30"), ("sdpa", None))}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in records)
    assert (tmp_path / "hsa_vs_sdpa.png").stat().st_size > 0
    assert "sdpa/hsa" in result.stdout
