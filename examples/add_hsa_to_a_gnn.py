"""Add HSA global attention to an existing PyG model: a GCN on Cora, then the same GCN with an HSAConv branch.

The citation graph is grouped into a tree of clusters by ``GraphHierarchy`` (METIS through pymetis, else
spectral bisection); ``HSAConv`` lets every paper attend to every other one through that tree in linear time,
next to the GCN's neighbourhood messages. Public Planetoid split, test accuracy at the best validation epoch.

    python examples/add_hsa_to_a_gnn.py                      # downloads Cora through PyG
    python examples/add_hsa_to_a_gnn.py --source ../shared/data/planetoid/Cora/raw --quick
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv

from hgattn import Hierarchy
from hgattn.datasets import HierarchicalPlanetoid
from hgattn.nn import HSAConv


class GCN(torch.nn.Module):
    """The model we start from: two GCN layers."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = GCNConv(in_channels, hidden), GCNConv(hidden, num_classes)

    def forward(self, x, edge_index, hierarchy=None, pos=None):
        h = F.dropout(F.relu(self.conv1(F.dropout(x, 0.5, self.training), edge_index)), 0.5, self.training)
        return self.conv2(h, edge_index)


class GCNWithHSA(GCN):
    """The same GCN plus one line of global attention: ``h + HSAConv(h, hierarchy, pos)`` after layer 1."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, pos_channels: int) -> None:
        super().__init__(in_channels, hidden, num_classes)
        self.attn = HSAConv(hidden, hidden // 4, heads=4, pos_channels=pos_channels, root_weight=False)

    def forward(self, x, edge_index, hierarchy=None, pos=None):
        h = F.dropout(F.relu(self.conv1(F.dropout(x, 0.5, self.training), edge_index)), 0.5, self.training)
        h = h + self.attn(h, hierarchy, pos)
        return self.conv2(h, edge_index)


def fit(model: torch.nn.Module, data, hierarchy: Hierarchy, pos: torch.Tensor, epochs: int) -> float:
    """Train full-batch with Adam; test accuracy at the best validation epoch."""
    x, edge_index, y = data["node"].x, data["node", "to", "node"].edge_index, data["node"].y
    masks = data["node"].train_mask, data["node"].val_mask, data["node"].test_mask
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best_valid, best_test = -1.0, 0.0
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x, edge_index, hierarchy, pos)[masks[0]], y[masks[0]]).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(x, edge_index, hierarchy, pos).argmax(-1)
        valid, test = [float((pred[m] == y[m]).float().mean()) for m in masks[1:]]
        if valid > best_valid:
            best_valid, best_test = valid, test
    return best_test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/data/planetoid")
    parser.add_argument("--source", help="folder with Cora's raw ind.cora.* files (else PyG downloads them)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 epochs")
    args = parser.parse_args(argv)
    data = HierarchicalPlanetoid(args.root, "Cora", source=args.source)[0]
    hierarchy = Hierarchy.from_hetero(data)
    pos = hierarchy.node_features({nt: data[nt].pos for nt in data.node_types})
    epochs = 5 if args.quick else args.epochs
    num_features, num_classes = data["node"].x.size(1), int(data["node"].y.max()) + 1
    print(f"Cora: {hierarchy}")
    builders = (
        lambda: GCN(num_features, 64, num_classes),
        lambda: GCNWithHSA(num_features, 64, num_classes, pos.size(1)),
    )
    for build in builders:
        torch.manual_seed(0)
        model = build()
        print(
            f"{type(model).__name__}: test accuracy {fit(model, data, hierarchy, pos, epochs):.3f} "
            f"after {epochs} epochs"
        )


if __name__ == "__main__":
    main()
