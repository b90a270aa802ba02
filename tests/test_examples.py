"""Every example script runs end to end."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, capsys) -> None:
    runpy.run_path(str(script), run_name="__main__")
    assert "rows sum to one: True" in capsys.readouterr().out or script.name != "hsa_on_a_document.py"
