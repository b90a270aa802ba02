"""Benchmark one graph-transformer layer with HSA global attention against PyG's global attentions.

Per random graph (``N`` nodes, ``avg_degree * N`` directed edges drawn uniformly) and per layer, the time of
one forward + backward pass (median over the timed loop, after a warm-up) and the peak memory of that step.
Layers, all with the same local MPNN (``GINConv`` with a 2-layer MLP), ``channels`` features and ``heads``
heads:

- ``hsa_gps``: :class:`hgattn.nn.HSAGPSConv`, HSA over ``Hierarchy.from_windows(N, branching)`` (fixed windows
  over the node order; built before the measured region and timed apart);
- ``local_only``: the same layer with its global attention removed (local MPNN, norms and MLP only);
- ``gps_multihead`` / ``gps_performer``: PyG ``GPSConv(attn_type='multihead' | 'performer')``;
- ``sgformer`` / ``polynormer``: the same GPS layer with PyG's ``SGFormerAttention`` /
  ``PolynormerAttention`` as its global attention;
- ``interleaved`` (ogbn-arxiv size only): ``hsa_gps`` and ``local_only`` sharing weights, their steps
  alternating in one process, so that their time ratio (the headline) does not drift with the machine's load.

Every measurement runs in a fresh child process (this script with ``--child``), so that peak memory is the
step's own: the peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after the
inputs are built) minus the resident set before the warm-up; on CUDA ``torch.cuda.max_memory_allocated``.
PyG's dense multi-head attention runs through ``scaled_dot_product_attention``, whose fused kernels keep
memory linear in ``N`` but whose time grows as ``N^2``: it is skipped by an estimate (``skipped``, with the
estimate in ``note``) when its time extrapolated quadratically from its largest measured size exceeds
``--timeout``, or when the float32 ``heads x N x N`` matrices of the unfused path (weights and their gradient)
would not fit in the available memory. A child that fails with an out-of-memory error is recorded as
``oom``; one that exceeds ``--timeout`` as ``timeout``. ``--quick`` measures in this process
(a smoke run: its memory figures are not isolated).

Usage::

    python benchmarks/bench_layers.py                                 # 10k, 100k, 1M nodes + ogbn-arxiv size
    python benchmarks/bench_layers.py --quick --out-dir /tmp/bench    # smoke run, a few seconds per child

Writes ``<out-dir>/layers_gps.jsonl`` (one JSON record per measurement) and ``<out-dir>/layers_gps.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hgattn.train.memory import PeakMemory

ARXIV = {"nodes": 169_343, "edges": 1_166_243}
METHODS = ["hsa_gps", "local_only", "gps_multihead", "gps_performer", "sgformer", "polynormer"]


# ---------------------------------------------------------------------- layers
class DenseBatchGPS(torch.nn.Module):
    """PyG's ``GPSConv`` recipe with any dense-batch global attention ``attn(x [B, N, F], mask) -> [B, N, F]``
    (SGFormer's and Polynormer's attention modules), sharing the GPS layer's conv, MLP and norms."""

    def __init__(self, gps: torch.nn.Module, attn: torch.nn.Module) -> None:
        super().__init__()
        self.gps, self.attn = gps, attn

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        from torch_geometric.utils import to_dense_batch

        gps = self.gps
        local = gps.norm1(x + F.dropout(gps.conv(x, edge_index), p=gps.dropout, training=self.training))
        dense, mask = to_dense_batch(x, batch)
        glob = self.attn(dense, mask)[mask]
        glob = gps.norm2(x + F.dropout(glob, p=gps.dropout, training=self.training))
        out = local + glob
        return gps.norm3(out + gps.mlp(out))


class LocalOnly(torch.nn.Module):
    """An :class:`~hgattn.nn.HSAGPSConv` without its global attention: local MPNN, norms and MLP."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        layer = self.layer
        out = layer.norm1(x + F.dropout(layer.conv(x, edge_index), p=layer.dropout, training=self.training))
        return layer.norm3(out + layer.mlp(out))


def build_layer(method: str, channels: int, heads: int) -> torch.nn.Module:
    from torch_geometric.nn import MLP, GINConv, GPSConv
    from torch_geometric.nn.attention import PolynormerAttention, SGFormerAttention

    from hgattn.nn import HSAGPSConv

    def conv() -> GINConv:
        return GINConv(MLP([channels, channels, channels], norm=None))

    if method in ("hsa_gps", "local_only", "interleaved"):
        layer = HSAGPSConv(channels, conv(), heads=heads)
        return LocalOnly(layer) if method == "local_only" else layer
    if method in ("gps_multihead", "gps_performer"):
        return GPSConv(channels, conv(), heads=heads, attn_type=method.removeprefix("gps_"))
    gps = GPSConv(channels, conv(), heads=heads)
    del gps.attn
    if method == "sgformer":  # heads of `channels` features averaged, as in PyG's SGFormer model
        return DenseBatchGPS(gps, SGFormerAttention(channels, heads, head_channels=channels))
    if method == "polynormer":
        return DenseBatchGPS(gps, PolynormerAttention(channels, heads, head_channels=channels // heads))
    raise ValueError(f"unknown method {method!r}")


# ---------------------------------------------------------------------- one measurement (child process)
def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of ``cfg['repeats']`` forward + backward steps of one layer on one graph."""
    from hgattn import Hierarchy

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    n, channels = cfg["nodes"], cfg["channels"]
    x = torch.randn(n, channels, device=device, requires_grad=True)
    edge_index = torch.randint(0, n, (2, cfg["edges"]), device=device)
    layer = build_layer(cfg["method"], channels, cfg["heads"]).to(device)
    record: dict[str, Any] = {}
    if cfg["method"] == "interleaved":
        return measure_interleaved(cfg, layer, x, edge_index, device)
    if cfg["method"] == "hsa_gps":
        start = time.perf_counter()
        hierarchy = Hierarchy.from_windows(n, cfg["branching"]).to(device)
        hierarchy.sibling_index
        record["hierarchy_s"] = time.perf_counter() - start

        def run() -> Tensor:
            return layer(x, edge_index, hierarchy)
    else:
        def run() -> Tensor:
            return layer(x, edge_index)

    grad = torch.randn(n, channels, device=device)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        run().backward(grad)
        sync(device)

    memory = PeakMemory(device).start()
    for _ in range(cfg["warmup"]):
        step()
    times = []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    record.update(status="ok", median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times),
                  peak_mb=memory.peak_increase() / 2 ** 20 if memory.available else None)
    return record


def measure_interleaved(cfg: dict[str, Any], layer: torch.nn.Module, x: Tensor, edge_index: Tensor,
                        device: torch.device) -> dict[str, Any]:
    """Median forward + backward times of ``hsa_gps`` and of the same layer without global attention
    (``local_only``), their steps alternating, and the ratio of the medians."""
    from hgattn import Hierarchy

    hierarchy = Hierarchy.from_windows(x.size(0), cfg["branching"]).to(device)
    hierarchy.sibling_index
    local = LocalOnly(layer)
    grad = torch.randn_like(x)
    runs = {"hsa_gps": lambda: layer(x, edge_index, hierarchy), "local_only": lambda: local(x, edge_index)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(cfg["warmup"] + cfg["repeats"]):
        for name, run in runs.items():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            start = time.perf_counter()
            run().backward(grad)
            sync(device)
            if step >= cfg["warmup"]:
                times[name].append(time.perf_counter() - start)
    medians = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    return {"status": "ok", "median_ms": medians["hsa_gps"], "local_only_ms": medians["local_only"],
            "ratio": medians["hsa_gps"] / medians["local_only"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- driver
def available_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def dense_skip_reason(cfg: dict[str, Any], records: list[dict[str, Any]], timeout: float) -> str | None:
    """Why ``gps_multihead`` is not run on ``cfg``'s graph (an estimate), or None to run it."""
    done = [r for r in records if r["method"] == "gps_multihead" and r["status"] == "ok"
            and r["channels"] == cfg["channels"] and r["heads"] == cfg["heads"]]
    if done:
        largest = max(done, key=lambda r: r["nodes"])
        seconds = largest["median_ms"] / 1e3 * (cfg["nodes"] / largest["nodes"]) ** 2
        steps = cfg["warmup"] + cfg["repeats"]
        if seconds * steps > timeout:
            return (f"estimated {seconds:.0f} s per step ({steps} steps > {timeout:.0f} s timeout), quadratic "
                    f"from {largest['median_ms'] / 1e3:.1f} s at {largest['nodes']} nodes")
    unfused = 2 * 4 * cfg["heads"] * cfg["nodes"] ** 2
    if unfused > available_memory(cfg["device"]) and not done:
        return (f"unfused attention would need {unfused / 2**30:.0f} GiB > available "
                f"{available_memory(cfg['device']) / 2**30:.0f} GiB")
    return None


def run_child(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; ``oom`` / ``timeout`` / ``error`` records on failure."""
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"over {timeout:.0f} s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode == 0 and lines:
        return json.loads(lines[-1])
    text = result.stderr[-2000:]
    oom = result.returncode in (-9, 137) or "out of memory" in text.lower() or "DefaultCPUAllocator" in text
    return {"status": "oom" if oom else "error", "note": text.strip().splitlines()[-1] if text.strip() else
            f"exit code {result.returncode}"}


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = dict(channels=args.channels, heads=args.heads, device=args.device, branching=args.branching,
                  warmup=args.warmup, repeats=args.repeats)
    configs = []
    for n in args.nodes:
        for method in args.methods:
            configs.append(dict(common, graph=f"random-{n}", nodes=n, edges=round(args.avg_degree * n),
                                method=method))
    if args.arxiv:
        for method in ("interleaved", "hsa_gps", "local_only", "gps_multihead"):
            configs.append(dict(common, graph="ogbn-arxiv-size", nodes=args.arxiv_size[0],
                                edges=args.arxiv_size[1], method=method))
    return configs


def run_all(configs: list[dict[str, Any]], args: argparse.Namespace, out_path: Path) -> list[dict[str, Any]]:
    """Measure every configuration; with ``--append`` the records already in ``out_path`` are kept (and
    inform the dense-attention estimate)."""
    records = []
    if args.append and out_path.exists():
        records = [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]
    with out_path.open("a" if args.append else "w") as out:
        for cfg in configs:
            skip = dense_skip_reason(cfg, records, args.timeout) if cfg["method"] == "gps_multihead" else None
            if skip:
                result = {"status": "skipped", "note": skip}
            elif args.quick:
                result = measure(cfg)
            else:
                result = run_child(cfg, args.timeout)
            record = dict(cfg, **result)
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(_row(record), flush=True)
    return records


def _row(r: dict[str, Any]) -> str:
    time_cell = f"{r['median_ms']:>10.1f}" if r["status"] == "ok" else f"{r['status']:>10}"
    memory_cell = f"{r['peak_mb']:>9.0f}" if "peak_mb" in r else f"{'-':>9}"
    note = r.get("note", "")
    if "ratio" in r:
        note = f"local_only {r['local_only_ms']:.1f} ms in the same process, ratio {r['ratio']:.2f}"
    return f"{r['graph']:>18} {r['method']:>14} {time_cell} {memory_cell}  {note}"


def headlines(records: list[dict[str, Any]]) -> list[str]:
    """The ogbn-arxiv-size ratio of HSAGPSConv to the same layer without global attention."""
    arxiv = {r["method"]: r for r in records if r["graph"] == "ogbn-arxiv-size"}
    lines = []
    if arxiv.get("interleaved", {}).get("status") == "ok":
        r = arxiv["interleaved"]
        lines.append(f"ogbn-arxiv size, interleaved: hsa_gps {r['median_ms']:.0f} ms vs local_only "
                     f"{r['local_only_ms']:.0f} ms fwd+bwd: ratio {r['ratio']:.2f} (must be <= 3)")
    if all(arxiv.get(m, {}).get("status") == "ok" for m in ("hsa_gps", "local_only")):
        ratio = arxiv["hsa_gps"]["median_ms"] / arxiv["local_only"]["median_ms"]
        lines.append(f"ogbn-arxiv size: hsa_gps {arxiv['hsa_gps']['median_ms']:.0f} ms vs local_only "
                     f"{arxiv['local_only']['median_ms']:.0f} ms fwd+bwd: ratio {ratio:.2f} (must be <= 3)")
    if "gps_multihead" in arxiv:
        lines.append(f"ogbn-arxiv size: gps_multihead {arxiv['gps_multihead']['status']} "
                     f"{arxiv['gps_multihead'].get('note', '')}".rstrip())
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        rows = sorted((r for r in records if r["method"] == method and r["status"] == "ok"
                       and r["graph"].startswith("random-")), key=lambda r: r["nodes"])
        if not rows:
            continue
        nodes = [r["nodes"] for r in rows]
        axes[0].plot(nodes, [r["median_ms"] / 1e3 for r in rows], "o-", label=method)
        axes[1].plot(nodes, [max(r["peak_mb"], 1e-3) / 1024 for r in rows], "o-", label=method)
    for ax, label in zip(axes, ("forward + backward time (s)", "peak memory (GiB)")):
        ax.set(xscale="log", yscale="log", xlabel="nodes (average degree 7)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("One GPS layer, 128 channels, 4 heads: global attention variants", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--avg-degree", type=float, default=7.0)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--branching", type=int, default=16, help="window size of the node hierarchy")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument("--no-arxiv", dest="arxiv", action="store_false", help="skip the ogbn-arxiv-size run")
    parser.add_argument("--arxiv-size", type=int, nargs=2, default=[ARXIV["nodes"], ARXIV["edges"]],
                        metavar=("NODES", "EDGES"), help="graph size of the ogbn-arxiv-size run")
    parser.add_argument("--append", action="store_true", help="keep the records already in the output file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in this process: 500 nodes, 16 channels, a 600-node stand-in for the "
                        "ogbn-arxiv size, one repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.channels, args.arxiv_size, args.warmup, args.repeats = [500], 16, [600, 4200], 1, 1
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}; "
          f"{args.channels} channels, {args.heads} heads, hierarchy windows of {args.branching}")
    print(f"{'graph':>18} {'method':>14} {'fwd+bwd ms':>10} {'peak MB':>9}")
    records = run_all(plan(args), args, args.out_dir / "layers_gps.jsonl")
    for line in headlines(records):
        print(line)
    plot(records, args.out_dir / "layers_gps.png")
    return records


if __name__ == "__main__":
    main()
