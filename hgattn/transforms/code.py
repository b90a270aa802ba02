"""Python functions as trees, the task of ogbg-code2 (method-name prediction from the AST).

Two steps, the second shared by every source of code graphs:

1. :func:`function_graph` walks the abstract syntax tree of one function as OGB's code2 conversion does
   (``examples/graphproppred/code2/py2graph.py``): one node per AST node in depth-first pre-order, its
   type (the class name, e.g. ``Name``), its attribute (an identifier or literal: the first of ``name``,
   ``arg``, a constant's value, ``id``, ``attr`` that is not ``None``), its depth, and AST edges parent ->
   child. The method name is masked (:data:`MASK_TOKEN`). :func:`ogb_code_graph` turns such a graph into
   OGB's code2 PyG layout (``x`` ``[n, 2]`` type and attribute ids, ``node_is_attributed``,
   ``node_dfs_order``, ``node_depth``, ``edge_index``, ``y`` the list of sub-tokens).
2. :class:`CodeHierarchy` turns a graph in that layout (ours, or ogbg-code2's through
   ``ogb.graphproppred.PygGraphPropPredDataset``) into a HeteroData tree: every AST node is a ``token`` leaf,
   every AST node with children also an ``ast`` inner node whose family is its own token followed by its
   children.
"""
from __future__ import annotations

import ast
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from ..encodings import sinusoidal

__all__ = ["MASK_TOKEN", "NONE_TOKEN", "UNK_TOKEN", "EOS_TOKEN", "ASTGraph", "CodeHierarchy",
           "function_graph", "iter_functions", "split_subtokens", "ogb_code_graph", "target_vocabulary",
           "encode_subtokens", "decode_subtokens", "next_token_edges"]

#: Attribute of the masked method name (OGB's ``MASK_TOKEN``).
MASK_TOKEN = "_mask_"
#: Attribute of a node without one, unknown attributes and types, and the end of a target (OGB's names).
NONE_TOKEN, UNK_TOKEN, EOS_TOKEN = "__NONE__", "__UNK__", "__EOS__"
#: The AST fields read as a node's attribute, in OGB's order (``s`` / ``n`` are a constant's ``value``).
_ATTRIBUTE_FIELDS = ("name", "arg", "id", "attr")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+[0-9]*")


def split_subtokens(name: str) -> list[str]:
    """The lower-cased sub-tokens of an identifier: split at ``_`` and at camelCase boundaries, digits kept
    with the letters before them (``'parseHTTPResponse_v2'`` -> ``['parse', 'http', 'response', 'v2']``)."""
    return [token.lower() for part in name.split("_") for token in _CAMEL.findall(part)]


@dataclass
class ASTGraph:
    """The AST of one function as OGB's code2 walker lists it, nodes in depth-first pre-order.

    Attributes:
        types: ``[n]`` AST class names.
        attributes: ``[n]`` identifier / literal of each node, ``None`` where it has none.
        parent: ``[n]`` parent node (``-1`` for the root, node 0).
        depth: ``[n]`` distance to the root.
    """

    types: list[str]
    attributes: list[str | None]
    parent: list[int]
    depth: list[int]

    def __len__(self) -> int:
        return len(self.types)


def _attribute(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant):
        return None if node.value is None else str(node.value)
    for field in _ATTRIBUTE_FIELDS:
        value = getattr(node, field, None)
        if value is not None:
            return str(value)
    return None


def function_graph(function: ast.FunctionDef | ast.AsyncFunctionDef, mask: bool = True) -> ASTGraph:
    """The AST of ``function`` under a ``Module`` root (node 0), as OGB's code2 conversion walks a function's
    source: pre-order, children in field order (``ast.iter_child_nodes``).

    With ``mask``, every attribute equal to the function's name becomes :data:`MASK_TOKEN` (OGB masks the
    name of the definition; recursive references such as ``self.name(...)`` are masked too, so the name
    never appears in the tree).
    """
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TypeError(f"function_graph needs an ast.FunctionDef or AsyncFunctionDef, got "
                        f"{type(function).__name__}")
    graph = ASTGraph([], [], [], [])
    stack: list[tuple[ast.AST, int, int]] = [(ast.Module(body=[function], type_ignores=[]), -1, 0)]
    while stack:
        node, parent, depth = stack.pop()
        index = len(graph.types)
        attribute = _attribute(node)
        if mask and attribute == function.name:
            attribute = MASK_TOKEN
        graph.types.append(type(node).__name__)
        graph.attributes.append(attribute)
        graph.parent.append(parent)
        graph.depth.append(depth)
        stack.extend((child, index, depth + 1) for child in reversed(list(ast.iter_child_nodes(node))))
    return graph


def iter_functions(source: str | bytes, filename: str = "<source>") -> Iterator[tuple[str, ast.FunctionDef]]:
    """``(qualified name, definition)`` of the module-level functions and the methods of (nested) classes in
    ``source``, in source order; functions defined inside functions are part of their enclosing function.

    Raises:
        SyntaxError: if ``source`` does not parse (``filename`` names it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like in old code
        module = ast.parse(source, filename=filename)
    stack: list[tuple[str, list[ast.stmt]]] = [("", module.body)]
    while stack:
        prefix, body = stack.pop(0)
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + node.name, node
            elif isinstance(node, ast.ClassDef):
                stack.append((f"{prefix}{node.name}.", node.body))


def ogb_code_graph(graph: ASTGraph, type_index: Mapping[str, int], attribute_index: Mapping[str, int],
                   subtokens: Sequence[str]) -> Data:
    """``graph`` in OGB's code2 PyG layout (what ``PygGraphPropPredDataset('ogbg-code2')`` gives).

    ``x`` ``[n, 2]``: type id and attribute id (unknown types and attributes -> :data:`UNK_TOKEN`, nodes
    without an attribute -> :data:`NONE_TOKEN`); ``node_is_attributed``, ``node_dfs_order``, ``node_depth``
    ``[n, 1]``; ``edge_index`` ``[2, n - 1]`` AST edges parent -> child; ``y`` the list of sub-tokens.
    """
    for index, what in ((type_index, "type"), (attribute_index, "attribute")):
        if UNK_TOKEN not in index:
            raise ValueError(f"ogb_code_graph: the {what} vocabulary has no {UNK_TOKEN!r} entry")
    if NONE_TOKEN not in attribute_index:
        raise ValueError(f"ogb_code_graph: the attribute vocabulary has no {NONE_TOKEN!r} entry")
    types = [type_index.get(t, type_index[UNK_TOKEN]) for t in graph.types]
    unknown = attribute_index[UNK_TOKEN]
    attributes = [attribute_index[NONE_TOKEN] if a is None else attribute_index.get(a, unknown)
                  for a in graph.attributes]
    n = len(graph)
    parent = torch.tensor(graph.parent, dtype=torch.long)
    child = torch.arange(n)[parent >= 0]
    return Data(
        x=torch.tensor([types, attributes], dtype=torch.long).t().contiguous(),
        edge_index=torch.stack([parent[child], child]),
        node_is_attributed=torch.tensor([[a is not None] for a in graph.attributes], dtype=torch.long),
        node_dfs_order=torch.arange(n).view(-1, 1),
        node_depth=torch.tensor(graph.depth, dtype=torch.long).view(-1, 1),
        num_nodes=n,
        y=list(subtokens),
    )


def target_vocabulary(sequences: Iterable[Sequence[str]], size: int = 5000) -> list[str]:
    """The ``size`` most frequent sub-tokens of ``sequences`` (ties: first seen first), as OGB's code2 example
    builds its vocabulary on the training split (``get_vocab_mapping``); class ids are list positions, then
    :data:`UNK_TOKEN` (``size``) and :data:`EOS_TOKEN` (``size + 1``) when the list is full."""
    counts = Counter(token for sequence in sequences for token in sequence)
    return [token for token, _ in counts.most_common(size)]


def encode_subtokens(subtokens: Sequence[str], vocab_index: Mapping[str, int], max_seq_len: int) -> Tensor:
    """``[1, max_seq_len]`` class ids of the first ``max_seq_len`` sub-tokens, unknown ones -> UNK
    (``len(vocab_index)``), padded with EOS (``len(vocab_index) + 1``), as OGB's ``encode_seq_to_arr``."""
    unk, eos = len(vocab_index), len(vocab_index) + 1
    ids = [vocab_index.get(token, unk) for token in list(subtokens)[:max_seq_len]]
    return torch.tensor([ids + [eos] * (max_seq_len - len(ids))], dtype=torch.long)


def decode_subtokens(ids: Tensor, vocab: Sequence[str]) -> list[str]:
    """The sub-tokens of ``[L]`` class ids up to the first EOS (``len(vocab) + 1``); UNK (``len(vocab)``)
    reads :data:`UNK_TOKEN` (OGB's ``decode_arr_to_seq``)."""
    words = [*vocab, UNK_TOKEN]
    out = []
    for i in ids.tolist():
        if i == len(vocab) + 1:
            break
        out.append(words[i])
    return out


def next_token_edges(is_attributed: Tensor) -> Tensor:
    """``[2, A - 1]`` edges between consecutive attributed nodes of one graph in DFS order (OGB's code2
    "next-token" edges), for ``is_attributed`` ``[n]`` of nodes in DFS order."""
    index = is_attributed.view(-1).nonzero().view(-1)
    return torch.stack([index[:-1], index[1:]])


class CodeHierarchy(BaseTransform):
    r"""An AST in OGB's code2 layout (:func:`ogb_code_graph`, or a graph of ogbg-code2) as a HeteroData tree.

    Every AST node ``v`` is a ``token`` leaf; an AST node with children is also an ``ast`` inner node
    :math:`I_v` whose children are ``v``'s token followed by its AST children (their inner node where they
    have children, else their token), so the leaves are all AST nodes in DFS order and every inner node
    has at least two children. The root is the AST root's inner node.

    Output ``HeteroData``:

    * ``token`` ``[n]``: ``x`` ``[n, 2]`` (type id, attribute id), ``depth`` ``[n]``, ``is_attributed``
      ``[n]`` (bool), ``pos`` ``[n, pos_dim]`` sinusoidal encoding of the node's rank in its family;
    * ``ast`` ``[m]``: ``node`` ``[m]`` the token (row in this tree) of the AST node it stands for,
      ``pos`` ``[m, pos_dim]``;
    * tree edges ``('token', 'in', 'ast')`` and ``('ast', 'in', 'ast')``; the AST edges
      ``('token', 'child', 'token')`` (parent -> child) and OGB's next-token edges ``('token', 'next',
      'token')`` between consecutive attributed nodes;
    * ``y`` ``[1, max_seq_len]``: the first ``max_seq_len`` sub-tokens as ids of ``vocab``, UNK
      (``len(vocab)``) and EOS padding (``len(vocab) + 1``), as OGB's ``encode_y_to_arr``.

    Nodes are taken in ``node_dfs_order``.

    Args:
        vocab: the target sub-tokens (class ids are positions), e.g. :func:`target_vocabulary` of the
            training split.
        max_seq_len: sub-tokens predicted per name (OGB: 5).
        pos_dim: width of the position encoding (even).
    """

    def __init__(self, vocab: Sequence[str], max_seq_len: int = 5, pos_dim: int = 8) -> None:
        if max_seq_len < 1:
            raise ValueError(f"CodeHierarchy: max_seq_len must be >= 1, got {max_seq_len}")
        if pos_dim < 2 or pos_dim % 2:
            raise ValueError(f"CodeHierarchy: pos_dim must be a positive even number, got {pos_dim}")
        self.vocab = list(vocab)
        self.vocab_index = {token: i for i, token in enumerate(self.vocab)}
        if len(self.vocab_index) != len(self.vocab):
            raise ValueError("CodeHierarchy: the vocabulary has duplicate sub-tokens")
        self.max_seq_len, self.pos_dim = max_seq_len, pos_dim

    def forward(self, data: Data) -> HeteroData:
        x, parent, depth, attributed = _dfs_sorted(data)
        n = x.size(0)
        has_parent = parent >= 0
        child_count = torch.bincount(parent[has_parent], minlength=n)
        inner = (child_count > 0) | ~has_parent
        inner_row = torch.cumsum(inner.long(), 0) - 1
        rank = torch.zeros(n, dtype=torch.long)
        children = has_parent.nonzero().view(-1)
        rank[children] = 1 + _rank_among_siblings(parent[children])
        token_parent = torch.where(inner, inner_row, inner_row[parent.clamp(min=0)])
        inner_nodes = inner.nonzero().view(-1)
        inner_has_parent = has_parent[inner_nodes]
        out = HeteroData()
        out["token"].x = x
        out["token"].depth = depth
        out["token"].is_attributed = attributed
        out["token"].pos = sinusoidal(torch.where(inner, 0, rank), self.pos_dim)
        out["ast"].node = inner_nodes
        out["ast"].pos = sinusoidal(rank[inner_nodes], self.pos_dim)
        out["token", "in", "ast"].edge_index = torch.stack([torch.arange(n), token_parent])
        out["ast", "in", "ast"].edge_index = torch.stack([
            inner_row[inner_nodes[inner_has_parent]], inner_row[parent[inner_nodes[inner_has_parent]]]])
        out["token", "child", "token"].edge_index = torch.stack([parent[children], children])
        out["token", "next", "token"].edge_index = next_token_edges(attributed)
        out.y = self.encode(data.y)
        return out

    def encode(self, y: Sequence[str] | Tensor) -> Tensor:
        """``[1, max_seq_len]`` target ids of a list of sub-tokens (a ``[1, L]`` id tensor is kept)."""
        if isinstance(y, Tensor):
            if y.dim() != 2 or y.size(1) != self.max_seq_len:
                raise ValueError(f"CodeHierarchy: an encoded y must be [1, {self.max_seq_len}], got "
                                 f"{list(y.shape)}")
            return y
        if y is None or isinstance(y, str) or not all(isinstance(token, str) for token in y):
            raise ValueError(f"CodeHierarchy: y must be the list of the name's sub-tokens, got {y!r}")
        return encode_subtokens(y, self.vocab_index, self.max_seq_len)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(vocab={len(self.vocab)}, max_seq_len={self.max_seq_len}, "
                f"pos_dim={self.pos_dim})")


def _dfs_sorted(data: Data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x`` ``[n, 2]``, ``parent`` ``[n]`` (-1 at the root), ``depth`` ``[n]`` and ``is_attributed`` ``[n]``
    of a code2 graph, nodes renumbered in ``node_dfs_order``."""
    for key in ("x", "edge_index", "node_dfs_order", "node_depth", "node_is_attributed"):
        if key not in data:
            raise ValueError(f"CodeHierarchy: the graph has no {key!r}; it needs OGB's code2 layout "
                             "(x [n, 2], edge_index parent -> child, node_dfs_order, node_depth, "
                             "node_is_attributed)")
    x, edge_index = data.x, data.edge_index
    n = x.size(0)
    if x.dim() != 2 or x.size(1) != 2 or n == 0:
        raise ValueError(f"CodeHierarchy: x must be [n >= 1, 2] (type, attribute), got {list(x.shape)}")
    if edge_index.size(1) != n - 1:
        raise ValueError(f"CodeHierarchy: an AST of {n} nodes has {n - 1} edges, got {edge_index.size(1)}")
    order = data.node_dfs_order.view(-1)
    perm = torch.argsort(order)
    if not torch.equal(order[perm], torch.arange(n)):
        raise ValueError("CodeHierarchy: node_dfs_order must be a permutation of 0 .. n-1")
    new_id = torch.empty(n, dtype=torch.long)
    new_id[perm] = torch.arange(n)
    parent = torch.full((n,), -1, dtype=torch.long)
    src, dst = new_id[edge_index[0]], new_id[edge_index[1]]
    parent[dst] = src
    if int((parent < 0).sum()) != 1 or bool((src >= dst).any()):
        raise ValueError("CodeHierarchy: edge_index must be the AST's edges parent -> child with parents "
                         "before their children in node_dfs_order (one root)")
    return (x[perm], parent, data.node_depth.view(-1)[perm], data.node_is_attributed.view(-1)[perm].bool())


def _rank_among_siblings(parent: Tensor) -> Tensor:
    """``[k]`` rank of each node among the nodes with the same ``parent`` (in the given order)."""
    order = torch.argsort(parent, stable=True)
    sorted_parent = parent[order]
    starts = torch.searchsorted(sorted_parent, sorted_parent)
    rank = torch.empty_like(parent)
    rank[order] = torch.arange(parent.numel()) - starts
    return rank
