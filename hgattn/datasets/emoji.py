"""Emoji: a multimodal dataset, each emoji one tree over its image patches, name tokens and keyword tokens."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.transforms import BaseTransform, Compose

from .integrity import IntegrityMixin, expect_count, processed_folder, verify_sha256
from .manifest import RECORDS
from .splits import stratified_split

__all__ = ["Emoji", "EMOJI_CATEGORIES", "emoji_tree", "find_emoji_package"]

EMOJI_INSTALL = "npm install emoji-datasource-google@16.0.0"
EMOJI_ENV = "EMOJI_DATASOURCE_GOOGLE"
EMOJI_CATEGORIES: tuple[str, ...] = (
    "Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects", "People & Body",
    "Smileys & Emotion", "Symbols", "Travel & Places")


def emoji_tree(patch_size: int = 8) -> BaseTransform:
    """The default tree builder of :class:`Emoji`: ``item -> {image -> regions -> patches, name -> tokens,
    keywords -> tokens}`` (:class:`~hgattn.transforms.MultimodalHierarchy` of an
    :class:`~hgattn.transforms.ImageHierarchy` with ``patch_size`` and one-level
    :class:`~hgattn.transforms.TextHierarchy` s)."""
    from ..transforms import ImageHierarchy, MultimodalHierarchy, TextHierarchy

    text = TextHierarchy(levels=())
    return MultimodalHierarchy({"image": ImageHierarchy(patch_size), "name": text, "keywords": text})


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


class Emoji(IntegrityMixin, InMemoryDataset):
    r"""1,911 emoji from the npm package ``emoji-datasource-google`` (16.0.0), one multimodal tree each.

    Each emoji (Google's 64x64 RGBA PNG, its name and its short names as keywords; ``y`` ``[1]`` = its category
    among the 10 :data:`EMOJI_CATEGORIES`) becomes, through
    :class:`~hgattn.transforms.MultimodalHierarchy`, the tree
    ``item -> {image -> regions -> patches, name -> tokens, keywords -> tokens}``: patches of ``patch_size``
    pixels (flattened RGBA in ``[0, 1]``) in a quadtree, MiniLM WordPiece tokens (``token_id``) for the text
    fields, one-hot key positions on the field roots. Also stored: ``unified`` (code points) and ``subcategory``.
    Items follow the package's ``sort_order``.

    The tree builder is ``pre_transform`` (default :func:`emoji_tree`); with
    ``Compose([emoji_tree(), FlattenHierarchy()])`` the trees are one-level, ``item -> {patches, tokens}``:
    HSA on them is flat softmax attention (the FSA baseline). Each ``pre_transform`` has its own processed
    folder (:func:`~hgattn.datasets.integrity.processed_folder`).

    ``split_idx``: a seeded class-stratified 80/10/10 split.

    ``emoji.json`` is checked against its recorded SHA-256 and counts (:func:`read_emoji_records`); the
    processed file is written atomically and rebuilt with a warning when it is damaged or miscounted
    (:class:`~hgattn.datasets.integrity.IntegrityMixin`).

    Args:
        root: folder for the processed file.
        source: the package folder; default: :func:`find_emoji_package`.
        patch_size: patch side in pixels (divides 64) of the default ``pre_transform``.
        limit: keep only the first ``limit`` emoji (``None``: all).
        pre_transform: the tree builder of each item (``Data`` with ``image`` ``[4, 64, 64]``, ``name``,
            ``keywords``, ``y``, ``unified``, ``subcategory``); default ``emoji_tree(patch_size)``.
        seed: seed of the split.
        flat: deprecated, use ``pre_transform=Compose([emoji_tree(), FlattenHierarchy()])``.
    """

    def __init__(self, root: str, source: str | Path | None = None, patch_size: int = 8, limit: int | None = None,
                 pre_transform: Callable | None = None, seed: int = 0, transform: Callable | None = None,
                 force_reload: bool = False, flat: bool | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"Emoji: limit must be >= 1, got {limit}")
        if pre_transform is None:
            pre_transform = emoji_tree(patch_size)
        if flat is not None:
            warnings.warn("Emoji(flat=...) is deprecated: pass "
                          "pre_transform=Compose([emoji_tree(), FlattenHierarchy()])", DeprecationWarning,
                          stacklevel=2)
            if flat:
                from ..transforms import FlattenHierarchy

                pre_transform = Compose([pre_transform, FlattenHierarchy()])
        self.package = find_emoji_package(source)
        self.limit = limit
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0])
        self.split_idx = stratified_split(self._data.y, seed=seed)

    @property
    def raw_dir(self) -> str:
        return str(self.package)

    @property
    def raw_file_names(self) -> list[str]:
        return ["emoji.json", "img/google/64"]

    @property
    def processed_dir(self) -> str:
        return processed_folder(self.root, self.pre_transform)

    @property
    def processed_file_names(self) -> list[str]:
        return [f"emoji_{self.limit or 'all'}.pt"]

    def process(self) -> None:
        items = [self._item(record) for record in read_emoji_records(self.package)[:self.limit]]
        self.save([self.pre_transform(item) for item in items], self.processed_paths[0])

    def count_problem(self) -> str | None:
        counts = RECORDS["Emoji"].counts
        if self.limit is not None:
            expected = min(self.limit, counts["items"])
            return None if len(self) == expected else f"{len(self)} emoji (expected {expected})"
        expected = [counts[category] for category in EMOJI_CATEGORIES]
        actual = torch.bincount(self._data.y, minlength=len(EMOJI_CATEGORIES)).tolist()
        return None if actual == expected else f"emoji per category {actual} (expected {expected})"

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

    ``emoji.json`` must have the SHA-256 recorded for 16.0.0 and its 1,911 emoji with an image per category.

    Raises:
        DatasetFileError: if ``emoji.json`` is not 16.0.0's (damaged or another version) or miscounted.
        ValueError: if ``emoji.json`` is unreadable or names an unknown category.
    """
    path, record = package / "emoji.json", RECORDS["Emoji"]
    verify_sha256(package, record.sha256, f"emoji-datasource-google 16.0.0 (`{EMOJI_INSTALL}`)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Emoji: cannot read {path}: {error}") from error
    unknown = {r.get("category") for r in records} - set(EMOJI_CATEGORIES)
    if unknown:
        raise ValueError(f"Emoji: {path} has unknown categories {sorted(map(str, unknown))}")
    records = sorted((r for r in records if r.get("has_img_google")), key=lambda r: r["sort_order"])
    expect_count(path, len(records), record.counts["items"], "emoji with a Google image")
    for category in EMOJI_CATEGORIES:
        expect_count(path, sum(r["category"] == category for r in records), record.counts[category],
                     f"{category!r} emoji with a Google image")
    return records
