"""Emoji: a multimodal dataset, each emoji one tree over its image patches, name tokens and keyword tokens."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from .splits import stratified_split

__all__ = ["Emoji", "EMOJI_CATEGORIES", "find_emoji_package"]

EMOJI_INSTALL = "npm install emoji-datasource-google@16.0.0"
EMOJI_ENV = "EMOJI_DATASOURCE_GOOGLE"
EMOJI_CATEGORIES: tuple[str, ...] = (
    "Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects", "People & Body",
    "Smileys & Emotion", "Symbols", "Travel & Places")


def find_emoji_package(source: str | Path | None = None) -> Path:
    """The folder of the npm package ``emoji-datasource-google``.

    Looks at ``source``, then ``$EMOJI_DATASOURCE_GOOGLE``, then ``node_modules/emoji-datasource-google`` under
    the working directory, the home directory and the usual global npm prefixes.

    Raises:
        FileNotFoundError: with the install command, if none holds ``emoji.json`` and ``img/google/64``.
    """
    candidates = [Path(source)] if source is not None else [
        *([Path(os.environ[EMOJI_ENV])] if os.environ.get(EMOJI_ENV) else []),
        *(Path(base) / "node_modules" / "emoji-datasource-google"
          for base in (Path.cwd(), Path.home(), Path("/usr/local/lib"), Path("/usr/lib")))]
    for folder in candidates:
        if (folder / "emoji.json").is_file() and (folder / "img" / "google" / "64").is_dir():
            return folder
    raise FileNotFoundError(f"Emoji needs the npm package emoji-datasource-google (looked in "
                            f"{[str(c) for c in candidates]}): run `{EMOJI_INSTALL}` and pass its folder "
                            f"(node_modules/emoji-datasource-google) as source or in ${EMOJI_ENV}")


def read_emoji_image(path: Path) -> torch.Tensor:
    """A 64x64 RGBA PNG as a uint8 tensor ``[4, 64, 64]``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGBA"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Emoji: cannot read the image {path}: {error}") from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class Emoji(InMemoryDataset):
    r"""1,911 emoji from the npm package ``emoji-datasource-google`` (16.0.0), one multimodal tree each.

    Each emoji (Google's 64x64 RGBA PNG, its name and its short names as keywords; ``y`` ``[1]`` = its category
    among the 10 :data:`EMOJI_CATEGORIES`) becomes, through
    :class:`~hgattn.transforms.MultimodalHierarchy`, the tree
    ``item -> {image -> regions -> patches, name -> tokens, keywords -> tokens}``: patches of ``patch_size``
    pixels (flattened RGBA in ``[0, 1]``) in a quadtree, MiniLM WordPiece tokens (``token_id``) for the text
    fields, one-hot key positions on the field roots. Also stored: ``unified`` (code points) and ``subcategory``.
    Items follow the package's ``sort_order``.

    With ``flat=True`` the trees are one-level, ``item -> {patches, tokens}``
    (:class:`~hgattn.transforms.FlattenHierarchy`): HSA on them is flat softmax attention (the FSA baseline).

    ``split_idx``: a seeded class-stratified 80/10/10 split.

    Args:
        root: folder for the processed file.
        source: the package folder; default: :func:`find_emoji_package`.
        patch_size: patch side in pixels (divides 64).
        limit: keep only the first ``limit`` emoji (``None``: all).
        flat: store the one-level trees.
        seed: seed of the split.
    """

    def __init__(self, root: str, source: str | Path | None = None, patch_size: int = 8, limit: int | None = None,
                 flat: bool = False, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"Emoji: limit must be >= 1, got {limit}")
        self.package = find_emoji_package(source)
        self.patch_size, self.limit, self.flat = patch_size, limit, flat
        super().__init__(root, transform, force_reload=force_reload)
        self.load(self.processed_paths[0])
        self.split_idx = stratified_split(self._data.y, seed=seed)

    @property
    def raw_dir(self) -> str:
        return str(self.package)

    @property
    def raw_file_names(self) -> list[str]:
        return ["emoji.json", "img/google/64"]

    @property
    def processed_file_names(self) -> list[str]:
        return [f"emoji_{self.limit or 'all'}_patch{self.patch_size}{'_flat' if self.flat else ''}.pt"]

    def process(self) -> None:
        from ..transforms import FlattenHierarchy, ImageHierarchy, MultimodalHierarchy, TextHierarchy

        text = TextHierarchy(levels=())
        builder = MultimodalHierarchy({"image": ImageHierarchy(self.patch_size), "name": text, "keywords": text})
        trees = [builder(self._item(record)) for record in read_emoji_records(self.package)[:self.limit]]
        if self.flat:
            trees = [FlattenHierarchy()(tree) for tree in trees]
        self.save(trees, self.processed_paths[0])

    def _item(self, record: dict[str, Any]) -> Data:
        return Data(image=read_emoji_image(self.package / "img" / "google" / "64" / record["image"]),
                    name=record["name"].lower(),
                    keywords=", ".join(name.replace("_", " ") for name in record["short_names"]),
                    y=torch.tensor([EMOJI_CATEGORIES.index(record["category"])]),
                    unified=record["unified"], subcategory=record["subcategory"])

    @property
    def num_classes(self) -> int:
        return len(EMOJI_CATEGORIES)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)})"


def read_emoji_records(package: Path) -> list[dict[str, Any]]:
    """The package's emoji with a Google image, in ``sort_order``.

    Raises:
        ValueError: if ``emoji.json`` is unreadable or names an unknown category.
    """
    try:
        records = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Emoji: cannot read {package / 'emoji.json'}: {error}") from error
    unknown = {r.get("category") for r in records} - set(EMOJI_CATEGORIES)
    if unknown:
        raise ValueError(f"Emoji: {package / 'emoji.json'} has unknown categories {sorted(map(str, unknown))}")
    return sorted((r for r in records if r.get("has_img_google")), key=lambda r: r["sort_order"])
