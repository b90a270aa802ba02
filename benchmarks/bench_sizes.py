"""Benchmark HSA against dense per-tree attention across forest and tree sizes, with two CPU allocators.

Modelled on nanoGPT's ``bench.py`` (warm-up, timed loop, figures per iteration) and on ``bench_hsa.py``.
:func:`hgattn.hsa` (``include_self=True``) runs on ``[N, H, d]`` inputs over a forest of ``B`` trees of
``n`` leaves each; the baseline is :func:`torch.nn.functional.scaled_dot_product_attention` over
``[B, H, n, d]``, the layout PyG's ``GPSConv`` attends over after ``to_dense_batch``. Shapes (``B x n``):
forests 128 x 25, 32 x 70 and 16 x 440, then single trees of 4k, 16k, 64k, 256k, 1M and 4M leaves.
Modes: forward only (under ``torch.no_grad()``) and forward + backward (a random upstream gradient into q,
k, v). A forest is ``B`` copies of one ``--tree``: their parent arrays concatenated with shifted ids, built
(and timed, ``build_s``) before the measured region.

Every measurement runs in a fresh interpreter (this script with ``--child``), whose environment sets the CPU
allocator before torch is imported: ``plain`` has no ``MALLOC_*`` variables (nor ``GLIBC_TUNABLES``; those
of the caller are removed), ``tuned`` has exactly ``bench_hsa.ALLOCATOR_ENV``. Per measurement: the first
step (the first call in the process, with torch's lazy initialisation and HSA's lazily built plans), then
warm-up steps and timed steps, as many as fit in about 3 s (at least 3 timed steps; 2 when a step takes
over 10 s). Peak memory is the increase over what the process holds after the first step (inputs, hierarchy
and cached plans excluded), as in ``bench_hsa.py``: ``VmHWM`` on CPU, ``torch.cuda.max_memory_allocated``
on CUDA; the records also hold the first step's own peak.

Usage::

    python benchmarks/bench_sizes.py                               # all shapes, N <= 4M, dense n <= 64k
    python benchmarks/bench_sizes.py --max-leaves 65536            # 15-25 min on 2 cores, mostly SDPA at 64k
    python benchmarks/bench_sizes.py --quick --out-dir /tmp/sizes  # smoke run: 3 shapes, fwd+bwd, ~1 min
    python benchmarks/bench_sizes.py --device cuda --tree random

Writes ``<out-dir>/sizes.jsonl`` (one JSON record per measurement), ``sizes.md`` (the table, also printed,
and the t(1M) / t(64k) scaling of HSA) and ``sizes.png`` (log-log median time against N).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping


def is_allocator_var(name: str) -> bool:
    """Whether an environment variable configures glibc's allocator (none of them reach a ``plain`` child)."""
    return name.startswith("MALLOC_") or name == "GLIBC_TUNABLES"


def malloc_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if is_allocator_var(k)}


#: The allocator variables this process started with (bench_hsa fills in its defaults on import).
STARTUP_MALLOC_ENV = malloc_env(os.environ)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hsa import (ALLOCATOR_ENV, PeakMemory, available_memory, make_step, mib,  # noqa: E402
                       sdpa_memory_estimate, timed_step)

for _key in ALLOCATOR_ENV.keys() - STARTUP_MALLOC_ENV.keys():
    del os.environ[_key]   # undo bench_hsa's setdefault: this process keeps the environment it started with

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

import hgattn  # noqa: E402

TREES: dict[str, Callable[[int], hgattn.Hierarchy]] = {
    "windows-4": lambda n: hgattn.Hierarchy.from_windows(n, 4),
    "windows-16": lambda n: hgattn.Hierarchy.from_windows(n, 16),
    "random": lambda n: hgattn.Hierarchy.random(n, (2, 8), generator=torch.Generator().manual_seed(0)),
}
#: (trees B, leaves per tree n): forests of small trees, then single trees.
SHAPES = ((128, 25), (32, 70), (16, 440), (1, 4096), (1, 16384), (1, 65536), (1, 262144), (1, 1 << 20),
          (1, 1 << 22))
QUICK_SHAPES = ((128, 25), (32, 70), (1, 4096))
MODES = ("fwd+bwd", "fwd")
ALLOCATORS = {"plain": {}, "tuned": ALLOCATOR_ENV}
#: Seconds of timed steps and of warm-up steps to aim for per measurement (normal, --quick).
TIMED_S, WARMUP_S, QUICK_TIMED_S, QUICK_WARMUP_S = 2.5, 0.5, 0.2, 0.05
MIN_REPEATS, MAX_REPEATS, MAX_WARMUP = 3, 1000, 50
#: A step longer than this gets no further warm-up and LONG_REPEATS timed steps.
LONG_STEP_S, LONG_REPEATS = 10.0, 2
#: Fraction of the free memory dense SDPA may be estimated to need before it is skipped.
MEMORY_HEADROOM = 0.8
#: HSA scaling reported between these single-tree sizes.
SCALING = (65536, 1 << 20)
RESULTS_NAME = "sizes"


@dataclass(frozen=True)
class Config:
    """One measurement: a method on one shape, mode and allocator."""

    method: str
    trees: int
    leaves: int
    mode: str
    allocator: str
    tree: str
    heads: int
    dim: int
    device: str
    threads: int | None
    quick: bool

    @property
    def total(self) -> int:
        return self.trees * self.leaves


# ---------------------------------------------------------------------------------------------- child side
def measure(cfg: Config) -> dict[str, Any]:
    """Run one measurement in this process; returns its JSON record."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    device = torch.device(cfg.device)
    record = {**asdict(cfg), "total": cfg.total, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "hgattn": hgattn.__version__, "hgattn_commit": hgattn_commit(),
              "malloc_env": STARTUP_MALLOC_ENV,
              "load1": os.getloadavg()[0],
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    hierarchy = None
    if cfg.method == "hsa":
        start = time.perf_counter()
        hierarchy = build_forest(cfg.tree, cfg.trees, cfg.leaves).to(device)
        record["build_s"] = time.perf_counter() - start
    q, k, v, grad_out = make_inputs(cfg, device)
    if cfg.method == "sdpa":
        need, free = cfg.trees * sdpa_memory_estimate(q, cfg.mode == "fwd+bwd"), available_memory(device)
        record["estimate_mb"] = need / 2**20
        if need > MEMORY_HEADROOM * free:
            return {**record, "status": "OOM-skip", "free_mb": free / 2**20}
    step = make_step(cfg.mode, q, k, v, grad_out, attention(q, k, v, hierarchy))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first_meter = PeakMemory(device, release_heap=True).start()
    first = timed_step(step, sync)
    first_peak = first_meter.peak_increase()
    meter = PeakMemory(device, release_heap=True).start()
    warmup, times = warm_and_time(step, sync, first, cfg.quick)
    steps = [first, *warmup, *times]
    return {**record, "status": "ok", "first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3, "first3_ms": statistics.fmean(steps[:3]) * 1e3, "steps": len(times),
            "warmup": len(warmup), "times_ms": [t * 1e3 for t in times],
            "peak_mb": mib(meter.peak_increase()),
            "first_peak_mb": mib(first_peak)}


def hgattn_commit() -> str | None:
    """``git describe --always --dirty`` of the checkout hgattn is imported from (None outside git)."""
    cmd = ["git", "-C", str(Path(hgattn.__file__).resolve().parent), "describe", "--always", "--dirty"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:   # no git
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def build_forest(tree: str, trees: int, leaves: int) -> hgattn.Hierarchy:
    """``trees`` copies of one tree, side by side (:meth:`hgattn.Hierarchy.cat`)."""
    one = TREES[tree](leaves)
    return one if trees == 1 else hgattn.Hierarchy.cat([one] * trees)


def make_inputs(cfg: Config, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v and an upstream gradient: ``[N, H, d]`` for HSA, ``[B, H, n, d]`` for SDPA."""
    shape = ((cfg.total, cfg.heads, cfg.dim) if cfg.method == "hsa"
             else (cfg.trees, cfg.heads, cfg.leaves, cfg.dim))
    q, k, v, grad_out = (torch.randn(shape, device=device) for _ in range(4))
    if cfg.mode == "fwd+bwd":
        for x in (q, k, v):
            x.requires_grad_(True)
    return q, k, v, grad_out


def attention(q: Tensor, k: Tensor, v: Tensor, hierarchy: hgattn.Hierarchy | None) -> Callable[[], Tensor]:
    """HSA with the self term over ``hierarchy``, or per-tree SDPA where it is None."""
    if hierarchy is not None:
        return lambda: hgattn.hsa(q, k, v, hierarchy, include_self=True)
    return lambda: F.scaled_dot_product_attention(q, k, v)


def warm_and_time(step: Callable[[], None], sync: Callable[[], None], first: float,
                  quick: bool) -> tuple[list[float], list[float]]:
    """Seconds of the warm-up and of the timed steps after the first one.

    One warm-up step (none when the first step was long) estimates the step time; the rest of the warm-up
    and the number of timed steps follow from it.
    """
    warmup = [] if first > LONG_STEP_S else [timed_step(step, sync)]
    more_warmup, repeats = schedule(warmup[-1] if warmup else first, quick)
    warmup += [timed_step(step, sync) for _ in range(more_warmup)]
    return warmup, [timed_step(step, sync) for _ in range(repeats)]


def schedule(step_s: float, quick: bool) -> tuple[int, int]:
    """(further warm-up steps, timed steps) for steps of about ``step_s`` seconds."""
    if step_s > LONG_STEP_S:
        return 0, LONG_REPEATS
    timed_s, warmup_s = (QUICK_TIMED_S, QUICK_WARMUP_S) if quick else (TIMED_S, WARMUP_S)
    repeats = min(MAX_REPEATS, max(MIN_REPEATS, round(timed_s / step_s)))
    return min(MAX_WARMUP, round(warmup_s / step_s)), repeats


def child_main(payload: str) -> None:
    cfg = Config(**json.loads(payload))
    try:
        record = measure(cfg)
    except torch.OutOfMemoryError:
        record = {**asdict(cfg), "total": cfg.total, "status": "OOM"}
    print(json.dumps(record))


# --------------------------------------------------------------------------------------------- parent side
def child_env(allocator: str) -> dict[str, str]:
    """This environment without allocator variables, plus those of ``allocator``."""
    env = {k: v for k, v in os.environ.items() if not is_allocator_var(k)}
    return {**env, **ALLOCATORS[allocator]}


def run_child(cfg: Config) -> dict[str, Any]:
    """Measure ``cfg`` in a fresh interpreter; a child killed by the OS is recorded as OOM."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(cfg))]
    result = subprocess.run(cmd, env=child_env(cfg.allocator), capture_output=True, text=True)
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    if result.returncode == -signal.SIGKILL:
        status = "OOM"
    else:
        lines = result.stderr.strip().splitlines() or [""]
        status = f"error (exit code {result.returncode}): {lines[-1]}"
    return {**asdict(cfg), "total": cfg.total, "status": status}


def plan(args: argparse.Namespace) -> list[Config]:
    """Every measurement, shape by shape; the allocators of one configuration side by side."""
    shapes = [s for s in (QUICK_SHAPES if args.quick else SHAPES) if s[0] * s[1] <= args.max_leaves]
    common = dict(tree=args.tree, heads=args.heads, dim=args.dim, device=args.device, threads=args.threads,
                  quick=args.quick)
    return [Config(method, trees, leaves, mode, allocator, **common)
            for trees, leaves in shapes for mode in args.modes for allocator in args.allocators
            for method in ("hsa", "sdpa")]


def run_all(configs: list[Config], max_dense: int, out_path: Path) -> list[dict[str, Any]]:
    records = []
    with out_path.open("w") as out:
        for i, cfg in enumerate(configs, 1):
            start = time.perf_counter()
            if cfg.method == "sdpa" and cfg.leaves > max_dense:
                record = {**asdict(cfg), "total": cfg.total, "status": "capped"}
            else:
                record = run_child(cfg)
            elapsed = time.perf_counter() - start
            print(f"[{i}/{len(configs)}] {_describe(record)} ({elapsed:.1f} s)", flush=True)
            out.write(json.dumps(record) + "\n")
            out.flush()
            records.append(record)
    return records


def _describe(r: dict[str, Any]) -> str:
    what = f"{r['method']} {r['trees']} x {r['leaves']} {r['mode']} {r['allocator']}"
    if r["status"] != "ok":
        return f"{what}: {r['status']}"
    return (f"{what}: median {r['median_ms']:.2f} ms over {r['steps']} steps, first {r['first_ms']:.1f} ms, "
            f"peak {_fmt(r['peak_mb'], '.1f')} MB")


# ------------------------------------------------------------------------------------------------ reports
def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _cell(record: dict[str, Any] | None, key: str, fmt: str) -> str:
    if record is None or record["status"] == "capped":
        return "-"
    if record["status"] != "ok":
        return record["status"].split(" ")[0].rstrip(":")
    return _fmt(record.get(key), fmt)


def _key(r: dict[str, Any]) -> tuple[int, int, str, str]:
    return r["trees"], r["leaves"], r["mode"], r["allocator"]


def markdown_table(records: list[dict[str, Any]]) -> str:
    dense = {_key(r): r for r in records if r["method"] == "sdpa"}
    lines = ["| shape (B x n) | mode | allocator | HSA median ms | SDPA median ms | HSA/SDPA "
             "| HSA first-step ms | HSA peak MB | SDPA peak MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in records if r["method"] == "hsa"):
        d = dense.get(_key(r))
        ratio = (format(r["median_ms"] / d["median_ms"], ".3g")
                 if d and d["status"] == r["status"] == "ok" else "-")
        lines.append(f"| {r['trees']} x {r['leaves']} | {r['mode']} | {r['allocator']} | "
                     f"{_cell(r, 'median_ms', '.2f')} | {_cell(d, 'median_ms', '.2f')} | {ratio} | "
                     f"{_cell(r, 'first_ms', '.1f')} | {_cell(r, 'peak_mb', '.1f')} | "
                     f"{_cell(d, 'peak_mb', '.1f')} |")
    return "\n".join(lines)


def scaling_lines(records: list[dict[str, Any]], modes: Iterable[str],
                  allocators: Iterable[str]) -> list[str]:
    """HSA t(1M) / t(64k) on single trees, from the medians and from the first three steps' mean."""
    small_n, large_n = SCALING
    ok = {_key(r): r for r in records if r["method"] == "hsa" and r["status"] == "ok"}
    lines = []
    for mode in modes:
        for allocator in allocators:
            small, large = ok.get((1, small_n, mode, allocator)), ok.get((1, large_n, mode, allocator))
            if small and large:
                median, first3 = (large[key] / small[key] for key in ("median_ms", "first3_ms"))
                lines.append(f"HSA {mode} t(1M) / t(64k), {allocator}: {median:.2f} (medians), {first3:.2f} "
                             f"(mean of the first 3 steps, first step included); linear scaling: "
                             f"{large_n // small_n}")
    return lines or [f"HSA t(1M) / t(64k): not measured (needs single trees of {small_n} and {large_n} "
                     "leaves)"]


def header(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    first = next((r for r in records if r["status"] == "ok"), {})
    return (f"torch {first.get('torch', torch.__version__)}, hgattn {hgattn.__version__} "
            f"({first.get('hgattn_commit') or 'no git'}), "
            f"device {args.device} ({first.get('device_name', '?')}), {first.get('threads', '?')} threads, "
            f"{args.heads} heads x {args.dim}, float32, tree {args.tree}, "
            f"SDPA up to {args.max_dense} leaves per tree")


def load_line(records: list[dict[str, Any]]) -> str:
    """The load average the children saw: other work on the cores inflates the timings."""
    loads = [r["load1"] for r in records if "load1" in r]
    if not loads:
        return "no measurement ran"
    return (f"1-minute load average when the measurements started: {min(loads):.2f} to {max(loads):.2f} "
            f"on {os.cpu_count()} cores")


def plot(records: list[dict[str, Any]], modes: list[str], title: str, path: Path) -> None:
    """Log-log median time against N, one panel per mode: single trees as lines, forests as squares
    (labelled ``B x n``); allocators ``plain`` solid and filled, ``tuned`` dashed and hollow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 5.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        ok = [r for r in records if r["status"] == "ok" and r["mode"] == mode]
        for method, color in (("hsa", "C0"), ("sdpa", "k")):
            for allocator, style, fill in zip(ALLOCATORS, ("-", "--"), (color, "none")):
                points = [r for r in ok if r["method"] == method and r["allocator"] == allocator]
                trees = sorted((r["total"], r["median_ms"]) for r in points if r["trees"] == 1)
                forests = [(r["total"], r["median_ms"]) for r in points if r["trees"] > 1]
                label = f"{method.upper()} {allocator}"
                if trees:
                    ax.plot(*zip(*trees), style, marker="o", ms=5, color=color, mfc=fill,
                            label=f"{label}, one tree")
                if forests:
                    ax.plot(*zip(*forests), "s", ms=6, color=color, mfc=fill, label=f"{label}, forests")
        for r in {(r["trees"], r["leaves"]): r for r in ok if r["trees"] > 1}.values():
            ax.annotate(f"{r['trees']} x {r['leaves']}", (r["total"], r["median_ms"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set(xscale="log", yscale="log", xlabel="total leaves N", ylabel="median time per step (ms)",
               title=mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 100), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

# -------------------------------------------------------------------------------------------------- main
def _names(choices: Iterable[str]) -> Callable[[str], list[str]]:
    choices = list(choices)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}")
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 128 x 25, 32 x 70 and one 4096-leaf tree, fwd+bwd, few steps")
    p.add_argument("--max-leaves", type=int, default=1 << 22, help="largest total number of leaves N")
    p.add_argument("--max-dense", type=int, default=65536, help="largest tree (leaves) for dense SDPA")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=32, help="head dimension d")
    p.add_argument("--tree", choices=list(TREES), default="windows-4", help="the tree of every forest member")
    p.add_argument("--allocators", type=_names(ALLOCATORS),
                   help="comma-separated (default: plain,tuned on cpu, plain on cuda)")
    p.add_argument("--modes", type=_names(MODES),
                   help="comma-separated (default: fwd+bwd,fwd; fwd+bwd with --quick)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results" / RESULTS_NAME)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.allocators is None:
        args.allocators = ["plain"] if on_cuda else list(ALLOCATORS)
    elif on_cuda and args.allocators != ["plain"]:
        p.error("--allocators: the MALLOC_* settings only concern the CPU; use plain on cuda")
    if args.modes is None:
        args.modes = ["fwd+bwd"] if args.quick else list(MODES)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: args.out_dir / f"{RESULTS_NAME}.{ext}" for ext in ("jsonl", "md", "png")}
    print(f"N <= {args.max_leaves}, SDPA n <= {args.max_dense}, modes {','.join(args.modes)}, allocators "
          f"{','.join(args.allocators)}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    start = time.perf_counter()
    records = run_all(plan(args), args.max_dense, paths["jsonl"])
    title = header(args, records)
    scaling = scaling_lines(records, args.modes, args.allocators)
    report = "\n\n".join([f"# HSA vs dense per-tree SDPA\n\n{title}\n\n{load_line(records)}",
                          markdown_table(records),
                          "\n".join(f"- {line}" for line in scaling)])
    paths["md"].write_text(report + "\n")
    plot(records, args.modes, title, paths["png"])
    print(report)
    print(f"wrote {', '.join(map(str, paths.values()))} in {time.perf_counter() - start:.1f} s")
    return records


if __name__ == "__main__":
    main()
