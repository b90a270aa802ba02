"""Graph nodes as leaves, grouped into a tree by recursive graph partitioning."""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import remove_self_loops

from ..encodings import family_laplacian_eigenvectors

__all__ = ["GraphHierarchy", "partition_graph", "partition_levels", "edge_cut", "branching_statistics"]

METHODS = ("auto", "metis", "spectral")
#: Power iterations per spectral bisection, per unit of ``refine_iterations``.
SPECTRAL_ITERATIONS = 20


class GraphHierarchy(BaseTransform):
    r"""Groups the nodes of a graph into a tree of clusters with a target branching factor.

    Top-down: the root's nodes are split into ``ceil(n / b^(L-1))`` balanced, well-connected parts, each part
    of ``s`` nodes into ``ceil(s / b^(L-2))`` parts, and so on, so that a cluster ``j`` levels above the nodes
    holds about ``b^j`` nodes at most and families have about ``b`` members (``b = branching``, ``L`` levels
    of inner nodes, the smallest with ``b^L >= n`` unless ``num_levels`` is given). Splitting uses METIS
    (recursive bisection, through ``pymetis``) or, without it or with ``method='spectral'``, a dependency-free
    recursive spectral bisection (power iteration on the normalised adjacency, all clusters of a level at
    once). Splits see the graph as undirected, without self-loops.

    Disconnected graphs and isolated nodes are valid input: a part may hold several components, and an
    isolated node, which cuts no edge wherever it goes, fills whichever part balances the sizes.

    Output (a :class:`~torch_geometric.data.HeteroData`, the hgattn tree conventions):

    * ``'node'``: the graph's nodes in their original order (leaf ``i`` is node ``i``) with every node
      attribute (an input ``pos`` is renamed ``input_pos``); ``('node', 'to', 'node')`` holds the graph's own
      edges with their attributes; graph-level attributes stay on the top level;
    * ``'cluster1'`` (parents of nodes) .. ``'cluster{L-1}'`` and ``'root'`` (one node), tree edges
      ``(child, 'in', parent)``; the children of a cluster are numbered contiguously;
    * ``pos`` ``[n_type, pe_dim]`` on every type: the Laplacian eigenvectors
      (:func:`~hgattn.encodings.family_laplacian_eigenvectors`) of the graph among siblings: the induced
      subgraph for the nodes of one cluster, the cluster graph (edge weight = number of edges between two
      clusters) for sibling clusters; zeros for the root. Nodes without an edge to a sibling get zeros.

    Args:
        branching: target number of children per inner node, >= 2.
        num_levels: inner levels, root included (>= 1); fix it so that graphs of different sizes share node
            types and batch together (clusters with one child fill the top of small graphs, and the root of
            a large graph takes more than ``branching`` children).
        pe_dim: eigenvectors per position feature (0: no ``pos``).
        method: ``'auto'`` (METIS when ``pymetis`` is importable, else spectral), ``'metis'`` or
            ``'spectral'``.
        seed: seed of the partitioner (same seed, same tree).
        refine_iterations: METIS refinement passes (METIS ``niter``); the spectral method runs
            ``SPECTRAL_ITERATIONS`` times as many power iterations per bisection.
    """

    def __init__(self, branching: int = 16, num_levels: int | None = None, pe_dim: int = 4,
                 method: str = "auto", seed: int = 0, refine_iterations: int = 1) -> None:
        if branching < 2:
            raise ValueError(f"GraphHierarchy: branching must be >= 2, got {branching}")
        if num_levels is not None and num_levels < 1:
            raise ValueError(f"GraphHierarchy: num_levels must be >= 1, got {num_levels}")
        if pe_dim < 0:
            raise ValueError(f"GraphHierarchy: pe_dim must be >= 0, got {pe_dim}")
        if method not in METHODS:
            raise ValueError(f"GraphHierarchy: method must be one of {METHODS}, got {method!r}")
        if method == "metis" and not _has_pymetis():
            raise ImportError("GraphHierarchy(method='metis') needs pymetis: pip install pymetis")
        if refine_iterations < 1:
            raise ValueError(f"GraphHierarchy: refine_iterations must be >= 1, got {refine_iterations}")
        self.branching, self.num_levels, self.pe_dim = branching, num_levels, pe_dim
        self.method, self.seed, self.refine_iterations = method, seed, refine_iterations

    def forward(self, data: Data) -> HeteroData:
        num_nodes = _num_nodes(data)
        edge_index = _edge_index(data, num_nodes)
        graph = partition_graph(edge_index, num_nodes)
        labels, family_edges = partition_levels(graph, num_nodes, self.branching, self.num_levels,
                                                self._method(), self.seed, self.refine_iterations)
        out = copy_graph(data, num_nodes)
        _add_tree(out, labels)
        if self.pe_dim:
            _add_positions(out, family_edges, labels, self.pe_dim)
        return out

    def _method(self) -> str:
        if self.method == "auto":
            return "metis" if _has_pymetis() else "spectral"
        return self.method

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(branching={self.branching}, num_levels={self.num_levels}, "
                f"pe_dim={self.pe_dim}, method={self.method!r}, seed={self.seed}, "
                f"refine_iterations={self.refine_iterations})")


# ---------------------------------------------------------------------- input
def _has_pymetis() -> bool:
    return importlib.util.find_spec("pymetis") is not None


def _num_nodes(data: Data) -> int:
    if not isinstance(data, Data):
        raise ValueError(f"GraphHierarchy expects a torch_geometric Data object, got {type(data).__name__}")
    num_nodes = data.num_nodes
    if not num_nodes:
        raise ValueError("GraphHierarchy: empty graph (no nodes)")
    return int(num_nodes)


def _edge_index(data: Data, num_nodes: int) -> Tensor:
    edge_index = data.edge_index
    if edge_index is None:
        return torch.zeros(2, 0, dtype=torch.long)
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
        raise ValueError(f"GraphHierarchy: edge_index must be an integer tensor [2, E], got "
                         f"{edge_index.dtype} {list(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"GraphHierarchy: edge_index holds node ids outside [0, {num_nodes})")
    return edge_index.long().cpu()


def partition_graph(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The graph the partitioner sees: ``[2, E']`` undirected, coalesced, sorted by source, no self-loops.

    Same result as PyG's ``to_undirected`` after ``remove_self_loops``, with one sort of ``row * n + col`` keys
    (half the time and memory).
    """
    row, col = remove_self_loops(edge_index)[0]
    key = torch.unique(torch.cat([row * num_nodes + col, col * num_nodes + row]))
    return torch.stack([key // num_nodes, key % num_nodes])


# ---------------------------------------------------------------------- partitioning
def level_capacities(num_nodes: int, branching: int, num_levels: int | None) -> list[int]:
    """Leaf capacity of a cluster per cluster level, top level first: ``[b^(L-1), ..., b]``."""
    if num_levels is None:
        num_levels, capacity = 1, branching
        while capacity < num_nodes:
            num_levels, capacity = num_levels + 1, capacity * branching
    return [branching ** j for j in range(num_levels - 1, 0, -1)]


def partition_levels(edge_index: Tensor, num_nodes: int, branching: int, num_levels: int | None = None,
                     method: str = "metis", seed: int = 0,
                     refine_iterations: int = 1) -> tuple[list[Tensor], list[Tensor]]:
    """Cluster of every node at each cluster level, finest first, and the edges inside each level's families.

    Args:
        edge_index: ``[2, E]`` graph from :func:`partition_graph`.
        num_nodes: ``n``.
        branching, num_levels, method, seed, refine_iterations: as in :class:`GraphHierarchy`
            (``method`` is ``'metis'`` or ``'spectral'``).

    Returns:
        ``labels``: ``L - 1`` tensors ``[n]``; ``labels[0]`` is each node's ``cluster1``, ``labels[-1]`` its
        top cluster. Clusters of one level are numbered ``0 .. C-1``, children of one parent contiguously.
        ``family_edges``: ``L`` tensors ``[2, E_j]``, the edges of ``edge_index`` that stay inside one cluster
        of level ``j + 1`` (``j = 0``: inside a ``cluster1``; ``j = L - 1``: inside the root, all of them).
    """
    split = {"metis": _metis_parts, "spectral": _spectral_parts}[method]
    label, labels = torch.zeros(num_nodes, dtype=torch.long), []
    edges, family_edges = edge_index, [edge_index]
    for capacity in level_capacities(num_nodes, branching, num_levels):
        parts = -(-torch.bincount(label) // capacity)
        local = split(label, parts, edges, seed, refine_iterations)
        label = torch.unique(label * (int(local.max()) + 1) + local, return_inverse=True)[1]
        edges = edges[:, label[edges[0]] == label[edges[1]]]
        labels.append(label)
        family_edges.append(edges)
    return labels[::-1], family_edges[::-1]


def _cluster_csr(label: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Nodes sorted by cluster and the edges (all inside clusters) as one CSR over that order (local columns).

    ``edge_index`` must be sorted by source node (as :func:`partition_graph` returns it, or any subset of it):
    each node's edges are then one slice, moved as a block without sorting the edges.

    Returns ``order`` (node at each sorted position), ``start`` and ``size`` per cluster, ``ptr`` ``[n+1]``
    and ``col`` (each edge's target, as its index within the cluster).
    """
    num_nodes = label.numel()
    order = torch.argsort(label, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(num_nodes)
    size = torch.bincount(label)
    start = torch.cumsum(size, 0) - size
    degree = torch.bincount(edge_index[0], minlength=num_nodes)
    first_edge = torch.cumsum(degree, 0) - degree
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(degree[order], 0)
    edge = torch.repeat_interleave(first_edge[order] - ptr[:-1], degree[order], output_size=edge_index.size(1))
    target = edge_index[1][edge.add_(torch.arange(edge_index.size(1)))]
    return order, start, size, ptr, position[target] - start[label[target]]


def _metis_parts(label: Tensor, parts: Tensor, edge_index: Tensor, seed: int, iterations: int) -> Tensor:
    """Split cluster ``c`` into ``parts[c]`` balanced parts with METIS; ``[n]`` part of each node.

    ``edge_index`` holds the edges inside the clusters only (both directions).
    """
    import pymetis

    order, start, size, ptr, col = _cluster_csr(label, edge_index)
    ptr_np, col_np = ptr.numpy(), col.numpy().astype(np.int32)
    local = np.zeros(label.numel(), dtype=np.int64)
    options = pymetis.Options(seed=seed, niter=iterations)
    for cluster in (parts > 1).nonzero().view(-1).tolist():
        s0, s1 = int(start[cluster]), int(start[cluster] + size[cluster])
        adjacency = pymetis.CSRAdjacency((ptr_np[s0:s1 + 1] - ptr_np[s0]).astype(np.int32),
                                         col_np[ptr_np[s0]:ptr_np[s1]])
        local[s0:s1] = pymetis.part_graph(int(parts[cluster]), adjacency, recursive=True, options=options)[1]
    out = torch.empty_like(label)
    out[order] = torch.from_numpy(local)
    return out


def _spectral_parts(label: Tensor, parts: Tensor, edge_index: Tensor, seed: int, iterations: int) -> Tensor:
    """Split cluster ``c`` into ``parts[c]`` parts by recursive spectral bisection; ``[n]`` part of each node.

    A segment that must become ``m`` parts is cut at the ``floor(m/2)/m`` quantile of its approximate Fiedler
    vector into segments of ``floor(m/2)`` and ``m - floor(m/2)`` parts, all segments at once. Part ids are
    distinct across clusters.
    """
    generator = torch.Generator().manual_seed(seed)
    segment, todo = label.clone(), parts.clone()
    while bool((todo > 1).any()):
        value = _fiedler(segment, edge_index, todo > 1, SPECTRAL_ITERATIONS * iterations, generator)
        order = torch.argsort(value, stable=True)
        order = order[torch.argsort(segment[order], stable=True)]
        size = torch.bincount(segment, minlength=todo.numel())
        start = torch.cumsum(size, 0) - size
        rank = torch.empty_like(segment)
        rank[order] = torch.arange(segment.numel()) - start[segment[order]]
        left = todo // 2
        cut = (size * left) // todo.clamp(min=1)
        right = (rank >= cut[segment]) & (todo[segment] > 1)
        segment = segment * 2 + right.long()
        todo = torch.stack([torch.where(todo > 1, left, todo), torch.where(todo > 1, todo - left, 0)], 1)
        todo = todo.view(-1)
    return torch.unique(segment, return_inverse=True)[1]


def _fiedler(segment: Tensor, edge_index: Tensor, active: Tensor, iterations: int,
             generator: torch.Generator) -> Tensor:
    """Approximate second eigenvector of each segment's lazy normalised adjacency (power iteration).

    Every segment's graph gets self-loops, so an isolated node is its own component; the top eigenvector
    ``sqrt(degree)`` of each segment is projected out at every step.
    """
    row, col = edge_index
    keep = (segment[row] == segment[col]) & active[segment[row]]
    row, col = row[keep], col[keep]
    num_nodes = segment.numel()
    degree = torch.bincount(row, minlength=num_nodes).double() + 1.0
    top = degree.sqrt()
    top = top / _segment_dot(degree, torch.ones_like(degree), segment, active.numel()).sqrt()
    inv_sqrt = degree.rsqrt()
    x = torch.rand(num_nodes, generator=generator, dtype=torch.float64) - 0.5
    for _ in range(iterations):
        x = x - _segment_dot(x, top, segment, active.numel()) * top
        spread = torch.zeros_like(x).index_add_(0, row, (x * inv_sqrt)[col]) * inv_sqrt + x / degree
        x = 0.5 * (x + spread)
        x = x / x.abs().max().clamp(min=1e-300)
    return x


def _segment_dot(x: Tensor, y: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    return torch.zeros(num_segments, dtype=x.dtype).index_add_(0, segment, x * y)[segment]


# ---------------------------------------------------------------------- output
def copy_graph(data: Data, num_nodes: int, leaf_type: str = "node") -> HeteroData:
    """A ``HeteroData`` holding ``data`` as leaf type ``leaf_type``: node attributes on it (``pos`` renamed
    ``input_pos``), edges and edge attributes on ``(leaf_type, 'to', leaf_type)``, the rest graph-level."""
    out = HeteroData()
    out[leaf_type].num_nodes = num_nodes
    for key, value in data.items():
        if key == "num_nodes":
            continue
        if key == "edge_index" or data.is_edge_attr(key):
            out[leaf_type, "to", leaf_type][key] = value
        elif data.is_node_attr(key):
            out[leaf_type]["input_pos" if key == "pos" else key] = value
        else:
            out[key] = value
    return out


def _add_tree(out: HeteroData, labels: list[Tensor]) -> None:
    """Cluster types and tree edges from the per-level node labels (finest first)."""
    names = ["node"] + [f"cluster{j}" for j in range(1, len(labels) + 1)] + ["root"]
    child_of = labels + [torch.zeros(out["node"].num_nodes, dtype=torch.long)]
    below = torch.arange(out["node"].num_nodes)
    for level, above in enumerate(child_of):
        count = int(above.max()) + 1
        out[names[level + 1]].num_nodes = count
        parent = torch.empty(int(below.max()) + 1, dtype=torch.long)
        parent[below] = above
        edge_index = torch.stack([torch.arange(parent.numel()), parent])
        out[names[level], "in", names[level + 1]].edge_index = edge_index
        below = above


def _add_positions(out: HeteroData, family_edges: list[Tensor], labels: list[Tensor], dim: int) -> None:
    """Laplacian eigenvectors of each family's graph as ``pos`` on every node type (zeros for the root).

    Edges between two sibling clusters count as parallel edges (their weight is the number of edges).
    """
    names = ["node"] + [f"cluster{j}" for j in range(1, len(labels) + 1)]
    unit = torch.arange(out["node"].num_nodes)
    for level, name in enumerate(names):
        family = out[name, "in", names[level + 1] if level + 1 < len(names) else "root"].edge_index[1]
        child_edges = unit[family_edges[level]]
        out[name].pos = family_laplacian_eigenvectors(family, child_edges, dim)
        if level < len(labels):
            unit = labels[level]
    out["root"].pos = torch.zeros(1, dim)


def edge_cut(edge_index: Tensor, cluster: Tensor) -> int:
    """Number of undirected edges whose end nodes lie in different clusters (``edge_index`` both ways)."""
    row, col = remove_self_loops(edge_index)[0]
    return int((cluster[row] != cluster[col]).sum()) // 2


def branching_statistics(data: HeteroData) -> dict[str, dict[str, Any]]:
    """Per tree edge type: number of parents, and min / mean / max children per parent."""
    stats = {}
    for edge_type in data.edge_types:
        if edge_type[1] != "in":
            continue
        counts = torch.bincount(data[edge_type].edge_index[1], minlength=data[edge_type[2]].num_nodes)
        stats[f"{edge_type[0]}->{edge_type[2]}"] = {
            "parents": counts.numel(), "min": int(counts.min()), "mean": float(counts.double().mean()),
            "max": int(counts.max())}
    return stats
