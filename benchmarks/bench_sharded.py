"""Benchmark sharded HSA (:func:`hgattn.attention.sharded_hsa`) on 1, 2 and 4 gloo processes of this machine.

Per tree size ``N`` and process count ``P``: the time of one attention layer (forward under ``torch.no_grad()``,
and forward + backward of a random upstream gradient into q, k, v), the bytes each rank receives per layer
(counted by :func:`hgattn.attention.count_communication` around the collectives) against ring attention's
``N x H x d x 4 bytes x 2`` (k and v of every leaf pass every rank once per forward pass), and memory per rank.
A plain single-process :func:`hgattn.hsa` call on the whole tree is the ``hsa`` row of each size.

``--layer gps`` measures a whole :class:`hgattn.nn.HSAGPSConv` layer instead (``H * d`` channels, GIN MPNN,
batch norm) on a graph over the tree's leaves (edges ``i <-> i + 1`` and ``i <-> i + isqrt(N)``: a grid in
row-major order), sharded by :func:`hgattn.shard_graph`: the bytes then also count the halo exchange and the
batch norms' all-reduces; the ``hsa`` row is the same layer in one process.

How it runs: the parent builds the tree (``--tree``, as in ``bench_hsa.py``) and the shards
(:func:`hgattn.attention.shard_hierarchy`, ``--imbalance``) and saves each shard to a file; every rank is a
fresh process (``--worker``) that loads only its own shard and makes only its own rows of q, k, v, so that its
memory is what a rank of a real job holds. Ranks join a gloo group through a ``file://`` store; every timed
step starts and ends with a barrier, so its time is the slowest rank's. Threads per rank: ``--threads // P``
(at least 1; with ``P = 4`` on 2 cores two ranks share a core, so the wall time is inflated and the CPU time
per rank is the figure that scales). Memory: the process's resident set once torch is imported and the group
joined (``runtime``), what loading the shard and the inputs adds (``held``), and the peak above that during
forward + backward (``peak``, ``VmHWM`` reset through ``/proc/self/clear_refs`` as in ``bench_hsa.py``);
``held + peak`` is the rank's share.
Every process uses ``bench_hsa.ALLOCATOR_ENV``. Per configuration: one untimed warm-up per mode, then
``--repeats`` timed steps (one when the warm-up took over ``--long-run`` seconds); medians are reported.

Usage::

    python benchmarks/bench_sharded.py                                # N = 16k .. 1M, P = 1, 2, 4: ~10 min
    python benchmarks/bench_sharded.py --quick --out-dir /tmp/sharded  # N = 4096, P = 1, 2: ~1 min
    python benchmarks/bench_sharded.py --sizes 65536 --procs 2 4 --tree random-2-30
    python benchmarks/bench_sharded.py --layer gps --out-dir benchmarks/results/sharded_gps

Writes ``<out-dir>/sharded.jsonl`` (one record per configuration, every rank's figures) and ``sharded.md``
(the table, also printed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hsa import ALLOCATOR_ENV, TREES, make_step, mib, \
    timed_step  # noqa: E402  (sets the allocator variables before torch is imported)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import math  # noqa: E402

from torch_geometric.nn import MLP, GINConv  # noqa: E402

import hgattn  # noqa: E402
from hgattn.attention import count_communication, shard_hierarchy, sharded_hsa  # noqa: E402
from hgattn.nn import HSAGPSConv  # noqa: E402
from hgattn.train.memory import PeakMemory, process_status_bytes, release_free_heap  # noqa: E402

DEFAULT_SIZES = (16384, 65536, 262144, 1 << 20)
QUICK_SIZES = (4096,)
RUN_TIMEOUT_S = 900
MB = 2 ** 20


# ---------------------------------------------------------------------------------------------- rank side
def run_rank(args: argparse.Namespace) -> None:
    """One rank of one configuration (``--worker``): time, count and measure; rank 0 writes the record."""
    torch.set_num_threads(args.threads)
    sharded = args.world_size > 0
    if sharded:
        dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=args.rank,
                                world_size=args.world_size)
    runtime = _rss()
    loaded = torch.load(args.structure, weights_only=False)
    if args.layer == "gps":
        q, grad_out, attend = _gps_layer(args, loaded, sharded)
        k = v = q
    else:
        rows = loaded.num_local_leaves if sharded else loaded.num_leaves
        generator = torch.Generator().manual_seed(args.rank)
        q, k, v, grad_out = (torch.randn(rows, args.heads, args.head_dim, generator=generator) for _ in range(4))
        for x in (q, k, v):
            x.requires_grad_(True)

        def attend() -> torch.Tensor:
            return sharded_hsa(q, k, v, loaded) if sharded else hgattn.hsa(q, k, v, loaded)

    sync = dist.barrier if sharded else (lambda: None)
    record: dict[str, Any] = {"rank": args.rank, "leaves": q.size(0), "runtime_mb": runtime / MB}
    release_free_heap()
    record["held_mb"] = (_rss() - runtime) / MB
    for mode in ("fwd", "fwd+bwd"):
        step = make_step(mode, q, k, v, grad_out, attend)
        warm = timed_step(step, sync)
        repeats = 1 if _slowest(warm, sharded) > args.long_run else args.repeats
        meter = PeakMemory("cpu", release_heap=True).start() if mode == "fwd+bwd" else None
        walls, cpus = [], []
        with count_communication() as stats:
            for _ in range(repeats):
                cpu = time.process_time()
                walls.append(timed_step(step, sync))
                cpus.append(time.process_time() - cpu)
        record[mode] = {"warmup_s": warm, "wall_s": walls, "cpu_s": cpus, "bytes": stats.total_bytes // repeats,
                        "forward_bytes": stats.forward_bytes // repeats}
        if meter is not None:
            record["peak_mb"] = mib(meter.peak_increase())
    ranks = [None] * args.world_size if sharded else [record]
    if sharded:
        dist.all_gather_object(ranks, record)
        dist.destroy_process_group()
    if args.rank == 0:
        Path(args.result).write_text(json.dumps(ranks))


def _gps_layer(args: argparse.Namespace, loaded: Any, sharded: bool):
    """Node features (the layer's input, with gradients), an upstream gradient and the layer's call: on this
    rank's part of the graph (a ``GraphShard``) or on the whole ``(hierarchy, edge_index)``."""
    channels = args.heads * args.head_dim
    torch.manual_seed(0)
    layer = HSAGPSConv(channels, GINConv(MLP([channels, channels, channels], norm=None)), heads=args.heads)
    rows = loaded.num_nodes if sharded else loaded[0].num_leaves
    generator = torch.Generator().manual_seed(args.rank)
    x, grad_out = (torch.randn(rows, channels, generator=generator) for _ in range(2))
    x.requires_grad_(True)
    if sharded:
        return x, grad_out, lambda: layer(x, loaded.edge_index, loaded)
    hierarchy, edge_index = loaded
    return x, grad_out, lambda: layer(x, edge_index, hierarchy)


def grid_edges(num_nodes: int) -> torch.Tensor:
    """``[2, E]`` both directions of ``i - (i + 1)`` and ``i - (i + isqrt(N))``: a grid in row-major order."""
    node = torch.arange(num_nodes)
    pairs = [torch.stack([node[:-step], node[step:]]) for step in (1, math.isqrt(num_nodes))]
    one_way = torch.cat(pairs, dim=1)
    return torch.cat([one_way, one_way.flip(0)], dim=1)


def _rss() -> int:
    return process_status_bytes("VmRSS")


def _slowest(seconds: float, sharded: bool) -> float:
    """The largest ``seconds`` over the ranks (so that every rank picks the same number of repeats)."""
    if not sharded:
        return seconds
    value = torch.tensor([seconds])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


# --------------------------------------------------------------------------------------------- parent side
def measure(args: argparse.Namespace, work: Path, num_leaves: int, procs: int | None,
            structure: list[Path]) -> list[dict[str, Any]] | str:
    """Launch the ranks of one configuration (``procs=None``: the plain single-process ``hsa``); their records,
    or the reason there are none."""
    world = procs or 1
    tag = f"{num_leaves}-{procs or 'hsa'}"
    result, init = work / f"result-{tag}.json", work / f"init-{tag}"
    threads = max(1, args.threads // world)
    env = {**os.environ, **{key: os.environ.get(key, value) for key, value in ALLOCATOR_ENV.items()},
           "OMP_NUM_THREADS": str(threads)}
    logs = [open(work / f"stderr-{tag}-{rank}.txt", "w+") for rank in range(world)]
    ranks = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--rank", str(rank), "--world-size", str(procs or 0),
         "--init-file", str(init), "--structure", str(structure[rank]), "--result", str(result),
         "--threads", str(threads), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
         "--repeats", str(args.repeats), "--long-run", str(args.long_run), "--layer", args.layer], env=env,
        stderr=log) for rank, log in enumerate(logs)]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        codes = [rank.wait(timeout=max(1.0, deadline - time.monotonic())) for rank in ranks]
    except subprocess.TimeoutExpired:
        for rank in ranks:
            rank.kill()
        return f"timeout after {RUN_TIMEOUT_S} s"
    failed = [r for r, code in enumerate(codes) if code]
    if failed:
        logs[failed[0]].seek(0)
        last = logs[failed[0]].read().strip().splitlines()
        return f"rank {failed[0]} exited with {codes[failed[0]]}: {last[-1] if last else ''}"
    return json.loads(result.read_text())


def summarise(num_leaves: int, procs: int | None, ranks: list[dict[str, Any]] | str, info: dict[str, Any],
              args: argparse.Namespace) -> dict[str, Any]:
    """One JSON record: the configuration, every rank's figures and the per-layer summary."""
    ring = num_leaves * args.heads * args.head_dim * 4 * 2
    record = {"tree": args.tree, "layer": args.layer, "num_leaves": num_leaves, "procs": procs or 1,
              "method": "sharded" if procs else "hsa", "heads": args.heads, "head_dim": args.head_dim,
              "threads_per_rank": max(1, args.threads // (procs or 1)), "ring_attention_bytes": ring,
              "torch": torch.__version__, **info}
    if isinstance(ranks, str):
        return {**record, "status": ranks}
    record.update(status="ok", ranks=ranks)
    for mode in ("fwd", "fwd+bwd"):
        record[mode] = {"wall_ms": max(statistics.median(r[mode]["wall_s"]) for r in ranks) * 1e3,
                        "cpu_s_per_rank": max(statistics.median(r[mode]["cpu_s"]) for r in ranks),
                        "bytes_per_rank": max(r[mode]["bytes"] for r in ranks)}
    record["max_leaves_per_rank"] = max(r["leaves"] for r in ranks)
    record["memory_mb_per_rank"] = max(r["held_mb"] + (r["peak_mb"] or 0) for r in ranks)
    record["held_mb_per_rank"] = max(r["held_mb"] for r in ranks)
    record["peak_mb_per_rank"] = max(r["peak_mb"] or 0 for r in ranks)
    record["runtime_mb"] = max(r["runtime_mb"] for r in ranks)
    record["bytes_over_ring"] = record["fwd+bwd"]["bytes_per_rank"] / ring
    return record


def table(records: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| N | method | P | cut nodes | top nodes | leaves/rank | fwd ms | fwd+bwd ms "
             "| fwd+bwd CPU s/rank | CPU us/leaf | bytes/rank fwd | bytes/rank fwd+bwd | ring attention bytes "
             "| fwd+bwd / ring | held MB/rank | peak MB/rank | MB/rank | MB/rank x P / MB(P=1) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    single = {r["num_leaves"]: r["memory_mb_per_rank"] for r in records
              if r["status"] == "ok" and r["method"] == "sharded" and r["procs"] == 1}
    for r in records:
        name = (f"| {r['num_leaves']} | {r['method']} | {r['procs']} | {r.get('cut_nodes', '-')} | "
                f"{r.get('top_nodes', '-')}")
        if r["status"] != "ok":
            lines.append(f"{name} | {r['status']} |" + " |" * 13)
            continue
        fb = r["fwd+bwd"]
        base = single.get(r["num_leaves"])
        sharded = base and r["method"] == "sharded"
        scaling = f"{r['memory_mb_per_rank'] * r['procs'] / base:.2f}" if sharded else "-"
        lines.append(
            f"{name} | {r['max_leaves_per_rank']} | {r['fwd']['wall_ms']:.1f} | {fb['wall_ms']:.1f} | "
            f"{fb['cpu_s_per_rank']:.2f} | {fb['cpu_s_per_rank'] / r['max_leaves_per_rank'] * 1e6:.2f} | "
            f"{r['fwd']['bytes_per_rank']:,} | {fb['bytes_per_rank']:,} | {r['ring_attention_bytes']:,} | "
            f"{r['bytes_over_ring']:.2e} | {r['held_mb_per_rank']:.0f} | {r['peak_mb_per_rank']:.0f} | "
            f"{r['memory_mb_per_rank']:.0f} | {scaling} |")
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> None:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, started = [], time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for num_leaves in args.sizes:
            start = time.perf_counter()
            h = TREES[args.tree](num_leaves)
            build_s = time.perf_counter() - start
            configs: list[tuple[int | None, list[Path], dict[str, Any]]] = []
            edge_index = grid_edges(num_nodes=num_leaves) if args.layer == "gps" else None
            if not args.no_baseline:
                path = work / f"tree-{num_leaves}.pt"
                torch.save(h if edge_index is None else (h, edge_index), path)
                configs.append((None, [path], {"build_s": build_s}))
            for procs in args.procs:
                start = time.perf_counter()
                shards = (shard_hierarchy(h, procs, imbalance=args.imbalance) if edge_index is None
                          else hgattn.shard_graph(edge_index, h, procs, imbalance=args.imbalance))
                top = (shards[0] if edge_index is None else shards[0].shard).top
                info = {"build_s": build_s, "shard_s": time.perf_counter() - start, "imbalance": args.imbalance,
                        "cut_nodes": top.hierarchy.num_leaves, "top_nodes": top.nodes.numel()}
                paths = []
                for rank, shard in enumerate(shards):
                    paths.append(work / f"shard-{num_leaves}-{procs}-{rank}.pt")
                    torch.save(shard, paths[-1])
                if edge_index is not None:
                    info["halo_nodes"] = max(graph.num_halo for graph in shards)
                configs.append((procs, paths, info))
                del shards
            del h
            for procs, paths, info in configs:
                record = summarise(num_leaves, procs, measure(args, work, num_leaves, procs, paths), info, args)
                records.append(record)
                print(f"N={num_leaves} {record['method']} P={record['procs']}: {record['status']}", flush=True)
    what = ("HSA" if args.layer == "hsa" else
            f"HSAGPSConv layers (GIN, batch norm, {args.heads * args.head_dim} channels; grid graph in row-major "
            "order)")
    header = (f"# Sharded {what} on gloo processes\n\ntorch {torch.__version__}, tree {args.tree}, {args.heads} "
              f"heads x {args.head_dim}, float32, {os.cpu_count()} cores, {args.threads} threads in all (per "
              f"rank: threads // P, at least 1), imbalance {args.imbalance}; 1-minute load average at the "
              f"start: {load:.2f}; run took {time.perf_counter() - started:.0f} s")
    text = table(records, header)
    halos = [f"N={r['num_leaves']} P={r['procs']}: {r['halo_nodes']}" for r in records if "halo_nodes" in r]
    if halos:
        text += "\n\nMost halo nodes of a rank: " + ", ".join(halos)
    print(text)
    (out_dir / "sharded.md").write_text(text + "\n")
    with open(out_dir / "sharded.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    print(f"wrote {out_dir / 'sharded.md'} and {out_dir / 'sharded.jsonl'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of leaves")
    parser.add_argument("--procs", type=int, nargs="+", default=None, help="process counts (default 1 2 4)")
    parser.add_argument("--tree", choices=sorted(TREES), default="balanced-16")
    parser.add_argument("--layer", choices=("hsa", "gps"), default="hsa",
                        help="the attention alone, or a whole HSAGPSConv layer on a sharded grid graph")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--imbalance", type=float, default=0.05, help="shard_hierarchy's imbalance")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-run", type=float, default=10.0,
                        help="warm-up seconds above which one step is timed")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-process hsa rows")
    parser.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES}, P = 1 2, one repeat")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "sharded"))
    worker = parser.add_argument_group("internal (one rank)")
    worker.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("--rank", int), ("--world-size", int), ("--init-file", str), ("--structure", str),
                       ("--result", str)):
        worker.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.procs, args.repeats = args.sizes or list(QUICK_SIZES), args.procs or [1, 2], 1
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.procs = args.procs or [1, 2, 4]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        run_rank(arguments)
    else:
        run_all(arguments)
