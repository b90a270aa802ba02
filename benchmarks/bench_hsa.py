"""Benchmark HSA against dense attention: time and peak memory versus the number of leaves.

Modelled on nanoGPT's ``bench.py``: per configuration a warm-up, a timed loop, and figures per iteration.
Hierarchical Self-Attention (:func:`hgattn.hsa`) runs on three trees (balanced with branching 16, balanced
with branching 4, and an unbalanced random tree with branching 2..30); the baseline is
:func:`torch.nn.functional.scaled_dot_product_attention` over the same leaves laid out as ``[1, H, N, d]``
(it does not depend on the tree, so it is measured once per size and mode). Modes: forward only (under
``torch.no_grad()``) and forward + backward (a random upstream gradient into q, k, v).

Every measurement runs in a fresh child process, so that the peak memory of one configuration cannot leak
into the next; children are forked from a server that imported torch once (``--start-method forkserver``,
the default) or started from scratch (``spawn``). Peak memory is the increase over the memory held before
the warm-up: on CPU the peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) minus
the resident set before; on CUDA ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before.
The CPU allocator is tuned the same way for both methods (see ``ALLOCATOR_ENV``).
Building a hierarchy is preprocessing: it happens before the measured region and is reported apart.

Usage::

    python benchmarks/bench_hsa.py                                # N = 1k .. 4M, dense up to 64k
    python benchmarks/bench_hsa.py --max-leaves 65536 --repeats 3
    python benchmarks/bench_hsa.py --quick --out-dir /tmp/bench   # smoke run: N <= 4096, 1 thread, ~20 s
    python benchmarks/bench_hsa.py --device cuda

Writes ``<out-dir>/hsa_vs_sdpa.jsonl`` (one JSON record per measurement) and ``<out-dir>/hsa_vs_sdpa.png``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

#: CPU allocator settings for every measured process, dense and HSA alike: one glibc arena for all threads
#: (autograd's backward runs in its own thread), no ``mmap`` for large blocks and no trimming, so that freed
#: memory stays in the process. Otherwise every large tensor is mapped fresh, and on virtual machines that
#: return freed guest memory to the host (this one does within seconds), touching it again costs about
#: 1.5 s per GB: half of a forward+backward step at 1M leaves. Set before torch is imported; children inherit
#: them; a value set by the caller wins.
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
for _key, _value in ALLOCATOR_ENV.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402  (after the allocator settings)
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402
from tqdm import tqdm  # noqa: E402

import hgattn  # noqa: E402
from hgattn.train.memory import PeakMemory  # noqa: E402

TREES: dict[str, Callable[[int], hgattn.Hierarchy]] = {
    "balanced-16": lambda n: hgattn.Hierarchy.from_windows(n, 16),
    "balanced-4": lambda n: hgattn.Hierarchy.from_windows(n, 4),
    "random-2-30": lambda n: hgattn.Hierarchy.random(n, (2, 30), generator=torch.Generator().manual_seed(0)),
}
MODES = ("fwd+bwd", "fwd")
MIN_LEAVES = 1024
#: Size of the untimed, unmeasured run that initialises torch's lazy state before a measurement.
PRIME_LEAVES = 256
QUICK_MAX_LEAVES = 4096
#: Fraction of the free memory a dense run may be estimated to need before it is skipped.
MEMORY_HEADROOM = 0.8
#: Headline figures: the dense/HSA ratio at this size, and HSA scaling between these two sizes.
HEADLINE_TREE, HEADLINE_RATIO_N, HEADLINE_SCALING = "balanced-16", 16384, (65536, 1 << 20)
RESULTS_NAME = "hsa_vs_sdpa"


@dataclass(frozen=True)
class Config:
    """One measurement: a method on one size, tree and mode (``tree`` is None for dense attention)."""

    method: str
    tree: str | None
    num_leaves: int
    mode: str
    heads: int
    head_dim: int
    device: str
    threads: int
    warmup: int
    repeats: int
    long_run_s: float


# ---------------------------------------------------------------------------------------------- child side
def run_config(cfg: Config) -> dict[str, Any]:
    """Measure one configuration in this process; returns its JSON record."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    device = torch.device(cfg.device)
    record: dict[str, Any] = {**asdict(cfg), "torch": torch.__version__, "device_name": _device_name(device)}
    hierarchy = None
    if cfg.method == "hsa":
        start = time.perf_counter()
        hierarchy = TREES[cfg.tree](cfg.num_leaves).to(device)
        record["build_s"] = time.perf_counter() - start
    q, k, v, grad_out = _inputs(cfg, device)
    if cfg.method == "sdpa":
        need, free = sdpa_memory_estimate(q, cfg.mode == "fwd+bwd"), available_memory(device)
        record["estimate_mb"] = need / 2**20
        if need > MEMORY_HEADROOM * free:
            return {**record, "status": "OOM-skip", "free_mb": free / 2**20}
    _prime(cfg, device)
    step = _make_step(cfg, q, k, v, grad_out, hierarchy)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    meter = PeakMemory(device, release_heap=True).start()
    times = _time_steps(step, sync, cfg)
    record.update(status="ok", times_ms=[t * 1e3 for t in times], median_ms=statistics.median(times) * 1e3,
                  peak_mb=mib(meter.peak_increase()))
    return record


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"


def _prime(cfg: Config, device: torch.device) -> None:
    """One step on a small problem, so that lazy initialisation (thread pools, autograd engine, code pages
    touched for the first time) counts in neither the peak memory nor the warm-up."""
    small = replace(cfg, num_leaves=min(cfg.num_leaves, PRIME_LEAVES))
    hierarchy = TREES[cfg.tree](small.num_leaves).to(device) if cfg.method == "hsa" else None
    _make_step(small, *_inputs(small, device), hierarchy)()


def _inputs(cfg: Config, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v and an upstream gradient: ``[N, H, d]`` for HSA, ``[1, H, N, d]`` (contiguous) for SDPA."""
    shape = (cfg.num_leaves, cfg.heads, cfg.head_dim)
    tensors = [torch.randn(shape, device=device) for _ in range(4)]
    if cfg.method == "sdpa":
        tensors = [x.transpose(0, 1).unsqueeze(0).contiguous() for x in tensors]
    q, k, v, grad_out = tensors
    if cfg.mode == "fwd+bwd":
        for x in (q, k, v):
            x.requires_grad_(True)
    return q, k, v, grad_out


def _make_step(cfg: Config, q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor,
               hierarchy: hgattn.Hierarchy | None) -> Callable[[], None]:
    def attend() -> Tensor:
        if cfg.method == "hsa":
            return hgattn.hsa(q, k, v, hierarchy)
        return F.scaled_dot_product_attention(q, k, v)

    return make_step(cfg.mode, q, k, v, grad_out, attend)


def make_step(mode: str, q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor,
              attend: Callable[[], Tensor]) -> Callable[[], None]:
    """One measured step: ``attend()`` under ``torch.no_grad()`` (``mode='fwd'``), or forward and backward of
    ``grad_out`` with the gradients of ``q, k, v`` cleared first (``'fwd+bwd'``)."""
    def forward() -> None:
        with torch.no_grad():
            attend()

    def forward_backward() -> None:
        q.grad = k.grad = v.grad = None
        attend().backward(grad_out)

    return forward if mode == "fwd" else forward_backward


def timed_step(step: Callable[[], None], sync: Callable[[], None]) -> float:
    """Seconds of one call of ``step``, synchronised before and after by ``sync``."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def _time_steps(step: Callable[[], None], sync: Callable[[], None], cfg: Config) -> list[float]:
    """Seconds per timed step after ``cfg.warmup`` untimed ones; one timed step when a warm-up is long."""
    warm = [timed_step(step, sync) for _ in range(cfg.warmup)]
    repeats = 1 if warm and warm[-1] > cfg.long_run_s else cfg.repeats
    return [timed_step(step, sync) for _ in range(repeats)]


def mib(size: int | None) -> float | None:
    """Bytes in MiB (``None`` stays ``None``)."""
    return None if size is None else size / 2**20


def sdpa_memory_estimate(q: Tensor, backward: bool) -> int:
    """Bytes dense SDPA on ``[1, H, N, d]`` inputs needs: quadratic on the math backend, linear on others."""
    _, heads, n, dim = q.shape
    size = q.element_size()
    if _sdpa_backend(q) == SDPBackend.MATH:
        return (4 if backward else 2) * heads * n * n * size   # scores and softmax (+ their gradients)
    return (8 if backward else 2) * heads * n * (dim + 1) * size   # output, logsumexp (+ q, k, v gradients)


def _sdpa_backend(q: Tensor) -> SDPBackend:
    """The backend SDPA picks for q = k = v (private torch API; assume the math backend if it is gone)."""
    try:
        return SDPBackend(torch._fused_sdp_choice(q, q, q))
    except (AttributeError, RuntimeError):
        return SDPBackend.MATH


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _child(cfg: Config, conn: Connection) -> None:
    try:
        conn.send(run_config(cfg))
    except torch.OutOfMemoryError:
        conn.send({**asdict(cfg), "status": "OOM"})
    except Exception as exc:  # reported in the table and the JSON, the sweep goes on
        conn.send({**asdict(cfg), "status": f"error: {type(exc).__name__}: {exc}"})
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- parent side
def run_isolated(ctx: mp.context.BaseContext, cfg: Config) -> dict[str, Any]:
    """Run one configuration in a fresh child process; a child killed by the OS is recorded as OOM."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cfg, send))
    proc.start()
    send.close()
    try:
        record = recv.recv()
    except EOFError:   # the child died without answering
        record = None
    proc.join()
    if record is None:
        status = "OOM" if proc.exitcode == -signal.SIGKILL else f"crash (exit code {proc.exitcode})"
        record = {**asdict(cfg), "status": status}
    return record


def plan(args: argparse.Namespace) -> list[Config]:
    """All configurations, smallest size first; dense attention once per size and mode."""
    sizes = [MIN_LEAVES]
    while sizes[-1] * 4 <= args.max_leaves:
        sizes.append(sizes[-1] * 4)
    common = dict(heads=args.heads, head_dim=args.head_dim, device=args.device, threads=args.threads,
                  warmup=args.warmup, repeats=args.repeats, long_run_s=args.long_run)
    configs = []
    for n in sizes:
        for mode in MODES:
            configs += [Config("hsa", tree, n, mode, **common) for tree in args.trees]
            configs.append(Config("sdpa", None, n, mode, **common))
    return configs


def run_all(configs: list[Config], args: argparse.Namespace, out_path: Path) -> list[dict[str, Any]]:
    ctx = mp.get_context(args.start_method)
    if args.start_method == "forkserver":
        ctx.set_forkserver_preload(["torch", "hgattn"])   # children start with them imported
    records = []
    with out_path.open("w") as out, tqdm(configs, unit="cfg", dynamic_ncols=True) as bar:
        for cfg in bar:
            bar.set_postfix_str(f"{cfg.method} {cfg.tree or ''} N={cfg.num_leaves} {cfg.mode}")
            if cfg.method == "sdpa" and cfg.num_leaves > args.max_dense:
                record = {**asdict(cfg), "status": "capped"}
            else:
                record = run_isolated(ctx, cfg)
            if record["status"] not in ("ok", "capped", "OOM-skip"):
                bar.write(f"{cfg.method} {cfg.tree} N={cfg.num_leaves} {cfg.mode}: {record['status']}")
            out.write(json.dumps(record) + "\n")
            out.flush()
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------------ reports
def _cell(record: dict[str, Any] | None, key: str, fmt: str) -> str:
    if record is None or record["status"] == "capped":
        return "-"
    if record["status"] != "ok":
        return record["status"].split(":")[0]
    value = record.get(key)
    return "n/a" if value is None else format(value, fmt)


def format_table(records: list[dict[str, Any]]) -> str:
    dense = {(r["num_leaves"], r["mode"]): r for r in records if r["method"] == "sdpa"}
    header = (f"{'tree':<12} {'N':>8} {'mode':<8} {'hsa ms':>10} {'sdpa ms':>10} {'sdpa/hsa':>9} "
              f"{'hsa MB':>9} {'sdpa MB':>9} {'build s':>8}")
    lines = [header, "-" * len(header)]
    for r in (r for r in records if r["method"] == "hsa"):
        d = dense.get((r["num_leaves"], r["mode"]))
        ratio = (f"{d['median_ms'] / r['median_ms']:.2f}x"
                 if d and d["status"] == r["status"] == "ok" else "-")
        lines.append(f"{r['tree']:<12} {r['num_leaves']:>8} {r['mode']:<8} "
                     f"{_cell(r, 'median_ms', '.2f'):>10} {_cell(d, 'median_ms', '.2f'):>10} {ratio:>9} "
                     f"{_cell(r, 'peak_mb', '.1f'):>9} {_cell(d, 'peak_mb', '.1f'):>9} "
                     f"{_cell(r, 'build_s', '.3f'):>8}")
    return "\n".join(lines)


def headlines(records: list[dict[str, Any]]) -> list[str]:
    """The two figures the project reports, for the sizes that were run."""
    def median(method: str, n: int) -> float | None:
        for r in records:
            if (r["method"], r["num_leaves"], r["mode"], r["status"]) == (method, n, "fwd+bwd", "ok") and (
                    method == "sdpa" or r["tree"] == HEADLINE_TREE):
                return r["median_ms"]
        return None

    lines = []
    hsa_n, sdpa_n = median("hsa", HEADLINE_RATIO_N), median("sdpa", HEADLINE_RATIO_N)
    if hsa_n and sdpa_n:
        lines.append(f"SDPA / HSA fwd+bwd time at N={HEADLINE_RATIO_N}, {HEADLINE_TREE}: "
                     f"{sdpa_n / hsa_n:.2f}x")
    small, large = (median("hsa", n) for n in HEADLINE_SCALING)
    if small and large:
        factor = HEADLINE_SCALING[1] // HEADLINE_SCALING[0]
        lines.append(f"HSA fwd+bwd t(1M) / t(64k), {HEADLINE_TREE}: {large / small:.2f} "
                     f"(linear scaling: {factor})")
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"HSA {tree}", lambda r, t=tree: r["method"] == "hsa" and r["tree"] == t)
              for tree in dict.fromkeys(r["tree"] for r in records if r["method"] == "hsa")]
    series.append(("SDPA dense", lambda r: r["method"] == "sdpa"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = [f"C{i}" for i in range(len(series) - 1)] + ["k"]
    for (label, select), color in zip(series, colors):
        for mode, style in (("fwd+bwd", "-"), ("fwd", "--")):
            points = sorted((r["num_leaves"], r) for r in records
                            if select(r) and r["mode"] == mode and r["status"] == "ok")
            for ax, key in zip(axes, ("median_ms", "peak_mb")):
                xy = [(n, r[key]) for n, r in points if r.get(key)]
                if xy:
                    ax.plot(*zip(*xy), style, marker="o", ms=4, color=color, label=f"{label} {mode}")
    for ax, ylabel in zip(axes, ("median time per iteration (ms)", "peak memory increase (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="number of leaves N", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    first = next((r for r in records if r["status"] == "ok"), records[0])
    fig.suptitle(f"HSA vs dense SDPA, {first['heads']} heads x {first['head_dim']}, float32, "
                 f"{first.get('device_name', first['device'])} (solid: fwd+bwd, dashed: fwd)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- main
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-leaves", type=int, default=1 << 22, help="largest N (sizes are 1024 * 4^i)")
    p.add_argument("--max-dense", type=int, default=65536, help="largest N for dense SDPA")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--trees", nargs="+", choices=list(TREES), default=list(TREES))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per configuration")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations per configuration (median)")
    p.add_argument("--long-run", type=float, default=10.0,
                   help="seconds: a configuration whose warm-up takes longer is timed once")
    p.add_argument("--start-method", choices=("forkserver", "spawn"), default="forkserver",
                   help="how the per-configuration child processes start")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: N <= {QUICK_MAX_LEAVES}, 1 repeat, 1 thread unless --threads is given")
    args = p.parse_args(argv)
    if args.max_leaves < MIN_LEAVES:
        p.error(f"--max-leaves must be at least {MIN_LEAVES}")
    if args.quick:
        args.max_leaves, args.repeats = min(args.max_leaves, QUICK_MAX_LEAVES), 1
    if args.threads is None:
        args.threads = 1 if args.quick else _cores()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def _warn_if_loaded(args: argparse.Namespace) -> None:
    """Other work on the cores distorts timings, badly so with several threads (each op waits for all)."""
    cores = _cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if args.device == "cpu" and load > 0.5 and load + args.threads > cores:
        print(f"warning: load average {load:.1f} on {cores} cores before starting; with --threads "
              f"{args.threads} the timings will be inflated (try fewer threads, or an idle machine)")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_path = args.out_dir / f"{RESULTS_NAME}.jsonl"
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, {args.heads} heads x "
          f"{args.head_dim}, float32, N <= {args.max_leaves}, dense N <= {args.max_dense}")
    _warn_if_loaded(args)
    start = time.perf_counter()
    records = run_all(plan(args), args, out_path)
    print(format_table(records))
    for line in headlines(records):
        print(line)
    plot(records, args.out_dir / f"{RESULTS_NAME}.png")
    print(f"wrote {out_path} and {args.out_dir / RESULTS_NAME}.png in {time.perf_counter() - start:.1f} s")
    return records


if __name__ == "__main__":
    main()
