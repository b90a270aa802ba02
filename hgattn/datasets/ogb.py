"""OGB datasets as trees: ``ogbg-mol*`` molecules (MoleculeHierarchy), ``ogbn-*`` graphs (GraphHierarchy).

ogb 1.3.6 needs two fixes to run unattended on torch >= 2.6, both scoped to the construction of its datasets
by :func:`ogb_compat`: its ``torch.load`` of processed files needs ``weights_only=False`` (they pickle PyG
classes), and it asks on stdin (``input()``) before re-downloading a folder without its
``RELEASE_v<version>.txt`` marker or before a large download.
"""
from __future__ import annotations

import builtins
import importlib
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch_geometric.data import InMemoryDataset
from torch_geometric.utils import index_to_mask

__all__ = ["OGBMoleculeDataset", "OGBNodeDataset", "ogb_compat", "copy_ogb_folder"]

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
    * ogb's ``torch.from_numpy`` warning about read-only arrays is silenced.
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        torch.load, builtins.input = original_load, original_input


def copy_ogb_folder(source: str | Path, root: str | Path, name: str) -> Path:
    """Copy an OGB dataset folder (``raw/``, ``split/``, ``RELEASE_v*.txt``) to ``root/<name with _>``, once.

    Raises:
        FileNotFoundError: if ``source`` has no ``raw`` folder.
    """
    source, target = Path(source), Path(root) / name.replace("-", "_")
    if not (source / "raw").is_dir():
        raise FileNotFoundError(f"{source} is not an OGB dataset folder (no raw/ inside)")
    if not target.exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("processed"))
    return target


def _ogb(module: str) -> Any:
    try:
        return importlib.import_module(f"ogb.{module}")
    except ImportError as error:
        raise ImportError(f"OGB datasets need ogb: {OGB_INSTALL}") from error


class OGBMoleculeDataset(InMemoryDataset):
    r"""An OGB molecule dataset (``ogbg-mol*``) with each graph as a MoleculeHierarchy tree.

    The molecules come from ``ogb.graphproppred.PygGraphPropPredDataset(name, root)`` (OGB's files and scaffold
    split; downloaded by ogb where a network exists, or copied once from ``source``, a folder in OGB's layout).
    Each becomes ``molecule -> cliques -> atoms`` (:class:`~hgattn.transforms.MoleculeHierarchy`), with OGB's
    ``x``, ``edge_attr`` and ``y`` ``[1, num_tasks]``.

    ``split_idx``: OGB's split (``train``, ``valid``, ``test``), restricted to the kept graphs.

    Args:
        name: e.g. ``'ogbg-molhiv'``.
        root: folder of the OGB dataset; the trees are stored in ``<root>/<name>/hgattn``.
        source: optional OGB-layout folder to copy into ``root`` when the dataset is not there yet.
        limit: keep only the first ``limit`` molecules (``None``: all).
        pos_dim: Laplacian eigenvectors per position feature.
    """

    def __init__(self, name: str, root: str, source: str | Path | None = None, limit: int | None = None,
                 pos_dim: int = 4, transform: Callable | None = None, force_reload: bool = False) -> None:
        if not name.startswith("ogbg-mol"):
            raise ValueError(f"OGBMoleculeDataset: {name!r} is not an ogbg-mol* dataset")
        if limit is not None and limit < 1:
            raise ValueError(f"OGBMoleculeDataset: limit must be >= 1, got {limit}")
        self.name, self.limit, self.pos_dim = name, limit, pos_dim
        if source is not None:
            copy_ogb_folder(source, root, name)
        with ogb_compat():
            self.ogb = _ogb("graphproppred").PygGraphPropPredDataset(name=name, root=root)
        super().__init__(str(Path(root) / name.replace("-", "_") / "hgattn"), transform, force_reload=force_reload)
        self.load(self.processed_paths[0])
        with ogb_compat():
            split = self.ogb.get_idx_split()
        self.split_idx = {key: index[index < len(self)] for key, index in split.items()}

    @property
    def processed_file_names(self) -> list[str]:
        return [f"molecules_{self.limit or 'all'}_pos{self.pos_dim}.pt"]

    def process(self) -> None:
        from ..transforms.molecule import MoleculeHierarchy

        builder = MoleculeHierarchy(pos_dim=self.pos_dim)
        count = len(self.ogb) if self.limit is None else min(self.limit, len(self.ogb))
        trees = []
        for start in range(0, count, MOLECULE_CHUNK):
            graphs = [self.ogb[i] for i in range(start, min(start + MOLECULE_CHUNK, count))]
            trees.extend(builder.build_many(graphs))
        self.save(trees, self.processed_paths[0])

    @property
    def num_tasks(self) -> int:
        return int(self.ogb.num_tasks)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name}, {len(self)})"


class OGBNodeDataset(InMemoryDataset):
    r"""An OGB node-property dataset (``ogbn-arxiv``, ``ogbn-products``, ...) as one GraphHierarchy tree.

    The graph comes from ``ogb.nodeproppred.PygNodePropPredDataset(name, root)`` (downloaded by ogb where a
    network exists, or copied once from ``source``); :class:`~hgattn.transforms.GraphHierarchy` groups its
    nodes into a tree. The ``node`` type keeps OGB's features, ``y`` ``[n]`` and boolean ``train_mask``,
    ``val_mask``, ``test_mask`` from OGB's split.

    Args:
        name: e.g. ``'ogbn-arxiv'``.
        root: folder of the OGB dataset; the tree is stored in ``<root>/<name>/hgattn``.
        source: optional OGB-layout folder to copy into ``root`` when the dataset is not there yet.
        branching, pe_dim, seed: passed to :class:`~hgattn.transforms.GraphHierarchy`.
    """

    def __init__(self, name: str, root: str, source: str | Path | None = None, branching: int = 16,
                 pe_dim: int = 4, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        if not name.startswith("ogbn-"):
            raise ValueError(f"OGBNodeDataset: {name!r} is not an ogbn-* dataset")
        self.name, self.branching, self.pe_dim, self.seed = name, branching, pe_dim, seed
        if source is not None:
            copy_ogb_folder(source, root, name)
        self.ogb_root = root
        super().__init__(str(Path(root) / name.replace("-", "_") / "hgattn"), transform, force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def processed_file_names(self) -> list[str]:
        return [f"tree_b{self.branching}_pe{self.pe_dim}_seed{self.seed}.pt"]

    def process(self) -> None:
        from ..transforms.graph import GraphHierarchy

        with ogb_compat():
            dataset = _ogb("nodeproppred").PygNodePropPredDataset(name=self.name, root=self.ogb_root)
            split = dataset.get_idx_split()
        data = dataset[0]
        data.y = data.y.view(-1)
        for mask, key in (("train_mask", "train"), ("val_mask", "valid"), ("test_mask", "test")):
            data[mask] = index_to_mask(split[key], data.num_nodes)
        tree = GraphHierarchy(branching=self.branching, pe_dim=self.pe_dim, seed=self.seed)(data)
        self.save([tree], self.processed_paths[0])

    @property
    def num_classes(self) -> int:
        return int(self._data["node"].y.max()) + 1

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name})"

