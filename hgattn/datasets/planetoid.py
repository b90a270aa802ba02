"""Planetoid citation graphs (Cora, CiteSeer, PubMed) as one GraphHierarchy tree."""
from __future__ import annotations

import os.path as osp
from pathlib import Path
from typing import Callable

from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid
from torch_geometric.io.planetoid import read_file, read_planetoid_data

from .integrity import (DatasetFileError, IntegrityMixin, atomic_copy, expect_count, processed_folder,
                        verify_sha256)
from .manifest import RECORDS, DatasetRecord

__all__ = ["HierarchicalPlanetoid", "read_planetoid_raw"]

RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
#: The raw files each assembled count comes from (named when the count is wrong).
COUNT_SOURCES = {"nodes": ("allx", "tx", "graph"), "edges": ("graph",), "features": ("allx", "tx"),
                 "classes": ("ally", "ty"), "train_mask": ("y",), "val_mask": ("y", "ally"),
                 "test_mask": ("test.index",)}


class HierarchicalPlanetoid(IntegrityMixin, Planetoid):
    r"""PyG's :class:`~torch_geometric.datasets.Planetoid` (public split) with the graph grouped into a tree.

    The raw files are PyG's own (downloaded by PyG where a network exists, or copied once from ``source``, a
    folder holding the ``ind.<name>.*`` files) and are checked before processing (:func:`read_planetoid_raw`).
    The tree builder is ``pre_transform`` (default :class:`~hgattn.transforms.GraphHierarchy`): one
    ``HeteroData`` whose ``node`` type keeps ``x``, ``y`` and the public ``train_mask`` / ``val_mask`` /
    ``test_mask``, with the citation edges as ``('node', 'to', 'node')``; each builder has its own processed
    folder (:func:`~hgattn.datasets.integrity.processed_folder`). The processed file is written atomically and checked on load
    (:class:`~hgattn.datasets.integrity.IntegrityMixin`): counts against the published ones.

    Args:
        root: root folder (the dataset lives in ``<root>/<name>``).
        name: ``'Cora'``, ``'CiteSeer'`` or ``'PubMed'``.
        source: optional folder with the raw files, copied to ``<root>/<name>/raw`` if they are missing.
        branching, pe_dim, seed: passed to the default :class:`~hgattn.transforms.GraphHierarchy`.
        pre_transform: the tree builder (a ``Data`` graph to a ``HeteroData`` tree); default
            ``GraphHierarchy(branching=branching, pe_dim=pe_dim, seed=seed)``.
    """

    def __init__(self, root: str, name: str, source: str | Path | None = None, branching: int = 16,
                 pe_dim: int = 4, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False, pre_transform: Callable | None = None) -> None:
        from ..transforms.graph import GraphHierarchy

        if pre_transform is None:
            pre_transform = GraphHierarchy(branching=branching, pe_dim=pe_dim, seed=seed)
        if source is not None:
            _copy_raw(Path(source), Path(root) / name / "raw", name)
        super().__init__(root, name, split="public", transform=transform, pre_transform=pre_transform,
                         force_reload=force_reload)

    @property
    def processed_dir(self) -> str:
        return processed_folder(osp.join(self.root, self.name), self.pre_transform)

    @property
    def num_classes(self) -> int:
        return int(self._data["node"].y.max()) + 1

    def process(self) -> None:
        data = read_planetoid_raw(self.raw_dir, self.name)
        self.save([self.pre_transform(data)], self.processed_paths[0])

    def count_problem(self) -> str | None:
        record = planetoid_record(self.name)
        if record is None:
            return None
        counts = _counts(self._data["node"], self._data["node", "to", "node"].edge_index)
        wrong = [f"{key} {value} (expected {record.counts[key]})" for key, value in counts.items()
                 if value != record.counts[key]]
        return ", ".join(wrong) or None


def planetoid_record(name: str) -> DatasetRecord | None:
    """The :data:`~hgattn.datasets.manifest.RECORDS` entry of a Planetoid name (any case), if recorded."""
    return next((record for key, record in RECORDS.items() if key.lower() == name.lower()), None)


def read_planetoid_raw(folder: str | Path, name: str) -> Data:
    """PyG's ``read_planetoid_data`` after checking the raw files.

    Files with recorded SHA-256 sums (Cora, CiteSeer) are checked against them; otherwise each file is read
    and its rows checked against the recorded counts. The assembled graph's nodes, edges, features, classes
    and split sizes are checked against the published counts.

    Raises:
        FileNotFoundError: naming a missing raw file.
        DatasetFileError: naming the raw file that is damaged, unreadable or has the wrong number of entries.
    """
    folder, prefix = Path(folder), name.lower()
    record = planetoid_record(name)
    if record is not None and record.sha256:
        verify_sha256(folder, record.sha256, f"Planetoid {name}")
    else:
        for part in RAW_PARTS:
            _check_raw_file(folder, prefix, part, record)
    data = read_planetoid_data(str(folder), name)
    if record is not None:
        for key, value in _counts(data, data.edge_index).items():
            files = ", ".join(f"ind.{prefix}.{part}" for part in COUNT_SOURCES.get(key, ()))
            expect_count(f"{folder} ({files})", value, record.counts[key], key)
    return data


def _check_raw_file(folder: Path, prefix: str, part: str, record: DatasetRecord | None) -> None:
    path = folder / f"ind.{prefix}.{part}"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing Planetoid raw file")
    try:
        content = read_file(str(folder), prefix, part)
    except Exception as error:  # noqa: BLE001 - pickle and text parsers raise many types; name the file
        raise DatasetFileError(f"{path}: cannot be read ({type(error).__name__}: {error}); replace it with the "
                               "original (delete it to download it again)") from error
    if record is not None:
        expect_count(path, len(content), record.counts.get(path.name), "entries")


def _counts(store, edge_index: Tensor) -> dict[str, int]:
    return {"nodes": int(store.num_nodes), "edges": int(edge_index.size(1)), "features": int(store.x.size(1)),
            "classes": int(store.y.max()) + 1 if store.y.numel() else 0,
            **{mask: int(store[mask].sum()) for mask in ("train_mask", "val_mask", "test_mask")}}


def _copy_raw(source: Path, raw_dir: Path, name: str) -> None:
    files = [f"ind.{name.lower()}.{part}" for part in RAW_PARTS]
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"HierarchicalPlanetoid: {source} lacks the raw files {missing}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (raw_dir / f).exists():
            atomic_copy(source / f, raw_dir / f)
