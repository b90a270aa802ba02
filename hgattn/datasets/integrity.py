"""Crash-safe processed files and verified raw files, shared by every hgattn dataset.

* writes through :func:`hgattn.files.write_atomically`: a temporary file in the target's folder, ``fsync``,
  ``os.replace``, ``fsync`` of the folder. A reader sees the old file or the complete new one, never a part
  (also after SIGKILL or power loss).
* :class:`IntegrityMixin` for PyG ``InMemoryDataset`` subclasses: processed files are written atomically with
  a ``<file>.sha256`` beside them; on load a file whose digest, contents or counts are wrong is rebuilt from
  the raw files with a :class:`ProcessedFileWarning` naming it.
* :func:`verify_sha256`, :func:`expect_count`: raw files against :data:`~hgattn.datasets.manifest.RECORDS`;
  a wrong one raises :class:`DatasetFileError` naming it.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch_geometric.data import Data
from torch_geometric.io import fs

from ..files import fsync_folder, temporary_sibling, write_atomically

__all__ = ["DatasetFileError", "IntegrityMixin", "ProcessedFileWarning", "atomic_copy", "atomic_copytree",
           "atomic_saves", "count_csv_rows", "expect_count", "folder_sha256",
           "processed_folder", "record_digest", "sha256_file", "verify_sha256", "write_verified"]

_CHUNK = 1 << 20
DIGEST_SUFFIX = ".sha256"
#: Files PyG's ``Dataset._process`` writes beside the processed files (informational: the transforms used).
PYG_MARKERS = ("pre_transform.pt", "pre_filter.pt")


class DatasetFileError(ValueError):
    """A dataset file (raw or processed) that is damaged, incomplete or not the recorded one."""


class ProcessedFileWarning(UserWarning):
    """A processed file could not be used and is rebuilt from the raw files."""


# ---------------------------------------------------------------------- digests and counts
def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(files: Iterable[Path]) -> str:
    """SHA-256 over ``"<name>\\t<sha256 of the file>\\n"`` of ``files`` sorted by name (a folder's digest)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def verify_sha256(folder: str | Path, expected: Mapping[str, str], release: str) -> None:
    """Check each ``folder / name`` against its recorded SHA-256.

    Raises:
        FileNotFoundError: naming a missing file.
        DatasetFileError: naming a file whose SHA-256 differs, with both sums.
    """
    for name, digest in expected.items():
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing raw file of {release}")
        actual = sha256_file(path)
        if actual != digest:
            raise DatasetFileError(
                f"{path}: SHA-256 mismatch ({path.stat().st_size} bytes, SHA-256 {actual}; {release} has "
                f"{digest}): the file is damaged or from another release; replace it with the original (delete "
                "it to download it again)")


def expect_count(name: str | Path, actual: int, expected: int | None, what: str) -> None:
    """Raise :class:`DatasetFileError` ``'<name>: has <actual> <what>, expected <expected>'`` when they differ
    (nothing to check when ``expected`` is ``None``)."""
    if expected is not None and actual != expected:
        raise DatasetFileError(f"{name}: has {actual} {what}, expected {expected} (damaged or incomplete file)")


def count_csv_rows(path: str | Path) -> int:
    """Rows of a gzip-compressed csv file, reading it through (which checks gzip's CRC and length).

    Raises:
        DatasetFileError: naming the file when it is not complete, valid gzip.
    """
    rows, last = 0, b"\n"
    try:
        with gzip.open(path, "rb") as file:
            for chunk in iter(lambda: file.read(_CHUNK), b""):
                rows += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFileError(f"{path}: cannot be read as gzip ({type(error).__name__}: {error}); replace it "
                               "with the original (delete it to download it again)") from error
    return rows + (last != b"\n")


# ---------------------------------------------------------------------- atomic writes
def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy a file so that ``target`` is either absent or complete."""
    write_atomically(target, Path(source).read_bytes())


def atomic_copytree(source: str | Path, target: str | Path, ignore: Any = None) -> None:
    """Copy a folder so that ``target`` is either absent or complete (copied beside it, then renamed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    try:
        shutil.copytree(source, temporary, ignore=ignore)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    fsync_folder(target.parent)


def _is_local(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and "://" not in os.fspath(path)


@contextmanager
def atomic_saves() -> Iterator[None]:
    """Make ``torch.save`` to a local path and PyG's ``fs.torch_save`` atomic while inside (restored on exit).

    Covers what PyG's ``Dataset._process`` and ogb's datasets write (processed files, ``pre_transform.pt``,
    ``pre_filter.pt``); file objects and remote (fsspec) paths are written as before.
    """
    original_save, original_fs_save = torch.save, fs.torch_save

    def serialized(obj: Any) -> bytes:
        buffer = io.BytesIO()
        original_save(obj, buffer)
        return buffer.getvalue()

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not _is_local(f):
            return original_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        original_save(obj, buffer, *args, **kwargs)
        write_atomically(f, buffer.getvalue())

    def fs_save(obj: Any, path: str) -> None:
        if not _is_local(path):
            return original_fs_save(obj, path)
        write_atomically(path, serialized(obj))

    torch.save, fs.torch_save = save, fs_save
    try:
        yield
    finally:
        torch.save, fs.torch_save = original_save, original_fs_save


# ---------------------------------------------------------------------- processed files
def _digest_path(path: str | Path) -> Path:
    return Path(f"{path}{DIGEST_SUFFIX}")


def record_digest(path: str | Path, digest: str) -> None:
    """Write ``<path>.sha256`` (``sha256sum`` format) atomically."""
    write_atomically(_digest_path(path), f"{digest}  {Path(path).name}\n".encode())


def write_verified(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` and its ``<path>.sha256`` atomically, the digest first (so a kill between the two
    leaves no file, or the previous file with a digest that no longer matches it)."""
    record_digest(path, hashlib.sha256(payload).hexdigest())
    write_atomically(path, payload)


def digest_problem(path: str | Path) -> str | None:
    """Why the file at ``path`` does not match its recorded digest (``None``: it matches, or none is recorded
    and the file is left to the load and count checks)."""
    recorded = _digest_path(path)
    if not Path(path).is_file():
        return "is missing"
    if not recorded.is_file():
        return None
    expected = recorded.read_text(encoding="utf-8", errors="replace").split()[:1]
    actual = sha256_file(path)
    if expected != [actual]:
        return f"has SHA-256 {actual}, but {recorded.name} records {expected[0] if expected else 'nothing'}"
    return None


def _readable(path: str) -> bool:
    try:
        torch.load(path, weights_only=False)
    except Exception:  # noqa: BLE001 - any failure to read an informational marker means: discard it
        return False
    return True


class IntegrityMixin:
    """Crash-safe processed files for a PyG ``InMemoryDataset`` subclass (put it first among the bases).

    * ``save`` writes the processed file and its ``.sha256`` atomically;
    * ``load`` checks the digest, reads the file and calls :meth:`count_problem`; if any fails it warns
      (:class:`ProcessedFileWarning`, naming the file and why), rebuilds the file with ``process()`` and loads
      the rebuilt file; a readable, correctly counted file without a ``.sha256`` (written before hgattn
      recorded digests, or copied without it) is kept and its digest recorded;
    * ``_process`` discards unreadable PyG marker files (``pre_transform.pt``, ``pre_filter.pt``) and makes
      every write of PyG's processing atomic.
    """

    processed_dir: str

    def count_problem(self) -> str | None:
        """What is wrong with the loaded data's counts (``None``: nothing); datasets override this."""
        return None

    @classmethod
    def save(cls, data_list: Sequence[Any], path: str) -> None:
        """Collate ``data_list`` and write it to ``path`` atomically, with its SHA-256 beside it."""
        data, slices = cls.collate(data_list)  # type: ignore[attr-defined]
        buffer = io.BytesIO()
        torch.save((data.to_dict(), slices, data.__class__), buffer)
        write_verified(path, buffer.getvalue())

    def load(self, path: str, data_cls: type = Data) -> None:
        """Load ``path``; rebuild it from the raw files (with a warning) if it is damaged or miscounted."""
        problem = self._load_problem(path, data_cls)
        if problem is None:
            if not _digest_path(path).is_file():
                record_digest(path, sha256_file(path))
            return
        warnings.warn(f"{type(self).__name__}: the processed file {path} {problem}; rebuilding it from the raw "
                      "files", ProcessedFileWarning, stacklevel=2)
        self._rebuild()
        problem = self._load_problem(path, data_cls)
        if problem is not None:
            raise DatasetFileError(f"{type(self).__name__}: the processed file {path} {problem} even after "
                                   "rebuilding it from the raw files")

    def _load_problem(self, path: str, data_cls: type) -> str | None:
        problem = digest_problem(path)
        if problem is not None:
            return problem
        try:
            super().load(path, data_cls)  # type: ignore[misc]
        except Exception as error:  # noqa: BLE001 - any failure to read the file means: rebuild it
            return f"cannot be read ({type(error).__name__}: {error})"
        problem = self.count_problem()
        return None if problem is None else f"holds {problem}"

    def _rebuild(self) -> None:
        if getattr(self, "has_download", False):
            self._download()  # type: ignore[attr-defined]
        Path(self.processed_dir).mkdir(parents=True, exist_ok=True)
        with atomic_saves():
            self.process()  # type: ignore[attr-defined]

    def _process(self) -> None:
        for marker in PYG_MARKERS:
            path = os.path.join(self.processed_dir, marker)
            if os.path.exists(path) and not _readable(path):
                warnings.warn(f"{type(self).__name__}: discarding the unreadable marker file {path} (PyG writes "
                              "it again when it processes the dataset)", ProcessedFileWarning, stacklevel=2)
                os.unlink(path)
        with atomic_saves():
            super()._process()  # type: ignore[misc]


def processed_folder(root: str, pre_transform: Any) -> str:
    """``<root>/processed_<digest>``: one processed folder per tree builder, named by the SHA-256 of its
    ``repr`` (so datasets built with different ``pre_transform`` s never overwrite or reuse each other)."""
    digest = hashlib.sha256(repr(pre_transform).encode()).hexdigest()[:12]
    return os.path.join(root, f"processed_{digest}")
