"""The API reference (docs/, Sphinx autodoc over the package's docstrings) builds with warnings as errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(REPO / "docs"),
                          str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    page = (tmp_path / "html" / "api" / "attention.html").read_text()
    assert "arxiv.org/abs/2509.15448" in (tmp_path / "html" / "index.html").read_text()
    assert 'id="hgattn.attention.operator.hsa"' in page
