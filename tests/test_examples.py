"""The document example runs end to end (the other examples run in `test_examples_more.py`, in smoke mode)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hsa_on_a_document.py"


def test_document_example_runs(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "rows sum to one: True" in capsys.readouterr().out
