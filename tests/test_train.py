"""hgattn.train: metrics, confidence intervals, checkpoints, configs, the flat (FSA) kernel, exact resume."""

from __future__ import annotations

import math
import os
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

import hgattn
from hgattn import Hierarchy
from hgattn.train import TrainConfig, load_yaml_config, train
from hgattn.train.checkpoint import MAGIC, CheckpointError, load_checkpoint, rng_state, save_checkpoint
from hgattn.train.checkpoint import set_rng_state, write_atomically
from hgattn.train.config import validate_option
from hgattn.nn import HSAConv
from hgattn.train.flat import FlatSoftmaxConv, flat_softmax_attention
from hgattn.train.loop import CHECKPOINT_NAME, make_optimizer, run_name
from hgattn.train.metrics import accuracy, macro_f1, mean_confidence_interval
from hgattn.train.models import DeepSetBlock, TreeClassifier
from hgattn.train.results import append_jsonl, markdown_table, read_jsonl, record_result, same_run, summarize
from hgattn.train.tasks import Task, classification_metrics, load_task
from hgattn.transforms import FlattenHierarchy
from hgattn.transforms.multimodal import compose_key_value


# ---------------------------------------------------------------- metrics
def test_accuracy_and_macro_f1_match_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for num_classes in (2, 5):
        target = torch.randint(num_classes, (200,), generator=generator)
        pred = torch.where(
            torch.rand(200, generator=generator) < 0.6,
            target,
            torch.randint(num_classes, (200,), generator=generator),
        )
        assert accuracy(pred, target) == pytest.approx(metrics.accuracy_score(target, pred))
        assert macro_f1(pred, target, num_classes) == pytest.approx(
            metrics.f1_score(target, pred, average="macro")
        )
    target, pred = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1])  # class 2 predicted, never true
    assert macro_f1(pred, target, 3) == pytest.approx(metrics.f1_score(target, pred, average="macro"))


def test_metrics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same non-empty shape"):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="same non-empty shape"):
        macro_f1(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2)


def test_confidence_interval_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    values = [0.91, 0.93, 0.90, 0.95, 0.92]
    mean, half = mean_confidence_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (mean - half, mean + half) == pytest.approx((low, high))
    assert math.isnan(mean_confidence_interval([0.5])[1])
    with pytest.raises(ValueError, match="no values"):
        mean_confidence_interval([])


def test_summary_table() -> None:
    runs = [
        {
            "task": "t",
            "model": m,
            "seed": s,
            "test_accuracy": a,
            "seconds_per_epoch": 2.0,
            "peak_bytes": 2**20 * (10 + s),
            "epochs": 3,
        }
        for m, s, a in [("hsa", 0, 0.8), ("hsa", 1, 0.9), ("fsa", 0, 0.7)]
    ]
    rows = summarize(runs)
    assert [(r["model"], r["seeds"]) for r in rows] == [("hsa", 2), ("fsa", 1)]
    assert rows[0]["test_accuracy"][0] == pytest.approx(0.85)
    assert rows[0]["peak_mib"] == pytest.approx(11)
    assert rows[0]["test_accuracy"][2] == pytest.approx(0.0707107, rel=1e-5)
    table = markdown_table(rows)
    assert "| t | hsa | 2 | 3 | 0.8500 ± 0.6353 (std 0.0707) |" in table and "| t | fsa | 1 | 3 | 0.7000 | 2.00 | 10 |" in table


# ---------------------------------------------------------------- checkpoints and configs
def test_checkpoint_round_trip_restores_random_states(tmp_path) -> None:
    torch.manual_seed(3)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, {"rng": state, "epoch": 7})
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_failure_keeps_previous(tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("position", [0, 10, 40, 100, 0.25, 0.5, 0.75, -64])
def test_checkpoint_with_flipped_bytes_is_refused_naming_it(tmp_path, position) -> None:
    """torch.load does not check the zip CRCs: the SHA-256 header catches every flip, header included."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"weights": torch.randn(64, 64), "epoch": 3})
    data = bytearray(path.read_bytes())
    start = int(len(data) * position) if isinstance(position, float) else position % len(data)
    data[start : start + 64] = bytes(byte ^ 0xFF for byte in data[start : start + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} "):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "header only", "plain torch.save", "text"])
def test_truncated_or_foreign_checkpoint_is_refused_naming_it(tmp_path, damage: str) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"weights": torch.randn(32, 32)})
    data = path.read_bytes()
    if damage == "plain torch.save":
        torch.save({"weights": torch.randn(32, 32)}, path)
    else:
        cut = {"truncated": len(data) // 2, "empty": 0, "header only": len(MAGIC) + 65}.get(damage)
        path.write_bytes(data[:cut] if cut is not None else b"epoch: 3\n")
    with pytest.raises(CheckpointError, match=f"checkpoint {path} (is damaged|has no valid hgattn checksum)"):
        load_checkpoint(path)


def test_atomic_write_replaces_whole_and_clears_stale_temporaries(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    stale = tmp_path / ".results.jsonl.abc123.tmp"  # what a SIGKILL before the rename leaves
    stale.write_bytes(b"half a rec")
    write_atomically(path, b"one\n")
    write_atomically(path, b"two\n")
    assert path.read_bytes() == b"two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_results_file_records_each_run_once(tmp_path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    run = {"task": "t", "model": "m", "seed": 0, "history": [{"epoch": 1, "loss": float("nan")}]}
    assert record_result(path, run) and not record_result(path, dict(run))
    longer = {**run, "history": [*run["history"], {"epoch": 2, "loss": 0.5}]}
    assert record_result(path, longer)
    append_jsonl(path, run)  # appending does not deduplicate
    assert [len(r["history"]) for r in read_jsonl(path)] == [1, 2, 1]
    assert same_run(run, read_jsonl(path)[0]) and not same_run(run, {**run, "seed": 1})


def _append_records(path: str, tag: int) -> None:
    for i in range(15):
        append_jsonl(path, {"writer": tag, "i": i, "padding": "x" * 5000})


def test_concurrent_writers_lose_no_record(tmp_path) -> None:
    """Runs that share an out_dir append to one results.jsonl: the folder lock keeps every record."""
    import multiprocessing

    path = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_records, args=(str(path), tag)) for tag in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    records = read_jsonl(path)
    assert sorted((r["writer"], r["i"]) for r in records) == [(t, i) for t in range(3) for i in range(15)]


def test_read_jsonl_names_the_bad_line(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b\n')
    with pytest.raises(ValueError, match=f"{path}:3: not a JSON record"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=f"{path}:2: a result record must be a JSON object"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="no results file"):
        read_jsonl(tmp_path / "none.jsonl")


def test_yaml_config(tmp_path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("task: cora\nmodel: gps-hsa\nbatch-size: 8\nlr: 0.01\n")
    assert load_yaml_config(path) == {"task": "cora", "model": "gps-hsa", "batch_size": 8, "lr": 0.01}
    path.write_text("lr: 1e-3\nweight_decay: 5E-4\ndropout: .5e-1\nseed: 1_000\nresume: true\nsource: null\n")
    assert load_yaml_config(path) == {
        "lr": 0.001, "weight_decay": 0.0005, "dropout": 0.05, "seed": 1000, "resume": True, "source": None
    }
    path.write_text("weight_decay: 0\n")  # an integer for a number is that number, as a float
    assert repr(load_yaml_config(path)["weight_decay"]) == "0.0"
    path.write_text("task: cora\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown option"):
        load_yaml_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml_config(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"hidden": 30, "heads": 4}, r"hidden \(30\) must be divisible by heads \(4\)"),
        ({"max_graphs": 0}, "max_graphs must be >= 1, got 0"),
        ({"epochs": True}, r"epochs must be an integer, got True \(bool\)"),
        ({"epochs": 2.0}, r"epochs must be an integer, got 2.0 \(float\)"),
        ({"hidden": "64"}, r"hidden must be an integer, got '64' \(str\); a quoted YAML value"),
        ({"lr": "1e-3"}, r"lr must be a number, got '1e-3' \(str\)"),
        ({"lr": float("inf")}, "lr must be a finite number, got inf"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number, got nan"),
        ({"resume": "false"}, r"resume must be true or false, got 'false' \(str\)"),
        ({"progress": 0}, r"progress must be true or false, got 0 \(int\)"),
        ({"max_graphs": 2.5}, r"max_graphs must be an integer or null, got 2.5"),
        ({"task": None}, r"task must be a non-empty string, got None"),
        ({"source": ""}, r"source must be a non-empty string or null, got ''"),
        ({"device": "tpu"}, "device must be cpu, cuda, cuda:<index> or mps, got 'tpu'"),
    ],
)
def test_config_validation(bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)
    with pytest.raises(ValueError, match=message):  # also through dataclasses.replace
        replace(TrainConfig(), **bad)


def test_config_schema_covers_every_field() -> None:
    config = TrainConfig(lr=1, weight_decay=0, max_graphs=None)
    assert isinstance(config.lr, float) and isinstance(config.weight_decay, float)
    for name in TrainConfig.field_names():
        assert validate_option(name, getattr(TrainConfig(), name)) == getattr(TrainConfig(), name)
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        validate_option("learning_rate", 0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device is 'cuda:1' but CUDA is not available.*use --device cpu"):
        TrainConfig(device="cuda:1")


def test_unknown_task_and_model() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        load_task(TrainConfig(task="mnist"))
    with pytest.raises(ValueError, match="has no model"):
        load_task(TrainConfig(task="bbc-news", model="gcn"))


# ---------------------------------------------------------------- FSA kernel
def _flat_forest(sizes: list[int]) -> Hierarchy:
    parent = [-1] * len(sizes) + [tree for tree, size in enumerate(sizes) for _ in range(size)]
    return Hierarchy.from_parent(torch.tensor(parent))


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("with_pos", [False, True])
def test_flat_softmax_equals_hsa_on_one_level_trees(include_self: bool, with_pos: bool) -> None:
    torch.manual_seed(0)
    hierarchy = _flat_forest([5, 1, 7, 2])
    q, k, v = (torch.randn(hierarchy.num_leaves, 2, 4, dtype=torch.float64) for _ in range(3))
    pos = torch.randn(hierarchy.num_nodes, 2, 4, dtype=torch.float64) if with_pos else None
    expected = hgattn.hsa(q, k, v, hierarchy, pos=pos, include_self=include_self)
    out = flat_softmax_attention(
        q, k, v, hierarchy.batch, pos[hierarchy.leaf_node] if with_pos else None, include_self
    )
    torch.testing.assert_close(out, expected)


def _text_forest(sizes: list[int], levels: int, num_classes: int = 3, seed: int = 0) -> list[HeteroData]:
    """Random token trees (not a dataset: features and labels are random), document -> [chunk ->] token."""
    generator = torch.Generator().manual_seed(seed)
    trees = []
    for size in sizes:
        data = HeteroData()
        data["token"].x = torch.randn(size, 6, generator=generator)
        data["token"].pos = torch.randn(size, 4, generator=generator)
        data["document"].num_nodes, data["document"].pos = 1, torch.zeros(1, 4)
        if levels == 1:
            data["token", "in", "document"].edge_index = torch.stack(
                [torch.arange(size), torch.zeros(size).long()]
            )
        else:
            chunk = torch.arange(size) // 3
            data["chunk"].num_nodes = int(chunk.max()) + 1
            data["chunk"].pos = torch.randn(data["chunk"].num_nodes, 4, generator=generator)
            data["token", "in", "chunk"].edge_index = torch.stack([torch.arange(size), chunk])
            data["chunk", "in", "document"].edge_index = torch.stack(
                [torch.arange(data["chunk"].num_nodes), torch.zeros(data["chunk"].num_nodes).long()]
            )
        data.y = torch.randint(num_classes, (1,), generator=generator)
        trees.append(data)
    return trees


def test_fsa_classifier_is_the_hte_layer_on_the_flat_tree() -> None:
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(_text_forest([4, 1, 9], levels=1), batch_size=3)))
    torch.manual_seed(0)
    hsa_model = TreeClassifier(6, 8, 3, batch.metadata(), "token", heads=2, pos_channels=4)
    fsa_model = TreeClassifier(6, 8, 3, batch.metadata(), "token", heads=2, pos_channels=4, flat=True)
    fsa_model.load_state_dict(hsa_model.state_dict())
    torch.testing.assert_close(fsa_model(batch), hsa_model(batch))
    assert "FSA" in repr(fsa_model) and "HSA" in repr(hsa_model)


def test_flat_conv_rejects_bad_input() -> None:
    conv = FlatSoftmaxConv(6, 4, heads=2, pos_channels=4)
    with pytest.raises(ValueError, match="batch"):
        conv(torch.randn(5, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="pos must be"):
        conv(torch.randn(5, 6), torch.zeros(5, dtype=torch.long), torch.randn(5, 3))
    with pytest.raises(ValueError, match="homogeneous"):
        FlatSoftmaxConv(6, 4, (["token", "document"], [("token", "in", "document")]))


def test_deepset_block_ignores_other_leaves() -> None:
    block = DeepSetBlock(6, 8, heads=2)
    x = torch.randn(5, 6)
    torch.testing.assert_close(block(x)[:2], block(x[:2]))
    assert repr(block) == "DeepSetBlock(6, 8, heads=2)"


def _two_modality_items(count: int) -> list[HeteroData]:
    """Random items item -> {image -> patches, name -> tokens} with raw patch and token features."""
    generator = torch.Generator().manual_seed(1)
    items = []
    for index in range(count):
        patches, tokens = 4 + index, 2 + index % 2
        fields = {}
        for field, leaf, size, width in (("image", "patch", patches, 5), ("name", "token", tokens, 6)):
            tree = HeteroData()
            tree[leaf].x = torch.randn(size, width, generator=generator)
            tree[leaf].pos = torch.randn(size, 3, generator=generator)
            tree[field].num_nodes = 1
            tree[leaf, "in", field].edge_index = torch.stack([torch.arange(size), torch.zeros(size).long()])
            fields[field] = tree
        item = compose_key_value(fields)
        item.y = torch.tensor([index % 3])
        items.append(item)
    return items


@pytest.mark.parametrize("kind", ["hsa", "flattened", "deepset"])
def test_tree_classifier_with_two_leaf_types_is_batch_invariant(kind: str) -> None:
    from torch_geometric.loader import DataLoader

    items = _two_modality_items(4)
    if kind == "flattened":
        items = [FlattenHierarchy()(item) for item in items]
    torch.manual_seed(0)
    model = TreeClassifier({"patch": 5, "token": 6}, 8, 3, items[0].metadata(), heads=2, pos_channels=3,
                           attention=kind != "deepset").eval()
    batched = model(next(iter(DataLoader(items, batch_size=4))))
    alone = torch.cat([model(next(iter(DataLoader([item], batch_size=1)))) for item in items])
    torch.testing.assert_close(batched, alone)
    assert repr(model).startswith(f"TreeClassifier({'DeepSet' if kind == 'deepset' else 'HSA'}")


def test_flat_classifier_on_flattened_trees_is_the_hierarchy_path() -> None:
    from torch_geometric.loader import DataLoader

    trees = [FlattenHierarchy()(tree) for tree in _text_forest([4, 7, 9], levels=2)]
    batch = next(iter(DataLoader(trees, batch_size=3)))
    torch.manual_seed(0)
    hsa_model = TreeClassifier(6, 8, 3, batch.metadata(), "token", heads=2, pos_channels=4)
    fsa_model = TreeClassifier(6, 8, 3, batch.metadata(), "token", heads=2, pos_channels=4, flat=True)
    fsa_model.load_state_dict(hsa_model.state_dict())
    torch.testing.assert_close(fsa_model(batch), hsa_model(batch))


def test_tree_classifier_bad_arguments() -> None:
    metadata = _two_modality_items(1)[0].metadata()
    with pytest.raises(ValueError, match="either an int in_channels and its leaf_type"):
        TreeClassifier({"patch": 5}, 8, 3, metadata, "patch")
    with pytest.raises(ValueError, match="either an int in_channels and its leaf_type"):
        TreeClassifier(5, 8, 3, metadata)
    with pytest.raises(ValueError, match=r"flat=True needs one leaf type, got \['patch', 'token'\]"):
        TreeClassifier({"patch": 5, "token": 6}, 8, 3, metadata, flat=True)
    model = TreeClassifier({"patch": 5, "token": 6}, 8, 3, metadata)
    item = _two_modality_items(1)[0]
    del item["token"].x
    with pytest.raises(ValueError, match="leaf type 'token' has no features \\(x\\)"):
        model(item)


def test_deepset_block_per_type_projections() -> None:
    block = DeepSetBlock({"patch": 5, "token": 6}, 8, heads=2)
    x = {"patch": torch.randn(3, 5), "token": torch.randn(2, 6)}
    out = block(x)
    assert list(out) == ["patch", "token"] and out["patch"].shape == (3, 8) and out["token"].shape == (2, 8)
    torch.testing.assert_close(block({"token": x["token"]})["token"], out["token"])
    shared = DeepSetBlock(6, 8, heads=2)
    torch.testing.assert_close(torch.cat(list(shared({"a": x["token"][:1], "b": x["token"][1:]}).values())),
                               shared(x["token"]))


# ---------------------------------------------------------------- training loop and resume
def _toy_task(model: str) -> Task:
    trees = _text_forest([5, 8, 3, 9, 6, 7, 4, 10, 5, 6, 8, 3], levels=1 if model == "fsa" else 2)
    metadata = trees[0].metadata()

    def build(name: str, cfg: TrainConfig) -> torch.nn.Module:
        return TreeClassifier(
            6,
            cfg.hidden,
            3,
            metadata,
            "token",
            heads=cfg.heads,
            pos_channels=4,
            attention=name != "deepset",
            flat=name == "fsa",
            dropout=cfg.dropout,
        )

    return Task(
        "toy",
        "graph",
        "cross_entropy",
        "accuracy",
        3,
        build,
        classification_metrics(3),
        splits={"train": trees[:8], "valid": trees[8:10], "test": trees[10:]},
    )


@pytest.mark.parametrize("model", ["hsa", "fsa", "deepset"])
def test_resume_equals_uninterrupted_run(tmp_path, model: str) -> None:
    task = _toy_task(model)
    base = TrainConfig(
        task="toy", model=model, hidden=8, heads=2, batch_size=3, dropout=0.3, lr=1e-2, progress=False
    )
    straight = train(task, replace(base, epochs=4, out_dir=str(tmp_path / "a")))
    train(task, replace(base, epochs=2, out_dir=str(tmp_path / "b")))  # interrupted after epoch 2
    resumed = train(task, replace(base, epochs=4, out_dir=str(tmp_path / "b"), resume=True))
    drop = ("train_seconds", "peak_bytes")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed["history"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight["history"]
    ]
    states = [load_checkpoint(tmp_path / d / run_name(base) / CHECKPOINT_NAME) for d in ("a", "b")]
    assert states[0]["epoch"] == states[1]["epoch"] == 4
    for key, value in states[0]["model"].items():
        torch.testing.assert_close(states[1]["model"][key], value, rtol=0, atol=0)


def _toy_config(tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(task="toy", model="hsa", epochs=2, hidden=8, heads=2, batch_size=4, lr=1e-2,
                       out_dir=str(tmp_path), progress=False)
    return replace(base, **changes)


def test_resuming_a_finished_run_trains_nothing(tmp_path) -> None:
    task = _toy_task("hsa")
    first = train(task, _toy_config(tmp_path))
    path = tmp_path / run_name(_toy_config(tmp_path)) / CHECKPOINT_NAME
    saved = path.read_bytes()
    again = train(task, _toy_config(tmp_path, resume=True))
    assert again["resumed_from_epoch"] == again["epochs"] == 2 and first["resumed_from_epoch"] == 0
    assert again["history"] == first["history"] and path.read_bytes() == saved


def test_resume_refuses_changed_options_unless_applied(tmp_path) -> None:
    task = _toy_task("hsa")
    train(task, _toy_config(tmp_path))
    with pytest.raises(ValueError, match=r"lr=0.5 \(checkpoint: 0.01\), dropout=0.3 \(checkpoint: 0.1\)"):
        train(task, _toy_config(tmp_path, epochs=3, resume=True, lr=0.5, dropout=0.3))
    with pytest.raises(ValueError, match=r"hidden=16 \(checkpoint: 8\).*shape the model"):
        train(task, _toy_config(tmp_path, epochs=3, resume=True, hidden=16), apply_config_changes=True)
    with pytest.raises(ValueError, match="finished epoch 2, past epochs=1"):
        train(task, _toy_config(tmp_path, epochs=1, resume=True))
    with pytest.raises(ValueError, match="finished all 2 epochs.*would apply to no epoch"):
        train(task, _toy_config(tmp_path, resume=True, lr=0.5), apply_config_changes=True)
    result = train(task, _toy_config(tmp_path, epochs=3, resume=True, lr=0.5), apply_config_changes=True)
    state = load_checkpoint(tmp_path / run_name(_toy_config(tmp_path)) / CHECKPOINT_NAME)
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [0.5] == [state["config"]["lr"]]
    assert result["config"]["lr"] == 0.5
    assert result["config_changes"] == state["config_changes"]
    assert state["config_changes"] == [{"epoch": 3, "changes": {"lr": [0.01, 0.5]}}]


def test_optimizer_option_builds_adamw_with_decoupled_decay_or_adam_with_l2() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = model.weight.detach().clone()
    for name, kind in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)):
        with torch.no_grad():
            model.weight.copy_(start)
        optimizer = make_optimizer(model, TrainConfig(optimizer=name, lr=0.1, weight_decay=0.5))
        assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 0.5
        model.zero_grad()
        model(torch.zeros(1, 3)).sum().mul(0).backward()
        optimizer.step()
        # zero loss gradient: AdamW shrinks by lr * wd * w, Adam's L2 gradient wd * w moves each weight by ~lr
        expected = start * (1 - 0.05) if name == "adamw" else start - 0.1 * start.sign()
        torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"optimizer must be one of \('adamw', 'adam'\), got 'sgd'"):
        TrainConfig(optimizer="sgd")


def test_checkpoint_from_before_the_optimizer_option_resumes_as_adamw(tmp_path) -> None:
    task = _toy_task("hsa")
    train(task, _toy_config(tmp_path))
    path = tmp_path / run_name(_toy_config(tmp_path)) / CHECKPOINT_NAME
    state = load_checkpoint(path)
    del state["config"]["optimizer"]
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"optimizer='adam' \(checkpoint: 'adamw'\).*or its optimizer"):
        train(task, _toy_config(tmp_path, epochs=3, resume=True, optimizer="adam"), apply_config_changes=True)
    result = train(task, _toy_config(tmp_path, epochs=3, resume=True))
    assert result["resumed_from_epoch"] == 2 and len(result["history"]) == 3 and result["config_changes"] == []


def test_resume_without_a_checkpoint_warns_and_starts_at_epoch_one(tmp_path) -> None:
    with pytest.warns(RuntimeWarning, match="no checkpoint at .*starting toy-hsa-seed0 at epoch 1"):
        result = train(_toy_task("hsa"), _toy_config(tmp_path, resume=True))
    assert result["resumed_from_epoch"] == 0 and len(result["history"]) == 2


def test_train_result_record(tmp_path) -> None:
    result = train(
        _toy_task("hsa"),
        TrainConfig(
            task="toy", model="hsa", epochs=2, hidden=8, heads=2, out_dir=str(tmp_path), progress=False
        ),
    )
    assert result["epochs"] == 2 and len(result["history"]) == 2
    assert result["best_epoch"] in (1, 2) and 0 <= result["test_accuracy"] <= 1
    assert result["parameters"] > 0 and result["seconds_per_epoch"] > 0
    if os.path.exists("/proc/self/clear_refs"):
        assert result["peak_bytes"] is not None


def test_subsample_splits() -> None:
    from hgattn.train.tasks import subsample_splits

    split = {"train": torch.arange(0, 80), "valid": torch.arange(80, 90), "test": torch.arange(90, 100)}
    small = subsample_splits(split, 0.25)
    assert [small[k].numel() for k in split] == [20, 3, 3]
    for key in split:
        assert bool(torch.isin(small[key], split[key]).all()) and bool((small[key].diff() > 0).all())
    assert all(torch.equal(a, b) for a, b in zip(small.values(), subsample_splits(split, 0.25).values()))
    assert all(torch.equal(subsample_splits(split, 2.0)[k], split[k]) for k in split)


def test_flat_conv_takes_the_hierarchy_and_flattens_it() -> None:
    """Given the (two-level) hierarchy HSA would use, FSA attends over all leaves of each tree: the same as
    with the tree index of each leaf, and as HSAConv (same weights) on the flattened one-level forest."""
    torch.manual_seed(0)
    trees = Hierarchy.from_parent(torch.tensor([-1, 0, 0, 1, 1, 1, 2, 2, -1, 8, 8, 9, 10, 10]))
    flat = _flat_forest([5, 3])
    x = torch.randn(trees.num_leaves, 6)
    conv = FlatSoftmaxConv(6, 4, heads=2)
    hsa_conv = HSAConv(6, 4, heads=2)
    hsa_conv.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x, trees), conv(x, trees.batch))
    torch.testing.assert_close(conv(x, trees), hsa_conv(x, flat))
    with pytest.raises(ValueError, match="hierarchy has 8 leaves"):
        conv(torch.randn(7, 6), trees)
