"""OGB datasets as trees: ``ogbg-mol*`` molecules (MoleculeHierarchy), ``ogbn-*`` graphs (GraphHierarchy).

ogb 1.3.6 needs two fixes to run unattended on torch >= 2.6, both scoped to the construction of its datasets
by :func:`ogb_compat`: its ``torch.load`` of processed files needs ``weights_only=False`` (they pickle PyG
classes), and it asks on stdin (``input()``) before re-downloading a folder without its
``RELEASE_v<version>.txt`` marker or before a large download. :func:`ogb_compat` also makes ogb's writes of its
processed files atomic.

Before ogb processes its raw files they are checked (:func:`verify_ogb_raw`): recorded SHA-256 sums, complete
gzip streams, rows per graph / node / edge consistent with ``num-node-list`` and ``num-edge-list`` and with the
published counts; split files likewise before they are read. An ogb processed file that cannot be read or holds
the wrong number of graphs or nodes is rebuilt with a warning (:func:`open_ogb_dataset`).
"""
from __future__ import annotations

import builtins
import gzip
import importlib
import shutil
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch_geometric.data import InMemoryDataset
from torch_geometric.utils import index_to_mask

from .integrity import (DatasetFileError, IntegrityMixin, ProcessedFileWarning, atomic_copytree, atomic_saves,
                        count_csv_rows, expect_count, processed_folder, verify_sha256)
from .manifest import RECORDS, DatasetRecord

__all__ = ["OGBMoleculeDataset", "OGBNodeDataset", "ogb_compat", "copy_ogb_folder", "open_ogb_dataset",
           "verify_ogb_raw", "verify_ogb_split"]

OGB_INSTALL = "pip install ogb>=1.3.6"
#: Molecules per batched MoleculeHierarchy call while processing.
MOLECULE_CHUNK = 2048


@contextmanager
def ogb_compat() -> Iterator[None]:
    """Run ogb's dataset code unattended on torch >= 2.6 (restores everything on exit).

    * ``torch.load`` defaults to ``weights_only=False`` (ogb's processed files pickle PyG data classes; only
      load files you trust, as ogb itself does on torch < 2.6);
    * ``input()`` answers ``y`` to a download confirmation and raises ``ValueError`` for any other question
      (ogb asks whether to delete a dataset folder that lacks its ``RELEASE_v<version>.txt`` marker);
    * ogb's ``torch.from_numpy`` warning about read-only arrays is silenced;
    * ``torch.save`` to a path and PyG's ``fs.torch_save`` write atomically
      (:func:`~hgattn.datasets.integrity.atomic_saves`).
    """
    original_load, original_input = torch.load, builtins.input

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    def answer(prompt: str = "") -> str:
        if "download" in prompt.lower() or "proceed" in prompt.lower():
            return "y"
        raise ValueError(f"ogb asked {prompt.strip()!r}: the dataset folder exists without its "
                         "RELEASE_v<version>.txt marker (an old or partial copy); delete the folder, or add the "
                         "marker of the files' release")

    torch.load, builtins.input = load, answer
    try:
        with warnings.catch_warnings(), atomic_saves():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        torch.load, builtins.input = original_load, original_input


def copy_ogb_folder(source: str | Path, root: str | Path, name: str) -> Path:
    """Copy an OGB dataset folder (``raw/``, ``split/``, ``RELEASE_v*.txt``) to ``root/<name with _>``, once
    (atomically: the copy is made beside the target and renamed).

    Raises:
        FileNotFoundError: if ``source`` has no ``raw`` folder.
    """
    source, target = Path(source), Path(root) / name.replace("-", "_")
    if not (source / "raw").is_dir():
        raise FileNotFoundError(f"{source} is not an OGB dataset folder (no raw/ inside)")
    if not target.exists():
        atomic_copytree(source, target, ignore=shutil.ignore_patterns("processed"))
    return target


def ogb_folder(root: str | Path, name: str) -> Path:
    """The folder ogb uses for ``name`` under ``root`` (``<name with _>``, or ``<...>_pyg`` where that exists)."""
    folder = Path(root) / name.replace("-", "_")
    return folder.with_name(folder.name + "_pyg") if folder.with_name(folder.name + "_pyg").exists() else folder


#: Raw files with one row per graph, per node and per edge (ogb's csv layout; others are only read through).
_PER_GRAPH = ("num-node-list.csv.gz", "num-edge-list.csv.gz", "graph-label.csv.gz")
_NODE_PREFIXES, _EDGE_PREFIXES = ("node-", "node_"), ("edge-", "edge_", "edge.")


def _csv_ints(path: Path) -> list[int]:
    try:
        with gzip.open(path, "rt") as file:
            return [int(line) for line in file if line.strip()]
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise DatasetFileError(f"{path}: cannot be read as a gzip csv of integers ({type(error).__name__}: "
                               f"{error}); replace it with the original (delete it to download it again)") from error


def verify_ogb_raw(folder: str | Path, name: str) -> None:
    """Check the raw files of an OGB dataset folder before ogb processes them.

    Recorded SHA-256 sums first; then every ``raw/*.csv.gz`` is read through (complete gzip, CRC), and, where
    ``num-node-list`` / ``num-edge-list`` exist, per-graph files must have one row per graph (the published
    number of graphs where recorded), per-node files one per node, per-edge files one per edge (published
    nodes and edges of ``ogbn-*`` where recorded).

    Raises:
        DatasetFileError: naming the first file that is damaged or has the wrong number of rows.
    """
    raw, record = Path(folder) / "raw", RECORDS.get(name)
    if record is not None:
        verify_sha256(folder, record.sha256, f"OGB {name}")
    if not (raw / "num-node-list.csv.gz").is_file():
        for path in sorted(raw.glob("*.csv.gz")):
            count_csv_rows(path)
        return
    counts = record.counts if record is not None else {}
    nodes_per_graph = _csv_ints(raw / "num-node-list.csv.gz")
    edges_per_graph = _csv_ints(raw / "num-edge-list.csv.gz") if (raw / "num-edge-list.csv.gz").is_file() else []
    graphs = len(nodes_per_graph)
    expect_count(raw / "num-node-list.csv.gz", graphs, counts.get("graphs"), "rows (one per graph)")
    expect_count(raw / "num-node-list.csv.gz", sum(nodes_per_graph), counts.get("nodes"), "nodes in total")
    expect_count(raw / "num-edge-list.csv.gz", sum(edges_per_graph), counts.get("edges"), "edges in total")
    for path in sorted(raw.glob("*.csv.gz")):
        rows = len(edges_per_graph) if path.name == "num-edge-list.csv.gz" else count_csv_rows(path)
        if path.name in _PER_GRAPH:
            expect_count(path, rows, graphs, "rows (one per graph)")
        elif path.name.startswith(_NODE_PREFIXES):
            expect_count(path, rows, sum(nodes_per_graph), "rows (one per node, from num-node-list.csv.gz)")
        elif path.name.startswith(_EDGE_PREFIXES):
            expect_count(path, rows, sum(edges_per_graph), "rows (one per edge, from num-edge-list.csv.gz)")


def verify_ogb_split(folder: str | Path, split: str, name: str) -> None:
    """Check ``split/<split>/{train,valid,test}.csv.gz`` (complete gzip; recorded sizes where recorded).

    Raises:
        DatasetFileError: naming the split file that is damaged or has the wrong number of rows.
    """
    record = RECORDS.get(name)
    for part in ("train", "valid", "test"):
        path = Path(folder) / "split" / split / f"{part}.csv.gz"
        if path.is_file():
            expected = record.counts.get(part) if record is not None else None
            expect_count(path, count_csv_rows(path), expected, "rows (indices)")


def _ogb_count_problem(dataset: Any, record: DatasetRecord | None) -> str | None:
    if record is None:
        return None
    if "graphs" in record.counts and len(dataset) != record.counts["graphs"]:
        return f"holds {len(dataset)} graphs (expected {record.counts['graphs']})"
    if "nodes" in record.counts and int(dataset[0].num_nodes) != record.counts["nodes"]:
        return f"holds {int(dataset[0].num_nodes)} nodes (expected {record.counts['nodes']})"
    return None


def open_ogb_dataset(factory: Callable[[], Any], folder: str | Path, name: str) -> Any:
    """``factory()`` (an ogb dataset constructor) under :func:`ogb_compat`, with checked files.

    Raw files are checked (:func:`verify_ogb_raw`) before ogb processes them, or, when ogb downloads them,
    right after (its processed folder is removed if they fail). If ogb's processed file existed but cannot be
    read or holds the wrong count, it warns (:class:`ProcessedFileWarning`), deletes ogb's ``processed``
    folder and builds it again from the checked raw files.
    """
    folder = Path(folder)
    processed = folder / "processed"
    existed = (processed / "geometric_data_processed.pt").is_file()
    checked = not existed and any(folder.glob("RELEASE_v*.txt")) and any((folder / "raw").glob("*"))
    if checked:
        verify_ogb_raw(folder, name)
    try:
        with ogb_compat():
            dataset = factory()
        problem = _ogb_count_problem(dataset, RECORDS.get(name))
    except Exception as error:  # noqa: BLE001 - ogb's load fails in many ways; rebuild a file that existed
        if not existed:
            raise
        problem = f"cannot be read ({type(error).__name__}: {error})"
    if not existed and not checked:
        _verify_downloaded(folder, name)
    if problem is None:
        return dataset
    if not existed:
        raise DatasetFileError(f"ogb's processed {name} in {processed} {problem}, built from the checked raw files")
    warnings.warn(f"ogb's processed file {processed / 'geometric_data_processed.pt'} {problem}; rebuilding it "
                  "from the raw files", ProcessedFileWarning, stacklevel=2)
    shutil.rmtree(processed)
    return open_ogb_dataset(factory, folder, name)


def _verify_downloaded(folder: Path, name: str) -> None:
    try:
        verify_ogb_raw(folder, name)
    except (DatasetFileError, FileNotFoundError):
        shutil.rmtree(folder / "processed", ignore_errors=True)
        raise


def _ogb(module: str) -> Any:
    try:
        return importlib.import_module(f"ogb.{module}")
    except ImportError as error:
        raise ImportError(f"OGB datasets need ogb: {OGB_INSTALL}") from error


class OGBMoleculeDataset(IntegrityMixin, InMemoryDataset):
    r"""An OGB molecule dataset (``ogbg-mol*``) with each graph as a MoleculeHierarchy tree.

    The molecules come from ``ogb.graphproppred.PygGraphPropPredDataset(name, root)`` (OGB's files and scaffold
    split; downloaded by ogb where a network exists, or copied once from ``source``, a folder in OGB's layout).
    Each becomes a tree by the builder ``pre_transform``, by default ``molecule -> cliques -> atoms``
    (:class:`~hgattn.transforms.MoleculeHierarchy`), with OGB's ``x``, ``edge_attr`` and ``y``
    ``[1, num_tasks]``; one processed folder per builder.

    ``split_idx``: OGB's split (``train``, ``valid``, ``test``), restricted to the kept graphs.

    Raw and split files are checked before they are read (:func:`verify_ogb_raw`, :func:`verify_ogb_split`:
    SHA-256 sums and the graph counts OGB publishes); processed files are written atomically and rebuilt with
    a warning when damaged (:class:`~hgattn.datasets.integrity.IntegrityMixin`, :func:`open_ogb_dataset`).

    Args:
        name: e.g. ``'ogbg-molhiv'``.
        root: folder of the OGB dataset; the trees are stored in ``<root>/<name>/hgattn``.
        source: optional OGB-layout folder to copy into ``root`` when the dataset is not there yet.
        limit: keep only the first ``limit`` molecules (``None``: all).
        pos_dim: Laplacian eigenvectors per position feature of the default builder.
        pre_transform: the tree builder (a molecule ``Data`` to a ``HeteroData`` tree with ``atom`` leaves; its
            ``build_many(graphs)`` is used when it has one); default ``MoleculeHierarchy(pos_dim=pos_dim)``.
    """

    def __init__(self, name: str, root: str, source: str | Path | None = None, limit: int | None = None,
                 pos_dim: int = 4, transform: Callable | None = None, force_reload: bool = False,
                 pre_transform: Callable | None = None) -> None:
        from ..transforms.molecule import MoleculeHierarchy

        if not name.startswith("ogbg-mol"):
            raise ValueError(f"OGBMoleculeDataset: {name!r} is not an ogbg-mol* dataset")
        if limit is not None and limit < 1:
            raise ValueError(f"OGBMoleculeDataset: limit must be >= 1, got {limit}")
        self.name, self.limit = name, limit
        if pre_transform is None:
            pre_transform = MoleculeHierarchy(pos_dim=pos_dim)
        if source is not None:
            copy_ogb_folder(source, root, name)
        module = _ogb("graphproppred")
        folder = ogb_folder(root, name)
        self.ogb = open_ogb_dataset(lambda: module.PygGraphPropPredDataset(name=name, root=root), folder, name)
        super().__init__(str(Path(root) / name.replace("-", "_") / "hgattn"), transform, pre_transform,
                         force_reload=force_reload)
        self.load(self.processed_paths[0])
        verify_ogb_split(folder, self.ogb.meta_info["split"], name)
        with ogb_compat():
            split = self.ogb.get_idx_split()
        self.split_idx = {key: index[index < len(self)] for key, index in split.items()}

    @property
    def processed_dir(self) -> str:
        return processed_folder(self.root, self.pre_transform)

    @property
    def processed_file_names(self) -> list[str]:
        return [f"molecules_{self.limit or 'all'}.pt"]

    def process(self) -> None:
        builder = self.pre_transform
        build_many = getattr(builder, "build_many", None) or (lambda graphs: [builder(graph) for graph in graphs])
        count = len(self.ogb) if self.limit is None else min(self.limit, len(self.ogb))
        trees = []
        for start in range(0, count, MOLECULE_CHUNK):
            trees.extend(build_many([self.ogb[i] for i in range(start, min(start + MOLECULE_CHUNK, count))]))
        self.save(trees, self.processed_paths[0])

    @property
    def pos_dim(self) -> int:
        """Channels of the atoms' ``pos`` (0 when the trees have none)."""
        atoms = self._data["atom"]
        return int(atoms.pos.size(-1)) if "pos" in atoms else 0

    def count_problem(self) -> str | None:
        expected = len(self.ogb) if self.limit is None else min(self.limit, len(self.ogb))
        return None if len(self) == expected else f"{len(self)} molecules (expected {expected})"

    @property
    def num_tasks(self) -> int:
        return int(self.ogb.num_tasks)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name}, {len(self)})"


class OGBNodeDataset(IntegrityMixin, InMemoryDataset):
    r"""An OGB node-property dataset (``ogbn-arxiv``, ``ogbn-products``, ...) as one GraphHierarchy tree.

    The graph comes from ``ogb.nodeproppred.PygNodePropPredDataset(name, root)`` (downloaded by ogb where a
    network exists, or copied once from ``source``); the tree builder ``pre_transform`` (default
    :class:`~hgattn.transforms.GraphHierarchy`) groups its nodes into a tree, one processed folder per
    builder. The ``node`` type keeps OGB's features, ``y`` ``[n]`` and boolean ``train_mask``,
    ``val_mask``, ``test_mask`` from OGB's split. Raw and split files are checked as for
    :class:`OGBMoleculeDataset` (published node and edge counts of ``ogbn-arxiv``, ``-products``,
    ``-proteins``); the processed file is written atomically and rebuilt with a warning when damaged.

    Args:
        name: e.g. ``'ogbn-arxiv'``.
        root: folder of the OGB dataset; the tree is stored in ``<root>/<name>/hgattn``.
        source: optional OGB-layout folder to copy into ``root`` when the dataset is not there yet.
        branching, pe_dim, seed: passed to the default :class:`~hgattn.transforms.GraphHierarchy`.
        pre_transform: the tree builder (a ``Data`` graph to a ``HeteroData`` tree); default
            ``GraphHierarchy(branching=branching, pe_dim=pe_dim, seed=seed)``.
    """

    def __init__(self, name: str, root: str, source: str | Path | None = None, branching: int = 16,
                 pe_dim: int = 4, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False, pre_transform: Callable | None = None) -> None:
        from ..transforms.graph import GraphHierarchy

        if not name.startswith("ogbn-"):
            raise ValueError(f"OGBNodeDataset: {name!r} is not an ogbn-* dataset")
        if pre_transform is None:
            pre_transform = GraphHierarchy(branching=branching, pe_dim=pe_dim, seed=seed)
        self.name = name
        if source is not None:
            copy_ogb_folder(source, root, name)
        self.ogb_root = root
        super().__init__(str(Path(root) / name.replace("-", "_") / "hgattn"), transform, pre_transform,
                         force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def processed_dir(self) -> str:
        return processed_folder(self.root, self.pre_transform)

    @property
    def processed_file_names(self) -> list[str]:
        return ["tree.pt"]

    def process(self) -> None:
        module, folder = _ogb("nodeproppred"), ogb_folder(self.ogb_root, self.name)
        dataset = open_ogb_dataset(lambda: module.PygNodePropPredDataset(name=self.name, root=self.ogb_root),
                                   folder, self.name)
        verify_ogb_split(folder, dataset.meta_info["split"], self.name)
        with ogb_compat():
            split = dataset.get_idx_split()
        data = dataset[0]
        data.y = data.y.view(-1)
        for mask, key in (("train_mask", "train"), ("val_mask", "valid"), ("test_mask", "test")):
            data[mask] = index_to_mask(split[key], data.num_nodes)
        self.save([self.pre_transform(data)], self.processed_paths[0])

    def count_problem(self) -> str | None:
        record = RECORDS.get(self.name)
        nodes, expected = int(self._data["node"].num_nodes), record.counts.get("nodes") if record else None
        return None if expected is None or nodes == expected else f"{nodes} nodes (expected {expected})"

    @property
    def num_classes(self) -> int:
        return int(self._data["node"].y.max()) + 1

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name})"

