"""The tree (or forest) that Hierarchical Self-Attention runs on.

A :class:`Hierarchy` holds the parent pointer of every tree node and the structure the HSA dynamic programme
needs, derived once with vectorised tensor operations (one step per tree level at most, never one per node).

Conventions (a public contract):

* nodes are ``0 .. T-1``; ``parent[v] == -1`` marks a root; a forest is a batch, one tree per example;
* leaves are the nodes without children, and **leaf i is the i-th leaf in increasing node id**: rows of
  query/key/value follow that order;
* two roots are never siblings: attention never crosses trees.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Hierarchy", "Level", "NEG"]

@dataclass(frozen=True)
class Level:
    """The nodes at one depth, as the level-by-level passes of the DP see them.

    Attributes:
        start, stop: slot range of the level in level order.
        parent_local: ``[n]`` index of each node's parent within the previous level (empty at depth 0).
        child_weight: ``[n]`` ``n(C) / n(parent(C))`` in float64 (empty at depth 0).
        leaf_local, leaf_row: positions within the level that are leaves, and their leaf rows.
        leaf_mask: ``[n]`` bool, True for leaves.
        inner_start, inner_stop: range of the level's inner nodes in inner order.
        inner_parent_local: ``[n_inner]`` index of each inner node's parent within the previous level's inner
            nodes (empty at depth 0).
    """

    start: int
    stop: int
    parent_local: Tensor
    child_weight: Tensor
    leaf_local: Tensor
    leaf_row: Tensor
    leaf_mask: Tensor
    inner_start: int
    inner_stop: int
    inner_parent_local: Tensor

    def to(self, device: torch.device | str) -> "Level":
        return Level(*(v.to(device) if isinstance(v, Tensor) else v for v in self.__dict__.values()))


#: The finite stand-in for log(0) used throughout: keeps every gradient finite.
NEG = -1e30


class Hierarchy:
    r"""A forest over ``T`` nodes whose leaves carry the tokens HSA attends over.

    Build it with :meth:`from_parent`, :meth:`from_edge_index`, :meth:`from_hetero`, :meth:`from_nested` or
    :meth:`from_networkx`. Everything the DP needs is derived on construction and reused by every call.

    Attributes:
        parent: ``[T]`` parent id, ``-1`` for roots.
        depth: ``[T]`` distance to the root.
        height: ``[T]`` longest distance down to a leaf (0 for leaves).
        leaf_count: ``[T]`` number of leaves below each node, :math:`n(A)` (1 for a leaf).
        is_leaf: ``[T]`` bool.
        leaf_node: ``[N]`` node id of leaf row ``i``.
        node_leaf: ``[T]`` leaf row of a node, ``-1`` for inner nodes.
        root: ``[T]`` root id of each node's tree.
        tree: ``[T]`` tree index (0 .. num_trees-1, trees ordered by root id) of each node.
        batch: ``[N]`` tree index of each leaf (``tree[leaf_node]``).
        child_ptr, child_index: children grouped by parent (CSR over node ids, children by increasing id).
        node_slices: for a hierarchy built from ``HeteroData``, node type -> ``(start, stop)`` node ids.
    """

    def __init__(self, parent: Tensor, node_slices: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.node_slices: dict[str, tuple[int, int]] = dict(node_slices or {})
        name = _typed_name(self.node_slices) if self.node_slices else _plain_name
        self.parent = _check_parent(_node_ids(parent, "parent"), name)
        self._build(name)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parent(cls, parent: Tensor | Sequence[int]) -> "Hierarchy":
        """Build from parent pointers: ``parent[v]`` is the parent of node ``v``, ``-1`` for a root."""
        return cls(parent)

    @classmethod
    def cat(cls, hierarchies: Sequence["Hierarchy"]) -> "Hierarchy":
        """The forest of ``hierarchies`` side by side: the node ids of each are shifted by the nodes before it,
        so its leaves keep their order and follow those before it (the rows of q, k, v concatenate alike)."""
        hierarchies = list(hierarchies)
        if not hierarchies:
            raise ValueError("Hierarchy.cat needs at least one hierarchy")
        for index, h in enumerate(hierarchies):
            if not isinstance(h, Hierarchy):
                raise TypeError(f"Hierarchy.cat: item {index} is a {type(h).__name__}, not a Hierarchy")
        devices = sorted({str(h.device) for h in hierarchies})
        if len(devices) > 1:
            raise ValueError(f"Hierarchy.cat: the hierarchies are on several devices {devices}; move them first")
        sizes = torch.tensor([h.num_nodes for h in hierarchies], device=hierarchies[0].device)
        offsets = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        parent = torch.cat([h.parent for h in hierarchies])
        return cls(torch.where(parent >= 0, parent + offsets, -1))

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int | None = None) -> "Hierarchy":
        """Build from tree edges ``[2, E]`` pointing from child (row 0) to parent (row 1).

        Without ``num_nodes`` the edges must name every node ``0 .. max id`` (pass ``num_nodes`` for nodes
        without an edge, which become one-node trees).
        """
        edge_index = _node_ids(edge_index, "edge_index")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if num_nodes is None:
            num_nodes = _num_nodes_named(edge_index)
        elif isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or num_nodes < 0:
            raise ValueError(f"from_edge_index: num_nodes must be a non-negative int, got {num_nodes!r}")
        return cls(_parent_from_edges(edge_index, int(num_nodes), _plain_name))

    @classmethod
    def from_nested(cls, nested: Any, forest: bool = False) -> "Hierarchy":
        """Build from nested Python lists: a list is an inner node, anything else is a leaf.

        Nodes are numbered in depth-first pre-order, so leaf order is reading order:
        ``Hierarchy.from_nested([["a", "b"], "c"])`` has root 0, inner node 1, leaves a=2, b=3, c=4.
        With ``forest=True`` the outer list holds one tree per element.
        """
        if forest and not isinstance(nested, (list, tuple)):
            raise ValueError(f"from_nested: forest=True needs a list of trees, got {type(nested).__name__}")
        trees = list(nested) if forest else [nested]
        if not trees:
            raise ValueError("from_nested: empty input, no tree")
        parent: list[int] = []
        on_path: set[int] = set()   # ids of the lists between the root and the item being visited
        stack: list[tuple[Any, int]] = [(tree, -1) for tree in reversed(trees)]
        while stack:
            item, up = stack.pop()
            if item is _END_OF_LIST:
                on_path.discard(up)
                continue
            parent.append(up)
            if isinstance(item, (list, tuple)):
                node = len(parent) - 1
                if not item:
                    raise ValueError(f"from_nested: node {node} is an empty list (an inner node without "
                                     "children); put at least one leaf in it")
                if id(item) in on_path:
                    raise ValueError(f"from_nested: node {node} is a list that contains itself (directly or "
                                     "through nested lists), so the input is not a tree")
                on_path.add(id(item))
                stack.append((_END_OF_LIST, id(item)))
                stack.extend((child, node) for child in reversed(item))
        return cls(torch.tensor(parent))

    @classmethod
    def from_networkx(cls, graph: Any, root: Any | Iterable[Any] | None = None) -> "Hierarchy":
        """Build from a networkx tree or forest.

        A ``DiGraph`` must be a branching with edges pointing from parent to child. An undirected ``Graph``
        must be a forest; ``root`` names its root (one per tree). Node ``k`` of the hierarchy is
        ``list(graph.nodes)[k]``.
        """
        import networkx as nx

        nodes = list(graph.nodes)
        if not nodes:
            raise ValueError("from_networkx: the graph has no nodes")
        index = {node: i for i, node in enumerate(nodes)}
        if graph.is_directed():
            if not nx.is_branching(graph):
                raise ValueError("from_networkx: the DiGraph is not a forest of parent -> child edges "
                                 f"({_networkx_fault(graph)})")
            edges = [(index[v], index[u]) for u, v in graph.edges]
        else:
            if not nx.is_forest(graph):
                raise ValueError("from_networkx: the graph is not a forest (it has a cycle)")
            roots = _root_list(root, index)
            edges = _orient_forest(graph, roots, index)
        edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t()
        return cls(_parent_from_edges(edge_index, len(nodes), lambda v: repr(nodes[v])))

    @classmethod
    def from_windows(cls, num_leaves: int, branching: int | Sequence[int]) -> "Hierarchy":
        """Fixed non-overlapping windows over a sequence, bottom-up (the paper's zero-shot hierarchy).

        ``branching=(2, 4, 8)`` groups leaves in windows of 2, those in windows of 4, then 8, and puts one root
        over what remains; an int repeats until one node is left. The last window of a level may be partial.
        Leaves are nodes ``0 .. num_leaves - 1`` in sequence order.
        """
        _check_count(num_leaves, "from_windows: num_leaves")
        widths = [branching] if isinstance(branching, int) else list(branching)
        if not widths or min(widths) < 2:
            raise ValueError(f"from_windows: branching factors must be >= 2, got {branching}")
        parents, start, size, level = [], 0, num_leaves, 0
        while size > 1:
            width = widths[level] if level < len(widths) else (widths[-1] if isinstance(branching, int) else size)
            up = -(-size // width)
            parents.append(start + size + torch.arange(size) // width)
            start, size, level = start + size, up, level + 1
        parents.append(torch.tensor([-1]))
        return cls(torch.cat(parents))

    @classmethod
    def random(cls, num_leaves: int, branching: tuple[int, int] = (2, 8), skip: float = 0.1,
               generator: torch.Generator | None = None) -> "Hierarchy":
        """A random unbalanced tree over ``num_leaves`` leaves in sequence order, built bottom-up.

        Each level groups consecutive nodes in windows of a size drawn uniformly from ``branching``
        (inclusive); a node skips a level with probability ``skip``, so leaves end up at mixed depths and
        unary chains appear when a window holds one node. Vectorised: one step per level.
        """
        _check_count(num_leaves, "random: num_leaves")
        low, high = branching
        if not 1 <= low <= high or high < 2:
            raise ValueError(f"random: need 1 <= low <= high and high >= 2 for branching=(low, high), got "
                             f"{branching}")
        if not 0.0 <= skip < 1.0:
            raise ValueError(f"random: skip must be in [0, 1) (with 1 no node is ever grouped), got {skip}")
        children, parents, level, total = [], [], torch.arange(num_leaves), num_leaves
        while level.numel() > 1:
            skips = torch.rand(level.numel(), generator=generator) < skip
            order = torch.arange(level.numel())
            if bool(skips.all()):
                continue
            sizes = torch.randint(low, high + 1, (int((~skips).sum()),), generator=generator)
            group = torch.bucketize(torch.arange(sizes.numel()), torch.cumsum(sizes, 0), right=True)
            group = torch.unique_consecutive(group, return_inverse=True)[1]
            new = total + torch.arange(int(group.max()) + 1)
            total += new.numel()
            children.append(level[~skips])
            parents.append(new[group])
            first = torch.ones_like(group, dtype=torch.bool)
            first[1:] = group[1:] != group[:-1]
            position = torch.cat([order[skips], order[~skips][first]])
            level = torch.cat([level[skips], new])[torch.argsort(position)]
        parent = torch.full((total,), -1, dtype=torch.long)
        if children:
            parent[torch.cat(children)] = torch.cat(parents)
        return cls(parent)

    @classmethod
    def from_hetero(cls, data: Any, tree_edge_types: Sequence[tuple[str, str, str]] | None = None,
                    relation: str = "in") -> "Hierarchy":
        """Build from a PyG ``HeteroData`` (or a ``Batch`` of them) with tree edges from child to parent type.

        Node ids concatenate the node types in ``data.node_types`` order; ``node_slices`` maps each type to its
        id range. Tree edges are ``tree_edge_types``, by default every edge type whose relation is
        ``relation`` (e.g. ``('token', 'in', 'sentence')``). Leaf types are the node types no tree edge points
        into; every other node must have a child.
        """
        node_types = list(data.node_types)
        if not node_types:
            raise ValueError("from_hetero: the data has no node types")
        edge_types = list(tree_edge_types) if tree_edge_types is not None else [
            et for et in data.edge_types if et[1] == relation]
        if not edge_types:
            raise ValueError(f"from_hetero: no tree edge types (none with relation {relation!r}); "
                             "pass tree_edge_types")
        slices, start = {}, 0
        for nt in node_types:
            count = data[nt].num_nodes
            if count is None:
                raise ValueError(f"from_hetero: node type {nt!r} has no num_nodes and no features")
            slices[nt] = (start, start + int(count))
            start += int(count)
        if start == 0:
            raise ValueError("from_hetero: empty input, the data has no nodes")
        parts = []
        for et in edge_types:
            src, _, dst = et
            for nt in (src, dst):
                if nt not in slices:
                    raise ValueError(f"from_hetero: edge type {et} names unknown node type {nt!r}")
            if et not in data.edge_types:
                raise ValueError(f"from_hetero: edge type {et} is not in the data")
            ei = _edge_rows(data[et], et)
            _check_edge_rows(ei, et, data[src].num_nodes, data[dst].num_nodes)
            parts.append(torch.stack([ei[0] + slices[src][0], ei[1] + slices[dst][0]]))
        edge_index = torch.cat(parts, dim=1).cpu()
        name = _typed_name(slices)
        parent = _parent_from_edges(edge_index, start, name)
        _check_leaf_types(parent, slices, {et[2] for et in edge_types}, {et[0] for et in edge_types}, name)
        return cls(parent, node_slices=slices)

    # ------------------------------------------------------------------ derived structure
    def _build(self, name) -> None:
        parent = self.parent
        device, num_nodes = parent.device, parent.numel()
        self.num_nodes = num_nodes
        has_parent = parent >= 0
        child_counts = torch.bincount(parent[has_parent], minlength=num_nodes)
        self.is_leaf = child_counts == 0
        self.leaf_node = self.is_leaf.nonzero().view(-1)
        self.num_leaves = self.leaf_node.numel()
        self.node_leaf = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        self.node_leaf[self.leaf_node] = torch.arange(self.num_leaves, device=device)
        self.depth, self.root = _depth_and_root(parent, name)
        roots = (~has_parent).nonzero().view(-1)
        self.num_trees = roots.numel()
        tree_of_root = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        tree_of_root[roots] = torch.arange(self.num_trees, device=device)
        self.tree = tree_of_root[self.root]
        self.batch = self.tree[self.leaf_node]

        self.child_index = has_parent.nonzero().view(-1)
        self.child_index = self.child_index[torch.argsort(parent[self.child_index], stable=True)]
        self.child_ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=device)
        self.child_ptr[1:] = torch.cumsum(child_counts, 0)
        self.child_rank = torch.zeros(num_nodes, dtype=torch.long, device=device)
        self.child_rank[self.child_index] = (torch.arange(self.child_index.numel(), device=device)
                                             - self.child_ptr[parent[self.child_index]])
        self.family_size = torch.where(has_parent, child_counts[parent.clamp(min=0)], 1)

        self._build_levels()
        self.levels = _levels(self)
        self.level_sizes = [level.stop - level.start for level in self.levels]
        self.inner_level_sizes = [level.inner_stop - level.inner_start for level in self.levels]
        self._build_leaf_maps()
        self._plans: dict[str, Any] = {}

    def _build_levels(self) -> None:
        """Level order: nodes by depth, then by their parent's position, then by id (families contiguous)."""
        parent, depth, device = self.parent, self.depth, self.parent.device
        num_levels = int(depth.max()) + 1
        by_depth = torch.argsort(depth, stable=True)   # by depth, then by id
        level_sizes = torch.bincount(depth, minlength=num_levels).tolist()
        parents_at = torch.bincount(depth[~self.is_leaf], minlength=num_levels).tolist()
        slot = torch.empty_like(parent)
        levels, start = [], 0
        for level, size in enumerate(level_sizes):
            nodes = by_depth[start:start + size]
            if level > 0 and parents_at[level - 1] > 1:   # several families: order by their parents' slots
                slot[levels[-1]] = torch.arange(start - levels[-1].numel(), start, device=device)
                nodes = nodes[torch.argsort(slot[parent[nodes]], stable=True)]
            levels.append(nodes)
            start += size
        self.num_levels = num_levels
        self.level_ptr = [0] + torch.tensor(level_sizes).cumsum(0).tolist()
        self.level_node = torch.cat(levels)
        slot[self.level_node] = torch.arange(parent.numel(), device=device)
        self.node_slot = slot
        self.inner_index = torch.full_like(parent, -1)
        self.inner_slot = (~self.is_leaf[self.level_node]).nonzero().view(-1)
        self.num_inner = self.inner_slot.numel()
        self.inner_index[self.level_node[self.inner_slot]] = torch.arange(self.num_inner, device=parent.device)
        self.leaf_count, self.height = self._count_leaves_and_heights()

    def _build_leaf_maps(self) -> None:
        """Leaf -> parent's inner row (``num_inner`` for a root leaf) and the leaf order of level-ordered rows."""
        parent = self.parent[self.leaf_node]
        self.leaf_parent_inner = torch.where(parent >= 0, self.inner_index[parent.clamp(min=0)], self.num_inner)
        self.inner_leaf_count = self.leaf_count[self.level_node[self.inner_slot]]
        self.leaf_slot = self.node_slot[self.leaf_node]
        level_rows = torch.cat([level.leaf_row for level in self.levels])
        identity = bool((level_rows == torch.arange(self.num_leaves, device=self.device)).all())
        self.leaf_gather = None if identity else torch.argsort(level_rows)

    def _count_leaves_and_heights(self) -> tuple[Tensor, Tensor]:
        """Leaves below and height of every node by doubling: after the round of step ``s`` every node holds
        the leaves and the depth reached within ``2s - 1`` levels below it, gathered from the nodes ``s``
        levels down (one scatter each), so ``ceil(log2(num_levels))`` rounds do, whatever the depth."""
        counts, height = self.is_leaf.long(), torch.zeros_like(self.parent)
        anc, step = self.parent, 1                         # anc: the ancestor `step` levels up, or -1
        while step < self.num_levels:
            has = anc >= 0
            up = anc.clamp(min=0)
            counts.index_add_(0, up, torch.where(has, counts, 0))
            height.scatter_reduce_(0, up, torch.where(has, height + step, 0), "amax")
            anc, step = torch.where(has, anc[up], -1), 2 * step
        return counts, height

    def level_nodes(self, level: int) -> Tensor:
        """Node ids at depth ``level``, in level order (grouped by parent)."""
        return self.level_node[self.level_ptr[level]:self.level_ptr[level + 1]]

    @property
    def sibling_index(self) -> Tensor:
        """``[2, P]`` ordered sibling pairs ``(B, S)``, ``B != S``, sorted by ``B`` then ``S``.

        ``P = sum_A |chd(A)|^2 - |chd(A)|``: quadratic in a family's size, so this is built on first use.
        """
        if getattr(self, "_sibling_index", None) is None:
            self._sibling_index = _sibling_pairs(self)
        return self._sibling_index

    @property
    def sibling_ptr(self) -> Tensor:
        """``[T + 1]`` CSR pointer of :attr:`sibling_index` over ``B``."""
        counts = torch.bincount(self.sibling_index[0], minlength=self.num_nodes)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def to(self, device: torch.device | str) -> "Hierarchy":
        """A copy on ``device`` (structure is moved, not recomputed)."""
        if torch.device(device) == self.device:
            return self
        out = object.__new__(Hierarchy)
        for key, value in self.__dict__.items():
            if isinstance(value, Tensor):
                value = value.to(device)
            elif key == "levels":
                value = [item.to(device) for item in value]
            elif key == "_plans":
                value = {name: plan.to(device) for name, plan in value.items() if plan is not None}
            out.__dict__[key] = value
        return out

    # ------------------------------------------------------------------ per-type features
    def leaf_features(self, x_dict: Mapping[str, Tensor]) -> Tensor:
        """Concatenate per-node-type leaf features into ``[N, ...]`` rows in leaf order.

        Raises ``ValueError`` when a leaf type lacks features, a non-leaf type holds them, or the row count of a
        type does not match its number of nodes.
        """
        if not self.node_slices:
            raise ValueError("leaf_features needs a hierarchy built with from_hetero")
        parts = []
        for nt, (start, stop) in self.node_slices.items():
            leaf_type = bool(self.is_leaf[start:stop].any()) if stop > start else False
            x = x_dict.get(nt)
            if x is None:
                if leaf_type:
                    raise ValueError(f"leaf node type {nt!r} has no features")
                continue
            if not leaf_type and stop > start:
                raise ValueError(f"node type {nt!r} holds features but its nodes are not leaves "
                                 "(features belong to leaf types only)")
            if x.size(0) != stop - start:
                raise ValueError(f"node type {nt!r}: {x.size(0)} feature rows for {stop - start} nodes")
            parts.append(x)
        for nt in x_dict:
            if nt not in self.node_slices:
                raise ValueError(f"features given for unknown node type {nt!r}")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def split_leaves(self, out: Tensor) -> dict[str, Tensor]:
        """Split ``[N, ...]`` leaf rows back into a per-node-type dict (leaf types only)."""
        if out.size(0) != self.num_leaves:
            raise ValueError(f"split_leaves: {out.size(0)} rows for {self.num_leaves} leaves")
        result, row = {}, 0
        for nt, (start, stop) in self.node_slices.items():
            count = int(self.is_leaf[start:stop].sum())
            if count:
                result[nt] = out[row:row + count]
                row += count
        return result

    def node_features(self, x_dict: Mapping[str, Tensor], fill: float = 0.0) -> Tensor:
        """Concatenate per-node-type tensors (e.g. positions) into ``[T, ...]``; missing types get ``fill``."""
        if not x_dict:
            raise ValueError("node_features: the dict is empty; give a tensor for at least one node type")
        ref = next(iter(x_dict.values()))
        out = ref.new_full((self.num_nodes,) + tuple(ref.shape[1:]), fill)
        for nt, x in x_dict.items():
            if nt not in self.node_slices:
                raise ValueError(f"tensor given for unknown node type {nt!r}")
            start, stop = self.node_slices[nt]
            if x.size(0) != stop - start:
                raise ValueError(f"node type {nt!r}: {x.size(0)} rows for {stop - start} nodes")
            out[start:stop] = x
        return out

    def __repr__(self) -> str:
        return (f"Hierarchy(num_nodes={self.num_nodes}, num_leaves={self.num_leaves}, "
                f"num_trees={self.num_trees}, depth={self.num_levels - 1})")


# ---------------------------------------------------------------------- validation
#: Integer dtypes accepted for node ids (bool, floating and complex ids are refused, never cast).
_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
#: Marks, on the stack of :meth:`Hierarchy.from_nested`, the end of a list's children.
_END_OF_LIST = object()


def _node_ids(ids: Any, what: str) -> Tensor:
    """``ids`` (a tensor, array or nested lists of ints) as int64; raises naming a non-integer entry."""
    if not isinstance(ids, Tensor):
        if isinstance(ids, (str, bytes)):
            raise ValueError(f"{what} must hold integer node ids, got the string {ids!r}")
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as error:
            problem = _first_non_integer(ids) or "the nested lists have different lengths"
            raise ValueError(f"{what} must hold integer node ids; {problem}") from error
    if ids.dtype not in _ID_DTYPES and ids.numel():
        raise ValueError(f"{what} must hold integer node ids, got dtype {ids.dtype}" + (
            " (convert whole-number ids with .long())" if ids.is_floating_point() else ""))
    return ids.long()


def _first_non_integer(values: Any, path: tuple[int, ...] = ()) -> str | None:
    """Where nested sequences hold something else than an int, e.g. ``"entry 1 is None"``; else None."""
    if isinstance(values, numbers.Integral):
        return None
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        found = (_first_non_integer(item, path + (i,)) for i, item in enumerate(values))
        return next(filter(None, found), None)
    if not path:
        return f"got {values!r}"
    where = f"entry {path[0]}" if len(path) == 1 else "entry " + "".join(f"[{i}]" for i in path)
    return f"{where} is {values!r}"


def _num_nodes_named(edge_index: Tensor) -> int:
    """The node count ``max id + 1`` of edges that must name every node ``0 .. max id`` (ids stay compact)."""
    if edge_index.numel() == 0:
        return 0
    low, high = int(edge_index.min()), int(edge_index.max())
    if low < 0:
        raise ValueError(f"edge_index holds the negative node id {low}; ids must be 0 .. num_nodes - 1")
    distinct = torch.unique(edge_index).numel()
    if high >= distinct:
        raise ValueError(f"from_edge_index: the largest id is {high} but the {edge_index.size(1)} edges name "
                         f"only {distinct} distinct nodes; node ids must be 0 .. num_nodes - 1 (pass "
                         "num_nodes when some nodes have no edge)")
    return high + 1


def _check_count(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")


def _edge_rows(store: Any, edge_type: tuple) -> Tensor:
    """The ``[2, E]`` integer ``edge_index`` of a tree edge type of a ``HeteroData``."""
    edge_index = getattr(store, "edge_index", None)
    if edge_index is None:
        raise ValueError(f"from_hetero: edge type {edge_type} has no edge_index")
    edge_index = _node_ids(edge_index, f"from_hetero: edge type {edge_type}: edge_index")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"from_hetero: edge type {edge_type}: edge_index must have shape [2, E], got "
                         f"{list(edge_index.shape)}")
    return edge_index


def _plain_name(node: int) -> str:
    return f"node {node}"


def _typed_name(slices: Mapping[str, tuple[int, int]]):
    def name(node: int) -> str:
        for nt, (start, stop) in slices.items():
            if start <= node < stop:
                return f"node {node} ({nt!r} row {node - start})"
        return f"node {node}"
    return name


def _check_parent(parent: Tensor, name) -> Tensor:
    if parent.dim() != 1:
        raise ValueError(f"parent must be a 1-D tensor, got shape {list(parent.shape)}")
    if parent.numel() == 0:
        raise ValueError("empty hierarchy: parent has no nodes")
    num_nodes = parent.numel()
    bad = ((parent < -1) | (parent >= num_nodes)).nonzero().view(-1)
    if bad.numel():
        v = int(bad[0])
        raise ValueError(f"{name(v)} has parent {int(parent[v])}, out of range [-1, {num_nodes})")
    loops = (parent == torch.arange(num_nodes, device=parent.device)).nonzero().view(-1)
    if loops.numel():
        raise ValueError(f"cycle: {name(int(loops[0]))} is its own parent")
    return parent


def _parent_from_edges(edge_index: Tensor, num_nodes: int, name) -> Tensor:
    """Parent pointers from child -> parent edges, rejecting a node with two parents."""
    if num_nodes == 0:
        raise ValueError("empty hierarchy: no nodes")
    child, up = edge_index
    for ids, what in ((child, "child"), (up, "parent")):
        bad = ((ids < 0) | (ids >= num_nodes)).nonzero().view(-1)
        if bad.numel():
            raise ValueError(f"tree edge {int(bad[0])} has {what} id {int(ids[bad[0]])}, "
                             f"out of range [0, {num_nodes})")
    counts = torch.bincount(child, minlength=num_nodes)
    twice = (counts > 1).nonzero().view(-1)
    if twice.numel():
        v = int(twice[0])
        parents = up[child == v].tolist()
        raise ValueError(f"{name(v)} has two parents: {', '.join(name(p) for p in parents[:2])}")
    parent = torch.full((num_nodes,), -1, dtype=torch.long, device=edge_index.device)
    parent[child] = up
    return parent


def _check_edge_rows(edge_index: Tensor, edge_type: tuple, num_src: int, num_dst: int) -> None:
    if edge_index.numel() == 0:
        return
    for row, count, side in ((0, num_src, edge_type[0]), (1, num_dst, edge_type[2])):
        ids = edge_index[row]
        bad = ((ids < 0) | (ids >= count)).nonzero().view(-1)
        if bad.numel():
            raise ValueError(f"edge type {edge_type}: edge {int(bad[0])} points to {side!r} row "
                             f"{int(ids[bad[0]])}, but {side!r} has {count} nodes")


def _check_leaf_types(parent: Tensor, slices: Mapping[str, tuple[int, int]], parent_types: set,
                      child_types: set, name) -> None:
    """Nodes of parent types need children; nodes of leaf types need a parent (unless a type stands alone)."""
    child_counts = torch.bincount(parent[parent >= 0], minlength=parent.numel())
    for nt, (start, stop) in slices.items():
        if nt in parent_types:
            childless = (child_counts[start:stop] == 0).nonzero().view(-1)
            if childless.numel():
                raise ValueError(f"{name(start + int(childless[0]))} has no children, but node type {nt!r} is "
                                 "not a leaf type (it would be a leaf without features)")
        elif stop > start:
            if nt not in child_types:
                raise ValueError(f"leaf node type {nt!r} has no tree edge type to a parent type, so it has no "
                                 "path to a root")
            orphans = (parent[start:stop] < 0).nonzero().view(-1)
            if orphans.numel():
                raise ValueError(f"{name(start + int(orphans[0]))} of leaf type {nt!r} has no parent, so it "
                                 "has no path to a root")


def _depth_and_root(parent: Tensor, name) -> tuple[Tensor, Tensor]:
    """Depth and root of every node by pointer jumping: ``log2(T)`` vectorised rounds, each doubling how far
    up every node points (roots point to themselves). Nodes short of a root after them are on or below a
    cycle."""
    num_nodes = parent.numel()
    is_root = parent < 0
    anc = torch.where(is_root, torch.arange(num_nodes, device=parent.device), parent)
    depth = (~is_root).long()                     # distance from each node to anc
    for _ in range(max(1, math.ceil(math.log2(num_nodes))) + 1):
        if bool(is_root[anc].all()):
            return depth, anc
        depth = depth + depth[anc]
        anc = anc[anc]
    # more than T steps up from a node that never reached a root: a node on its cycle
    raise ValueError(_cycle_message(parent, int(anc[(~is_root[anc]).nonzero()[0, 0]]), name))


def _cycle_message(parent: Tensor, on_cycle: int, name, shown: int = 12) -> str:
    """The cycle through node ``on_cycle``, from its smallest node id, in one walk around it."""
    parents, cycle = parent.tolist(), [on_cycle]
    while parents[cycle[-1]] != on_cycle:
        cycle.append(parents[cycle[-1]])
    first = cycle.index(min(cycle))
    cycle = cycle[first:] + cycle[:first]
    path = " -> ".join(name(v) for v in cycle[:shown])
    more = f" -> ... ({len(cycle)} nodes)" if len(cycle) > shown else ""
    return f"cycle in the hierarchy: {path}{more} -> {name(cycle[0])}"


def _root_list(root: Any, index: Mapping[Any, int]) -> list:
    """``root`` as a list: one node label, or a list / set / tuple of labels (a tuple that is a label wins)."""
    if root is None:
        return []
    if isinstance(root, (list, set, frozenset)) or (isinstance(root, tuple) and root not in index):
        return list(root)
    return [root]


def _orient_forest(graph: Any, roots: list, index: Mapping[Any, int]) -> list[tuple[int, int]]:
    import networkx as nx

    components = list(nx.connected_components(graph))
    chosen = {}
    for r in roots:
        if r not in index:
            raise ValueError(f"from_networkx: root {r!r} is not a node of the graph")
        comp = next(i for i, c in enumerate(components) if r in c)
        if comp in chosen:
            raise ValueError(f"from_networkx: roots {chosen[comp]!r} and {r!r} lie in the same tree")
        chosen[comp] = r
    missing = [i for i in range(len(components)) if i not in chosen]
    if missing:
        example = min(components[missing[0]], key=index.get)
        raise ValueError(f"from_networkx: an undirected forest needs a root per tree; none given for the tree "
                         f"containing {example!r}")
    edges = []
    for r in chosen.values():
        edges.extend((index[child], index[up]) for up, child in nx.bfs_edges(graph, r))
    return edges


def _networkx_fault(graph: Any) -> str:
    import networkx as nx

    two = [v for v, d in graph.in_degree if d > 1]
    if two:
        return f"node {two[0]!r} has two parents: {', '.join(repr(u) for u in list(graph.predecessors(two[0]))[:2])}"
    try:
        cycle = nx.find_cycle(graph)
        return "cycle: " + " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
    except nx.NetworkXNoCycle:
        return "it is not a forest"


def _levels(h: Hierarchy) -> list[Level]:
    """The per-depth index tensors of :class:`Level`, computed for all levels at once and split by level."""
    nodes, device = h.level_node, h.device
    sizes = [stop - start for start, stop in zip(h.level_ptr, h.level_ptr[1:])]
    slot_depth = h.depth[nodes]
    level_start = torch.tensor(h.level_ptr[:-1], device=device)
    leaf_mask = h.is_leaf[nodes]
    leaf_slot = leaf_mask.nonzero().view(-1)
    leaf_sizes = torch.bincount(slot_depth[leaf_slot], minlength=h.num_levels).tolist()
    inner_sizes = [size - leaves for size, leaves in zip(sizes, leaf_sizes)]
    inner_ptr = [0] + torch.tensor(inner_sizes).cumsum(0).tolist()

    below = nodes[sizes[0]:]                                  # every node but the roots, in level order
    up = h.parent[below]
    up_slot = h.node_slot[up]
    parent_local = up_slot - level_start[slot_depth[up_slot]]
    weight = h.leaf_count[below].double() / h.leaf_count[up].double()
    inner_up = h.parent[nodes[h.inner_slot[inner_sizes[0]:]]]
    inner_start = torch.tensor(inner_ptr[:-1], device=device)
    inner_parent_local = h.inner_index[inner_up] - inner_start[h.depth[inner_up]]

    leaf_local = leaf_slot - level_start[slot_depth[leaf_slot]]
    leaf_row = h.node_leaf[nodes[leaf_slot]]

    empty = torch.zeros(0, dtype=torch.long, device=device)   # depth 0 has no parents
    by_level = zip(h.level_ptr, h.level_ptr[1:], [empty] + _split(parent_local, sizes[1:]),
                   [empty.double()] + _split(weight, sizes[1:]), _split(leaf_local, leaf_sizes),
                   _split(leaf_row, leaf_sizes), _split(leaf_mask, sizes), inner_ptr, inner_ptr[1:],
                   [empty] + _split(inner_parent_local, inner_sizes[1:]))
    return [Level(*fields) for fields in by_level]


def _split(x: Tensor, sizes: list[int]) -> list[Tensor]:
    """``x`` cut into consecutive pieces of ``sizes`` (views); ``[]`` for no sizes."""
    return list(x.split(sizes)) if sizes else []


# ---------------------------------------------------------------------- sibling structure
def _sibling_pairs(h: Hierarchy) -> Tensor:
    nodes = (h.parent >= 0).nonzero().view(-1)
    counts = h.family_size[nodes] - 1
    first = h.child_ptr[h.parent[nodes]]
    b = torch.repeat_interleave(nodes, counts)
    offset = torch.arange(b.numel(), device=b.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    rank = torch.repeat_interleave(h.child_rank[nodes], counts)
    s = h.child_index[torch.repeat_interleave(first, counts) + offset + (offset >= rank).long()]
    return torch.stack([b, s])
