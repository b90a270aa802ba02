"""Molecules as trees: molecule -> junction-tree cliques (rings, bonds) -> atoms."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from ..encodings import family_laplacian_eigenvectors

__all__ = ["MoleculeHierarchy", "junction_cliques", "smiles_to_graph"]

MOLECULE_INSTALL = "pip install rdkit ogb"


def _rdkit() -> Any:
    try:
        from rdkit import Chem
    except ImportError as error:
        raise ImportError(f"MoleculeHierarchy needs rdkit: {MOLECULE_INSTALL}") from error
    return Chem


def smallest_rings(bonds: list[tuple[int, int]], num_atoms: int) -> list[list[int]]:
    """rdkit's symmetrised smallest set of smallest rings (``GetSymmSSSR``) of a bond graph, atoms sorted."""
    chem = _rdkit()
    skeleton = chem.RWMol()
    for _ in range(num_atoms):
        skeleton.AddAtom(chem.Atom(0))
    for u, v in bonds:
        skeleton.AddBond(u, v, chem.BondType.SINGLE)
    return [sorted(ring) for ring in chem.GetSymmSSSR(skeleton)]


def junction_cliques(edge_index: Tensor, num_atoms: int) -> list[list[int]]:
    """The cliques of a molecule's junction tree (as JT-VAE and PyG's ``tree_decomposition``).

    Rings (symmetrised SSSR) sharing more than two atoms merge into one clique (bridged systems); every bond
    outside a ring is a 2-atom clique; an atom without bonds is a 1-atom clique. Order: rings by their atoms,
    then bonds by their atoms, then lone atoms.

    Args:
        edge_index: ``[2, E]`` bonds (one or both directions).
        num_atoms: number of atoms.
    """
    pairs = edge_index.t().tolist()
    bonds = sorted({(min(u, v), max(u, v)) for u, v in pairs if u != v})
    rings = _merge_bridged(smallest_rings(bonds, num_atoms))
    ring_of = [set() for _ in range(num_atoms)]
    for index, ring in enumerate(rings):
        for atom in ring:
            ring_of[atom].add(index)
    chain_bonds = [[u, v] for u, v in bonds if not ring_of[u] & ring_of[v]]
    bonded = {atom for bond in bonds for atom in bond}
    return sorted(rings) + chain_bonds + [[atom] for atom in range(num_atoms) if atom not in bonded]


def _merge_bridged(rings: list[list[int]]) -> list[list[int]]:
    """Merge rings that share more than two atoms, until no two do."""
    sets = [set(ring) for ring in rings]
    merged = True
    while merged:
        merged = False
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                if len(sets[i] & sets[j]) > 2:
                    sets[i] |= sets.pop(j)
                    merged = True
                    break
            if merged:
                break
    return [sorted(ring) for ring in sets]


def smiles_to_graph(smiles: str) -> Data:
    """A molecule ``Data`` with OGB's exact features (``x`` ``[n, 9]``, ``edge_attr`` ``[E, 3]``, long).

    Raises:
        ValueError: if rdkit cannot parse ``smiles``.
    """
    chem = _rdkit()
    from rdkit import rdBase

    try:
        from ogb.utils.features import atom_to_feature_vector, bond_to_feature_vector
    except ImportError as error:
        raise ImportError(f"SMILES input needs ogb's feature functions: {MOLECULE_INSTALL}") from error
    with rdBase.BlockLogs():
        mol = chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"MoleculeHierarchy: rdkit cannot parse the SMILES {smiles!r}")
    x = torch.tensor([atom_to_feature_vector(atom) for atom in mol.GetAtoms()], dtype=torch.long)
    edges, features = [], []
    for bond in mol.GetBonds():
        u, v, feature = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_to_feature_vector(bond)
        edges += [(u, v), (v, u)]
        features += [feature, feature]
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t()
    edge_attr = torch.tensor(features, dtype=torch.long).reshape(-1, 3)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.size(0), smiles=smiles)


class MoleculeHierarchy(BaseTransform):
    r"""Builds the tree molecule -> junction-tree cliques -> atoms of a molecular graph.

    Cliques are those of :func:`junction_cliques` (rings, bridged ring systems, chain bonds, lone atoms). An atom
    can lie in several cliques (a ring fusion atom, the two ends of a bond); to get a tree, **each atom goes to
    the first clique holding it**, rings before bonds, so ring atoms stay with a ring and a chain atom with the
    first bond that holds it. Cliques left without an atom (e.g. a bond between two ring atoms) are dropped;
    the bond itself stays in the ``('atom', 'bond', 'atom')`` edges.

    Output ``HeteroData``:

    * ``atom`` ``[n]``: the input's ``x`` (OGB's 9 categorical features for OGB data and SMILES), in the input's
      order, and ``pos`` ``[n, pos_dim]``: Laplacian eigenvectors of the bond graph among its clique siblings;
    * ``clique`` ``[c]``: ``pos`` ``[c, pos_dim]``: Laplacian eigenvectors of the clique graph (two cliques
      are adjacent when a bond joins their atoms); ``molecule`` ``[1]``: zero ``pos``;
    * tree edges ``('atom', 'in', 'clique')``, ``('clique', 'in', 'molecule')``; the bonds as
      ``('atom', 'bond', 'atom')`` with ``edge_attr``; graph attributes (``y``, ``smiles``, ...) are kept.

    Works on a molecule ``Data`` (``x``, ``edge_index``, optional ``edge_attr``; e.g. OGB's ``ogbg-mol*``) and on
    SMILES through :meth:`from_smiles` (rdkit and ogb).

    Args:
        pos_dim: number of Laplacian eigenvectors per position.
    """

    def __init__(self, pos_dim: int = 4) -> None:
        if pos_dim < 1:
            raise ValueError(f"pos_dim must be >= 1, got {pos_dim}")
        self.pos_dim = pos_dim

    def forward(self, data: Data) -> HeteroData:
        """The tree of one molecular graph."""
        return self.build_many([data])[0]

    def from_smiles(self, smiles: str) -> HeteroData:
        """The tree of a SMILES string (OGB's atom and bond features)."""
        return self(smiles_to_graph(smiles))

    def build_many(self, graphs: Sequence[Data]) -> list[HeteroData]:
        """The trees of many molecules; their position features come from one batched eigensolve per kind.

        Same trees as applying the transform to each graph (which calls this with one graph), much faster
        for a whole dataset.
        """
        atom_cliques = [_atom_cliques(graph) for graph in graphs]
        num_atoms = [cliques.numel() for cliques in atom_cliques]
        num_cliques = [int(cliques.max()) + 1 for cliques in atom_cliques]
        families = _shifted(atom_cliques, num_cliques)
        bonds = _shifted([graph.edge_index for graph in graphs], num_atoms)
        atom_pos = family_laplacian_eigenvectors(families, bonds, self.pos_dim).split(num_atoms)
        clique_family = torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(num_cliques))
        clique_pos = family_laplacian_eigenvectors(clique_family, _clique_edges(families, bonds),
                                                   self.pos_dim).split(num_cliques)
        return [self._tree(*parts) for parts in zip(graphs, atom_cliques, atom_pos, clique_pos)]

    def _tree(self, graph: Data, atom_clique: Tensor, atom_pos: Tensor, clique_pos: Tensor) -> HeteroData:
        out = HeteroData()
        out["atom"].num_nodes = atom_clique.numel()
        for key, value in graph.items():
            if key == "x":
                out["atom"].x = value
            elif key not in ("edge_index", "edge_attr", "num_nodes"):
                setattr(out, key, value)
        out["atom"].pos = atom_pos
        out["atom", "bond", "atom"].edge_index = graph.edge_index
        if graph.edge_attr is not None:
            out["atom", "bond", "atom"].edge_attr = graph.edge_attr
        out["atom", "in", "clique"].edge_index = torch.stack([torch.arange(atom_clique.numel()), atom_clique])
        num_cliques = clique_pos.size(0)
        out["clique"].num_nodes = num_cliques
        out["clique"].pos = clique_pos
        out["clique", "in", "molecule"].edge_index = torch.stack(
            [torch.arange(num_cliques), torch.zeros(num_cliques, dtype=torch.long)])
        out["molecule"].num_nodes = 1
        out["molecule"].pos = torch.zeros(1, self.pos_dim)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(pos_dim={self.pos_dim})"


def _atom_cliques(graph: Data) -> Tensor:
    """``[n]`` clique row of each atom (see :class:`MoleculeHierarchy`), after checking the graph."""
    num_atoms = graph.num_nodes
    if not num_atoms or graph.edge_index is None:
        raise ValueError("MoleculeHierarchy: the molecule has no atoms or no edge_index")
    if graph.edge_index.numel() and int(graph.edge_index.max()) >= num_atoms:
        raise ValueError(f"MoleculeHierarchy: edge_index points past the {num_atoms} atoms")
    return _assign_atoms(junction_cliques(graph.edge_index, num_atoms), num_atoms)


def _assign_atoms(cliques: list[list[int]], num_atoms: int) -> Tensor:
    """``[n]`` clique row of each atom: its first clique; cliques without an atom are dropped, rows renumbered."""
    first = [-1] * num_atoms
    for index in range(len(cliques) - 1, -1, -1):
        for atom in cliques[index]:
            first[atom] = index
    row = {clique: rank for rank, clique in enumerate(sorted(set(first)))}
    return torch.tensor([row[clique] for clique in first], dtype=torch.long)


def _clique_edges(atom_clique: Tensor, edge_index: Tensor) -> Tensor:
    """``[2, E']`` edges of the clique graph (a bond joins atoms of two cliques), both directions, unique.

    ``atom_clique`` ``[n]`` and ``edge_index`` ``[2, E]`` may hold many molecules with global ids."""
    pairs = atom_clique[edge_index]
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.unique(torch.cat([pairs, pairs.flip(0)], 1), dim=1)


def _shifted(parts: Sequence[Tensor], sizes: Sequence[int]) -> Tensor:
    """Concatenate index tensors, shifting part ``i`` by the sum of ``sizes[:i]``."""
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
    return torch.cat([part + offset for part, offset in zip(parts, offsets)], dim=-1)
