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
        self.parent = _check_parent(torch.as_tensor(parent), name)
        self._build(name)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parent(cls, parent: Tensor | Sequence[int]) -> "Hierarchy":
        """Build from parent pointers: ``parent[v]`` is the parent of node ``v``, ``-1`` for a root."""
        return cls(parent)

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int | None = None) -> "Hierarchy":
        """Build from tree edges ``[2, E]`` pointing from child (row 0) to parent (row 1)."""
        edge_index = torch.as_tensor(edge_index)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        return cls(_parent_from_edges(edge_index.long(), num_nodes, _plain_name))

    @classmethod
    def from_nested(cls, nested: Any, forest: bool = False) -> "Hierarchy":
        """Build from nested Python lists: a list is an inner node, anything else is a leaf.

        Nodes are numbered in depth-first pre-order, so leaf order is reading order:
        ``Hierarchy.from_nested([["a", "b"], "c"])`` has root 0, inner node 1, leaves a=2, b=3, c=4.
        With ``forest=True`` the outer list holds one tree per element.
        """
        trees = list(nested) if forest else [nested]
        if not trees:
            raise ValueError("from_nested: empty input, no tree")
        parent: list[int] = []
        stack: list[tuple[Any, int]] = [(tree, -1) for tree in reversed(trees)]
        while stack:
            item, up = stack.pop()
            parent.append(up)
            if isinstance(item, (list, tuple)):
                if not item:
                    raise ValueError(f"from_nested: node {len(parent) - 1} is an empty list (an inner node "
                                     "without children); put at least one leaf in it")
                stack.extend((child, len(parent) - 1) for child in reversed(item))
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
        if num_leaves < 1:
            raise ValueError(f"from_windows: num_leaves must be >= 1, got {num_leaves}")
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
        low, high = branching
        if num_leaves < 1 or not 1 <= low <= high or high < 2:
            raise ValueError(f"random: need num_leaves >= 1 and 1 <= low <= high, high >= 2; got "
                             f"{num_leaves}, {branching}")
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
            ei = data[et].edge_index
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
        parent, depth = self.parent, self.depth
        num_levels = int(depth.max()) + 1
        by_depth = torch.argsort(depth, stable=True)
        level_sizes = torch.bincount(depth, minlength=num_levels).tolist()
        slot = torch.empty_like(parent)
        levels, start = [], 0
        for size in level_sizes:
            nodes = by_depth[start:start + size]
            if start > 0:
                nodes = nodes[torch.argsort(slot[parent[nodes]], stable=True)]
            slot[nodes] = torch.arange(start, start + size, device=parent.device)
            levels.append(nodes)
            start += size
        self.num_levels = num_levels
        self.level_ptr = [0] + torch.tensor(level_sizes).cumsum(0).tolist()
        self.level_node = torch.cat(levels)
        self.node_slot = slot
        self.inner_index = torch.full_like(parent, -1)
        self.inner_slot = (~self.is_leaf[self.level_node]).nonzero().view(-1)
        self.num_inner = self.inner_slot.numel()
        self.inner_index[self.level_node[self.inner_slot]] = torch.arange(self.num_inner, device=parent.device)
        self.leaf_count = self._count_leaves()
        self.height = self._heights()

    def _build_leaf_maps(self) -> None:
        """Leaf -> parent's inner row (``num_inner`` for a root leaf) and the leaf order of level-ordered rows."""
        parent = self.parent[self.leaf_node]
        self.leaf_parent_inner = torch.where(parent >= 0, self.inner_index[parent.clamp(min=0)], self.num_inner)
        self.inner_leaf_count = self.leaf_count[self.level_node[self.inner_slot]]
        self.leaf_slot = self.node_slot[self.leaf_node]
        level_rows = torch.cat([level.leaf_row for level in self.levels])
        identity = bool((level_rows == torch.arange(self.num_leaves, device=self.device)).all())
        self.leaf_gather = None if identity else torch.argsort(level_rows)

    def _count_leaves(self) -> Tensor:
        counts = self.is_leaf.long()
        for level in range(self.num_levels - 1, 0, -1):
            nodes = self.level_nodes(level)
            counts = counts.index_add(0, self.parent[nodes], counts[nodes])
        return counts

    def _heights(self) -> Tensor:
        height = torch.zeros_like(self.parent)
        for level in range(self.num_levels - 1, 0, -1):
            nodes = self.level_nodes(level)
            height = height.scatter_reduce(0, self.parent[nodes], height[nodes] + 1, "amax")
        return height

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
                value = {name: plan.to(device) for name, plan in value.items()}
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
    if parent.is_floating_point() or parent.dtype == torch.bool:
        raise ValueError(f"parent must hold integer node ids, got dtype {parent.dtype}")
    parent = parent.long()
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
    """Depth and root of every node by pointer jumping (log2(T) rounds); raises on a cycle."""
    num_nodes = parent.numel()
    anc = parent.clone()
    depth = (parent >= 0).long()
    root = torch.where(parent >= 0, parent, torch.arange(num_nodes, device=parent.device))
    for _ in range(max(1, math.ceil(math.log2(num_nodes))) + 1):
        active = anc >= 0
        if not bool(active.any()):
            return depth, root
        up = anc[active]
        depth = depth.clone()
        depth[active] += depth[up]
        root = root.clone()
        root[active] = root[up]
        anc = anc.clone()
        anc[active] = anc[up]
    node = int((anc >= 0).nonzero()[0])
    path = [node]
    for _ in range(num_nodes + 1):
        node = int(parent[node])
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise ValueError("cycle in the hierarchy: " + " -> ".join(name(v) for v in cycle[:12]))
        path.append(node)
    raise AssertionError("unreachable")


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
    levels, inner_start = [], 0
    empty = torch.zeros(0, dtype=torch.long, device=h.device)
    for depth in range(h.num_levels):
        start, stop = h.level_ptr[depth], h.level_ptr[depth + 1]
        nodes = h.level_node[start:stop]
        leaf_mask = h.is_leaf[nodes]
        leaf_local = leaf_mask.nonzero().view(-1)
        inner_nodes = nodes[~leaf_mask]
        if depth == 0:
            parent_local, weight, inner_parent_local = empty, empty.double(), empty
        else:
            up = h.parent[nodes]
            parent_local = h.node_slot[up] - h.level_ptr[depth - 1]
            weight = h.leaf_count[nodes].double() / h.leaf_count[up].double()
            inner_parent_local = h.inner_index[h.parent[inner_nodes]] - levels[-1].inner_start
        levels.append(Level(start, stop, parent_local, weight, leaf_local, h.node_leaf[nodes[leaf_local]],
                            leaf_mask, inner_start, inner_start + inner_nodes.numel(), inner_parent_local))
        inner_start += inner_nodes.numel()
    return levels


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
