"""GraphHierarchy at scale and on Cora.

1. Time ``GraphHierarchy`` on a random graph (default: 1M nodes, average degree 10) and print the branching
   statistics of the tree it builds.
2. On Cora (real Planetoid raw files), compare the edge cut of its clusters at every level against random
   clusters of the same sizes.

    python benchmarks/bench_graph_hierarchy.py                       # both parts
    python benchmarks/bench_graph_hierarchy.py --num-nodes 100000 --skip-cora
    python benchmarks/bench_graph_hierarchy.py --skip-random --cora-raw ../shared/data/planetoid/Cora/raw
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.utils import remove_self_loops, to_undirected

from hgattn import Hierarchy
from hgattn.transforms import GraphHierarchy
from hgattn.transforms.graph import branching_statistics, edge_cut

DEFAULT_CORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid" / "Cora" / "raw"


def random_graph(num_nodes: int, degree: float, seed: int) -> Data:
    """Uniform random undirected graph with ``num_nodes * degree / 2`` edges drawn (self-loops dropped)."""
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, int(num_nodes * degree / 2)), generator=generator)
    edge_index = to_undirected(remove_self_loops(edge_index)[0], num_nodes=num_nodes)
    return Data(edge_index=edge_index, num_nodes=num_nodes)


def bench_random(args: argparse.Namespace) -> dict:
    data = random_graph(args.num_nodes, args.degree, args.seed)
    print(f"random graph: {data.num_nodes:,} nodes, {data.num_edges:,} directed edges "
          f"(average degree {data.num_edges / data.num_nodes:.2f})", flush=True)
    transform = GraphHierarchy(args.branching, method=args.method, pe_dim=args.pe_dim, seed=args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    tree = transform(data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{transform}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    start = time.perf_counter()
    hierarchy = Hierarchy.from_hetero(tree)
    print(f"Hierarchy.from_hetero: {time.perf_counter() - start:.1f} s, {hierarchy}")
    stats = branching_statistics(tree)
    for edge_type, row in stats.items():
        print(f"  {edge_type:22s} parents {row['parents']:>9,}  children min {row['min']:>3}  "
              f"mean {row['mean']:6.2f}  max {row['max']:>3}")
    return {"part": "random", "num_nodes": args.num_nodes, "degree": args.degree, "method": args.method,
            "branching": args.branching, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "stats": stats}


def bench_cora(args: argparse.Namespace) -> dict:
    from torch_geometric.datasets import Planetoid

    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(args.cora_raw, Path(root) / "Cora" / "raw")
        data = Planetoid(root, "Cora")[0]
    tree = GraphHierarchy(args.branching, method=args.method, pe_dim=args.pe_dim, seed=args.seed)(data)
    generator = torch.Generator().manual_seed(args.seed)
    total = edge_cut(data.edge_index, torch.arange(data.num_nodes))
    print(f"Cora: {data.num_nodes} nodes, {total} undirected edges; edge cut of the clusters at each level "
          f"vs random clusters of the same sizes (mean of {args.random_trials} draws)")
    levels = {}
    cluster = torch.arange(data.num_nodes)
    for child, _, parent in [et for et in tree.edge_types if et[1] == "in"][:-1]:
        cluster = tree[child, "in", parent].edge_index[1][cluster]
        cut = edge_cut(data.edge_index, cluster)
        shuffles = [torch.randperm(cluster.numel(), generator=generator) for _ in range(args.random_trials)]
        random_cuts = [edge_cut(data.edge_index, cluster[order]) for order in shuffles]
        random_cut = sum(random_cuts) / len(random_cuts)
        levels[parent] = {"clusters": int(cluster.max()) + 1, "cut": cut, "random_cut": random_cut}
        print(f"  {parent:10s} {int(cluster.max()) + 1:4d} clusters: cut {cut:5d} ({cut / total:6.1%})   "
              f"random {random_cut:7.1f} ({random_cut / total:6.1%})")
    return {"part": "cora", "method": args.method, "branching": args.branching, "edges": total,
            "levels": levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-nodes", type=int, default=1_000_000)
    parser.add_argument("--degree", type=float, default=10.0)
    parser.add_argument("--branching", type=int, default=16)
    parser.add_argument("--method", default="auto", choices=["auto", "metis", "spectral"])
    parser.add_argument("--pe-dim", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-trials", type=int, default=10)
    parser.add_argument("--cora-raw", type=Path, default=DEFAULT_CORA)
    parser.add_argument("--skip-random", action="store_true")
    parser.add_argument("--skip-cora", action="store_true")
    parser.add_argument("--out", type=Path, help="append the results as JSON lines to this file")
    args = parser.parse_args()
    results = []
    if not args.skip_random:
        results.append(bench_random(args))
    if not args.skip_cora:
        results.append(bench_cora(args))
    if args.out:
        with args.out.open("a") as f:
            for row in results:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
