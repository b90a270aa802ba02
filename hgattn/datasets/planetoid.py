"""Planetoid citation graphs (Cora, CiteSeer, PubMed) as one GraphHierarchy tree."""
from __future__ import annotations

import os.path as osp
import shutil
from pathlib import Path
from typing import Callable

from torch_geometric.datasets import Planetoid

__all__ = ["HierarchicalPlanetoid"]


class HierarchicalPlanetoid(Planetoid):
    r"""PyG's :class:`~torch_geometric.datasets.Planetoid` (public split) with the graph grouped into a tree.

    The raw files are PyG's own (downloaded by PyG where a network exists, or copied once from ``source``, a
    folder holding the ``ind.<name>.*`` files). :class:`~hgattn.transforms.GraphHierarchy` runs as the
    pre-transform: one ``HeteroData`` whose ``node`` type keeps ``x``, ``y`` and the public
    ``train_mask`` / ``val_mask`` / ``test_mask``, with the citation edges as ``('node', 'to', 'node')``.

    Args:
        root: root folder (the dataset lives in ``<root>/<name>``).
        name: ``'Cora'``, ``'CiteSeer'`` or ``'PubMed'``.
        source: optional folder with the raw files, copied to ``<root>/<name>/raw`` if they are missing.
        branching, pe_dim, seed: passed to :class:`~hgattn.transforms.GraphHierarchy`.
    """

    def __init__(self, root: str, name: str, source: str | Path | None = None, branching: int = 16,
                 pe_dim: int = 4, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        from ..transforms.graph import GraphHierarchy

        self.branching, self.pe_dim, self.seed = branching, pe_dim, seed
        if source is not None:
            _copy_raw(Path(source), Path(root) / name / "raw", name)
        super().__init__(root, name, split="public", transform=transform,
                         pre_transform=GraphHierarchy(branching=branching, pe_dim=pe_dim, seed=seed),
                         force_reload=force_reload)

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, self.name, f"processed_tree_b{self.branching}_pe{self.pe_dim}_seed{self.seed}")

    @property
    def num_classes(self) -> int:
        return int(self._data["node"].y.max()) + 1


def _copy_raw(source: Path, raw_dir: Path, name: str) -> None:
    files = [f"ind.{name.lower()}.{part}" for part in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")]
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"HierarchicalPlanetoid: {source} lacks the raw files {missing}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (raw_dir / f).exists():
            shutil.copyfile(source / f, raw_dir / f)
