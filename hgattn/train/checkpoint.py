"""Checkpoints written atomically and verified on load (SHA-256), with every random state needed to resume a
run exactly; the atomic-write helpers that results files share."""

from __future__ import annotations

import hashlib
import io
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import files

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "CheckpointError",
    "write_atomically",
    "locked_folder",
]

#: First bytes of a checkpoint file: this magic, the SHA-256 (hex) of the rest of the file, a newline; the
#: rest is ``torch.save``'s zip archive (``torch.load`` does not check the archive's CRCs).
MAGIC = b"hgattn-checkpoint v1 sha256="
HEADER_SIZE = len(MAGIC) + 64 + 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, truncated, or not written by :func:`save_checkpoint`."""


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global random generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (``torch.save``) behind a header holding the SHA-256 of its bytes, atomically (see
    :func:`write_atomically`: an interruption leaves the previous checkpoint intact)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n"
    write_atomically(path, header + payload)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, after checking its SHA-256 (it holds NumPy and
    Python random states, so it is loaded with ``weights_only=False``: only load checkpoints you wrote).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is damaged or truncated (its bytes do not match the recorded SHA-256), or
            was not written by :func:`save_checkpoint`; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _verified_payload(path, path.read_bytes())
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} matches its SHA-256 but cannot be read: {error}") from error


def _verified_payload(path: Path, data: bytes) -> bytes:
    """The ``torch.save`` bytes of a checkpoint file, checked against the SHA-256 in its header."""
    if not data.startswith(MAGIC) or len(data) < HEADER_SIZE or data[HEADER_SIZE - 1 : HEADER_SIZE] != b"\n":
        raise CheckpointError(
            f"checkpoint {path} has no valid hgattn checksum header ({len(data)} bytes: damaged, truncated, "
            "written by an older hgattn, or not a checkpoint), so it is not loaded; delete it (or "
            "choose another --out-dir) and start the run without --resume"
        )
    recorded = data[len(MAGIC) : HEADER_SIZE - 1].decode("ascii", errors="replace")
    payload = data[HEADER_SIZE:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != recorded:
        raise CheckpointError(
            f"checkpoint {path} is damaged: the SHA-256 of its {len(payload)} bytes is {actual[:16]}..., its "
            f"header records {recorded[:16]}...; delete it (or choose another --out-dir) and start the run "
            "without --resume"
        )
    return payload


def write_atomically(path: str | Path, data: bytes) -> None:
    """:func:`hgattn.files.write_atomically`, after removing the temporary files of ``path`` left by an
    interrupted earlier write (callers that may write the same ``path`` concurrently hold
    :func:`locked_folder`)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    files.write_atomically(path, data)


@contextmanager
def locked_folder(folder: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``folder`` for the ``with`` block: processes that read,
    change and rewrite a shared file there (``results.jsonl`` of runs sharing an ``out_dir``) take turns.
    POSIX only (``fcntl``)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
