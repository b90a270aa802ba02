"""A graph transformer on Cora: GraphHSATransformer (GCN local layers + HSA global attention over the
citation graph's cluster tree, Laplacian positions per family) against PyG's GPSConv with dense attention.

    python examples/graph_transformer_on_cora.py             # downloads Cora through PyG
    python examples/graph_transformer_on_cora.py --source ../shared/data/planetoid/Cora/raw --quick

The same comparison, with checkpoints, seeds and tables: ``hgattn train --task cora --model gps-hsa``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hgattn.datasets import HierarchicalPlanetoid
from hgattn.nn.models import NodeGPS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/data/planetoid")
    parser.add_argument("--source", help="folder with Cora's raw ind.cora.* files (else PyG downloads them)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 epochs")
    args = parser.parse_args(argv)
    data = HierarchicalPlanetoid(args.root, "Cora", source=args.source)[0]
    node = data["node"]
    epochs = 3 if args.quick else args.epochs
    for attention in ("hsa", "dense"):
        torch.manual_seed(0)
        model = NodeGPS(
            node.x.size(1),
            64,
            int(node.y.max()) + 1,
            attention,
            heads=4,
            pos_channels=node.pos.size(1),
            dropout=0.5,
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-4)
        best_valid, best_test, began = -1.0, 0.0, time.perf_counter()
        for _ in range(epochs):
            model.train()
            optimizer.zero_grad()
            F.cross_entropy(model(data)[node.train_mask], node.y[node.train_mask]).backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                pred = model(data).argmax(-1)
            valid, test = [
                float((pred[m] == node.y[m]).float().mean()) for m in (node.val_mask, node.test_mask)
            ]
            if valid > best_valid:
                best_valid, best_test = valid, test
        seconds = (time.perf_counter() - began) / epochs
        print(
            f"GCN + {attention} attention: test accuracy {best_test:.3f} (best validation {best_valid:.3f}), "
            f"{seconds:.2f} s per epoch (training and evaluation), {epochs} epochs"
        )


if __name__ == "__main__":
    main()
