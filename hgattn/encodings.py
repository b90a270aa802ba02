"""Position encodings of a node among its siblings, one kind per family domain (spec section 6).

A family's children share one domain, and each child carries an embedding ``eps(B)`` of its position there:

* sequence: :func:`sinusoidal` (fixed) or :class:`FourierFeatures` (learnable);
* grid: :func:`grid_sinusoidal`;
* graph: :func:`laplacian_eigenvectors` (one graph), :func:`family_laplacian_eigenvectors` (many small graphs
  at once) or :func:`random_walk_encoding`;
* unordered set: none, :func:`set_encoding` gives the empty ``[n, 0]`` tensor;
* key-value set: :class:`KeyEmbedding`, one learned vector per key.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE

__all__ = ["sinusoidal", "grid_sinusoidal", "FourierFeatures", "canonical_sign", "laplacian_eigenvectors",
           "family_laplacian_eigenvectors", "random_walk_encoding", "set_encoding", "KeyEmbedding"]

#: Graphs up to this many nodes get a dense eigendecomposition; larger ones use scipy's sparse ``eigsh``.
DENSE_EIGEN_LIMIT = 2000
#: Most entries of one batch of dense Laplacians (``families x size x size``).
DENSE_BLOCK_BUDGET = 1 << 22
#: Laplacian diagonal entry of an isolated node: outside the spectrum ``[0, 2]`` of the other nodes.
ISOLATED = 3.0


def sinusoidal(position: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer sinusoidal encoding of 1-D positions.

    Args:
        position: ``[n]`` positions (integer or real).
        dim: encoding width, even.
        base: wavelength base; frequencies are ``base ** (-2 i / dim)``.

    Returns:
        ``[n, dim]`` float tensor, ``[sin(p w_0), cos(p w_0), sin(p w_1), cos(p w_1), ...]``.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal: dim must be a positive even number, got {dim}")
    if position.dim() != 1:
        raise ValueError(f"sinusoidal: position must be 1-D [n], got shape {list(position.shape)}")
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=position.device) / dim)
    angle = position.float()[:, None] * freq[None, :]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(position.numel(), dim)


def grid_sinusoidal(row: Tensor, col: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """2-D sinusoidal encoding: the first half encodes the row, the second half the column.

    Args:
        row, col: ``[n]`` grid coordinates.
        dim: encoding width, a multiple of 4.

    Returns:
        ``[n, dim]`` float tensor.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"grid_sinusoidal: dim must be a positive multiple of 4, got {dim}")
    if row.shape != col.shape:
        raise ValueError(f"grid_sinusoidal: row and col shapes differ: {list(row.shape)} vs "
                         f"{list(col.shape)}")
    return torch.cat([sinusoidal(row, dim // 2, base), sinusoidal(col, dim // 2, base)], dim=-1)


class FourierFeatures(nn.Module):
    r"""Learnable Fourier features (Li et al., NeurIPS 2021) of ``in_dim``-dimensional positions.

    ``out = MLP(D^{-1/2} [cos(x W^T), sin(x W^T)])`` with ``W`` ``[D/2, in_dim]`` initialised from
    ``N(0, sigma^-2)`` and a two-layer GELU MLP; every weight is learned.

    Args:
        in_dim: position dimensions (1 for sequences, 2 for grids).
        out_dim: encoding width.
        num_features: ``D``, number of Fourier features (even).
        hidden_dim: MLP hidden width.
        sigma: initial length scale of the frequencies.
    """

    def __init__(self, in_dim: int, out_dim: int, num_features: int = 64, hidden_dim: int = 64,
                 sigma: float = 1.0) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or hidden_dim < 1:
            raise ValueError(f"FourierFeatures: in_dim, out_dim and hidden_dim must be >= 1, got "
                             f"{in_dim}, {out_dim}, {hidden_dim}")
        if num_features < 2 or num_features % 2:
            raise ValueError(f"FourierFeatures: num_features must be an even number >= 2, got {num_features}")
        if sigma <= 0:
            raise ValueError(f"FourierFeatures: sigma must be > 0, got {sigma}")
        self.in_dim, self.out_dim, self.num_features, self.sigma = in_dim, out_dim, num_features, sigma
        self.freq = nn.Linear(in_dim, num_features // 2, bias=False)
        self.mlp = nn.Sequential(nn.Linear(num_features, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.freq.weight, std=1.0 / self.sigma)
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()

    def forward(self, position: Tensor) -> Tensor:
        """``[n]`` or ``[n, in_dim]`` positions -> ``[n, out_dim]``."""
        if position.dim() == 1:
            position = position[:, None]
        if position.dim() != 2 or position.size(1) != self.in_dim:
            raise ValueError(f"FourierFeatures: expected positions [n, {self.in_dim}], got "
                             f"{list(position.shape)}")
        angle = self.freq(position.to(self.freq.weight.dtype))
        features = torch.cat([angle.cos(), angle.sin()], dim=-1) / math.sqrt(self.num_features)
        return self.mlp(features)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_dim}, {self.out_dim}, num_features={self.num_features}, "
                f"hidden_dim={self.mlp[0].out_features}, sigma={self.sigma})")


def canonical_sign(vectors: Tensor, tolerance: float = 1e-6) -> Tensor:
    """Flip each column so that its entry of largest magnitude is positive.

    ``vectors`` is ``[..., n, k]`` (columns are eigenvectors). Entries within ``tolerance`` of the largest
    magnitude count as tied and the first of them decides, so rounding noise does not pick the sign. A graph
    with a symmetry can still leave the sign ambiguous (an eigenvector and its mirror image); no rule fixes
    that.
    """
    magnitude = vectors.abs()
    tied = magnitude >= magnitude.amax(dim=-2, keepdim=True) - tolerance
    index = tied.byte().argmax(dim=-2, keepdim=True)
    sign = torch.gather(vectors, -2, index).sign()
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


def laplacian_eigenvectors(edge_index: Tensor, num_nodes: int, k: int,
                           edge_weight: Tensor | None = None) -> Tensor:
    """Laplacian eigenvector encoding of one undirected graph (as PyG's ``AddLaplacianEigenvectorPE``).

    The ``k`` eigenvectors of the symmetric normalised Laplacian ``I - D^-1/2 A D^-1/2`` with the smallest
    eigenvalues after the first, signs fixed by :func:`canonical_sign` instead of drawn at random. Isolated
    nodes get zero rows and the other nodes the encoding of the graph without them; columns beyond the
    number of eigenvectors available are zero. Graphs over :data:`DENSE_EIGEN_LIMIT` nodes use
    ``scipy.sparse.linalg.eigsh`` (scipy needed).

    Args:
        edge_index: ``[2, E]`` edges, both directions present; self-loops are ignored.
        num_nodes: ``n``.
        k: number of eigenvectors.
        edge_weight: optional ``[E]`` non-negative weights (parallel edges add up).

    Returns:
        ``[n, k]`` float tensor.
    """
    _check_graph(edge_index, num_nodes, k)
    if num_nodes <= DENSE_EIGEN_LIMIT:
        one_family = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
        return family_laplacian_eigenvectors(one_family, edge_index, k, edge_weight)
    src, dst, weight = _weighted_edges(edge_index.cpu(), None if edge_weight is None else edge_weight.cpu())
    return _sparse_eigenvectors(src, dst, weight, num_nodes, k).to(edge_index.device)


def family_laplacian_eigenvectors(family: Tensor, edge_index: Tensor, k: int,
                                  edge_weight: Tensor | None = None) -> Tensor:
    """:func:`laplacian_eigenvectors` of many small graphs at once, one per family (batched dense ``eigh``).

    Computed on the CPU; the result is on ``family``'s device.

    Args:
        family: ``[n]`` family id of each node; a family's nodes keep their relative order.
        edge_index: ``[2, E]`` undirected edges (both directions); edges between two families are ignored.
        k: eigenvectors per node.
        edge_weight: optional ``[E]`` non-negative weights (parallel edges add up).

    Returns:
        ``[n, k]`` float tensor; a family of ``s`` connected nodes fills ``min(k, s - 1)`` columns, the rest
        are zero.
    """
    num_nodes = family.numel()
    _check_graph(edge_index, num_nodes, k)
    device = family.device
    family, edge_index = family.cpu(), edge_index.cpu()
    edge_weight = None if edge_weight is None else edge_weight.cpu()
    out = torch.zeros(num_nodes, k, dtype=torch.float32)
    if num_nodes == 0:
        return out.to(device)
    order = torch.argsort(family, stable=True)
    sizes = torch.bincount(family)
    start = torch.cumsum(sizes, 0) - sizes
    local = torch.empty_like(family)
    local[order] = torch.arange(num_nodes) - start[family[order]]
    src, dst, weight = _weighted_edges(edge_index, edge_weight)
    keep = family[src] == family[dst]
    src, dst, weight = src[keep], dst[keep], weight[keep]
    for size in torch.unique(sizes[sizes > 1]).tolist():
        families = (sizes == size).nonzero().view(-1)
        if size > DENSE_EIGEN_LIMIT:
            for f in families.tolist():
                nodes = order[start[f]:start[f] + size]
                mine = family[src] == f
                out[nodes] = _sparse_eigenvectors(local[src[mine]], local[dst[mine]], weight[mine], size, k)
            continue
        per_chunk = max(1, DENSE_BLOCK_BUDGET // (size * size))
        for chunk in families.split(per_chunk):
            nodes = order[(start[chunk][:, None] + torch.arange(size)).view(-1)]
            out[nodes] = _dense_eigenvectors(chunk, family, local, size, src, dst, weight, k)
    return out.to(device)


def _weighted_edges(edge_index: Tensor, edge_weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Edges without self-loops and their float64 weights (ones by default)."""
    weight = (torch.ones(edge_index.size(1), dtype=torch.float64) if edge_weight is None
              else edge_weight.to(torch.float64))
    keep = edge_index[0] != edge_index[1]
    return edge_index[0, keep], edge_index[1, keep], weight[keep]


def _normalized_laplacian(adj: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., s, s]`` adjacency -> ``I - D^-1/2 A D^-1/2`` with :data:`ISOLATED` on isolated nodes' diagonal
    (beyond the spectrum, so their unit eigenvectors sort last and never mix with the others), and the
    ``[..., s]`` mask of isolated nodes."""
    degree = adj.sum(-1)
    isolated = degree <= 0
    inv_sqrt = torch.where(isolated, torch.zeros_like(degree), degree.clamp(min=1e-300).rsqrt())
    diagonal = torch.where(isolated, torch.full_like(degree, ISOLATED), torch.ones_like(degree))
    return torch.diag_embed(diagonal) - inv_sqrt[..., :, None] * adj * inv_sqrt[..., None, :], isolated


def _dense_eigenvectors(families: Tensor, family: Tensor, local: Tensor, size: int, src: Tensor, dst: Tensor,
                        weight: Tensor, k: int) -> Tensor:
    """Eigenvectors of ``families`` (all of ``size`` nodes): ``[F * size, k]`` by (family, local)."""
    slot = torch.full((int(family.max()) + 1,), -1, dtype=torch.long)
    slot[families] = torch.arange(families.numel())
    mine = slot[family[src]] >= 0
    adj = torch.zeros(families.numel(), size, size, dtype=torch.float64)
    index = (slot[family[src[mine]]], local[src[mine]], local[dst[mine]])
    adj.index_put_(index, weight[mine], accumulate=True)
    lap, isolated = _normalized_laplacian(adj)
    vectors = canonical_sign(torch.linalg.eigh(lap)[1][:, :, 1:k + 1])
    out = torch.zeros(families.numel(), size, k, dtype=torch.float32)
    out[:, :, :vectors.size(-1)] = vectors.float()
    out[isolated] = 0.0
    return out.reshape(-1, k)


def _sparse_eigenvectors(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int, k: int) -> Tensor:
    """The same encoding as :func:`_dense_eigenvectors` for one large graph, with ``scipy``'s ``eigsh``."""
    import numpy as np
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import eigsh

    adj = coo_matrix((weight.numpy(), (src.numpy(), dst.numpy())), shape=(num_nodes, num_nodes)).tocsr()
    degree = np.asarray(adj.sum(axis=1)).ravel()
    isolated = degree <= 0
    inv_sqrt = np.where(isolated, 0.0, 1.0 / np.sqrt(np.where(isolated, 1.0, degree)))
    lap = diags(np.where(isolated, ISOLATED, 1.0)) - diags(inv_sqrt) @ adj @ diags(inv_sqrt)
    count = min(k + 1, num_nodes - 1)
    values, vectors = eigsh(lap, k=count, which="SA")
    vectors = canonical_sign(torch.from_numpy(vectors[:, np.argsort(values)])[:, 1:])
    out = torch.zeros(num_nodes, k, dtype=torch.float32)
    out[:, :vectors.size(1)] = vectors.float()
    out[torch.from_numpy(isolated)] = 0.0
    return out


def _check_graph(edge_index: Tensor, num_nodes: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index holds node ids outside [0, {num_nodes})")


def random_walk_encoding(edge_index: Tensor, num_nodes: int, walk_length: int,
                         edge_weight: Tensor | None = None) -> Tensor:
    """Random-walk structural encoding (PyG's ``AddRandomWalkPE``): return probabilities after 1..L steps.

    Returns:
        ``[n, walk_length]`` float tensor.
    """
    _check_graph(edge_index, num_nodes, walk_length)
    data = Data(edge_index=edge_index, edge_weight=edge_weight, num_nodes=num_nodes)
    return AddRandomWalkPE(walk_length, attr_name="pe")(data).pe


def set_encoding(num_nodes: int) -> Tensor:
    """Members of an unordered set have no position: the empty ``[n, 0]`` encoding."""
    if num_nodes < 0:
        raise ValueError(f"set_encoding: num_nodes must be >= 0, got {num_nodes}")
    return torch.zeros(num_nodes, 0)


class KeyEmbedding(nn.Module):
    """One learned vector per key, for the children of a key-value family (e.g. ``'image'``, ``'title'``).

    Args:
        keys: the key vocabulary, distinct.
        dim: embedding width.
    """

    def __init__(self, keys: Sequence[str], dim: int) -> None:
        super().__init__()
        keys = list(keys)
        if not keys:
            raise ValueError("KeyEmbedding: no keys given")
        if len(set(keys)) != len(keys):
            raise ValueError(f"KeyEmbedding: keys must be distinct, got {keys}")
        if dim < 1:
            raise ValueError(f"KeyEmbedding: dim must be >= 1, got {dim}")
        self.keys = keys
        self.index = {key: i for i, key in enumerate(keys)}
        self.embedding = nn.Embedding(len(keys), dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()

    def key_ids(self, keys: Sequence[str]) -> Tensor:
        """``[n]`` ids of the given key names; an unknown key raises ``ValueError``."""
        unknown = [key for key in keys if key not in self.index]
        if unknown:
            raise ValueError(f"KeyEmbedding: unknown key {unknown[0]!r}; known keys: {self.keys}")
        return torch.tensor([self.index[key] for key in keys], dtype=torch.long,
                            device=self.embedding.weight.device)

    def forward(self, keys: Sequence[str] | Tensor) -> Tensor:
        """Key names or ``[n]`` key ids -> ``[n, dim]``."""
        ids = keys if isinstance(keys, Tensor) else self.key_ids(keys)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.keys)):
            raise ValueError(f"KeyEmbedding: key ids must lie in [0, {len(self.keys)})")
        return self.embedding(ids)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.keys}, {self.embedding.embedding_dim})"
