"""Atomic file writes shared by datasets, checkpoints and results: readers see the old file or the new one,
never a part, also after a SIGKILL or a power loss."""
from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path

__all__ = ["write_atomically", "temporary_sibling", "fsync_folder"]


def temporary_sibling(path: str | Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<pid>.<random>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened elsewhere)."""
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a temporary file in the same folder (created if needed), ``fsync``,
    ``os.replace`` over ``path``, ``fsync`` of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
    fsync_folder(path.parent)
