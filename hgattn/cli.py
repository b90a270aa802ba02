"""The ``hgattn`` command line: ``demo``, ``train`` and ``bench`` (also ``python -m hgattn``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "train_config", "DEMO_DEFAULTS", "QUICK_DEMO", "BENCH_SCRIPTS"]

#: Settings of ``hgattn demo``: the first 100 articles of each topic (500 of 2,225), 5 seeds, 5 epochs,
#: width 32, sized to finish in under 10 minutes on 2 CPU cores, data processing included.
DEMO_DEFAULTS: dict[str, Any] = {
    "articles_per_topic": 100,
    "epochs": 5,
    "hidden": 32,
    "heads": 2,
    "batch_size": 16,
    "lr": 3e-3,
    "dropout": 0.1,
    "seeds": 5,
}
#: Settings of ``hgattn demo --quick``: 8 articles per topic, 2 seeds, 2 epochs.
QUICK_DEMO: dict[str, Any] = {"epochs": 2, "hidden": 32, "heads": 2, "seeds": 2, "articles_per_topic": 8}
BENCH_SCRIPTS = ("bench_hsa.py", "bench_layers.py")
_CONFIG_FLAGS: dict[str, dict[str, Any]] = {
    "task": {"help": "task name (see `hgattn train --list`)"},
    "model": {"help": "model name, depends on the task"},
    "epochs": {"type": int},
    "seed": {"type": int},
    "optimizer": {"help": "adamw (decoupled weight decay; the default) or adam (weight decay as an L2 term, as the "
                          "published GCN)"},
    "lr": {"type": float, "help": "learning rate"},
    "weight_decay": {"type": float},
    "batch_size": {"type": int},
    "hidden": {"type": int, "help": "model width"},
    "heads": {"type": int},
    "layers": {"type": int, "help": "layers of the graph models"},
    "dropout": {"type": float},
    "out_dir": {"help": "folder for checkpoints, results.jsonl, summary.md and plots"},
    "data_root": {"help": "folder where datasets are processed and cached"},
    "source": {"help": "folder holding the raw dataset files (Planetoid raw files, an OGB dataset folder)"},
    "max_graphs": {"type": int, "help": "graph tasks: keep only N graphs (ogbg-mol*: a seeded subset of "
                                        "each split part; emoji: the first N)"},
    "articles_per_topic": {"type": int, "help": "bbc-news: keep only the first N articles of each topic"},
    "device": {"help": "cpu or cuda[:i]"},
    "threads": {"type": int, "help": "CPU threads of torch (torch.set_num_threads); default torch's choice"},
}


def _add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Flags for TrainConfig fields; absent flags stay out of the namespace (so YAML values survive)."""
    for name in names:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, **_CONFIG_FLAGS[name]
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``hgattn`` argument parser with its ``demo``, ``train`` and ``bench`` sub-commands."""
    parser = argparse.ArgumentParser(
        prog="hgattn",
        description="Hierarchical Self-Attention: train, compare and "
        "benchmark HSA against flat attention on real tasks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="BBC News: HSA vs flat softmax attention (FSA) vs DeepSet over seeds"
    )
    _add_config_flags(
        demo,
        [
            "epochs",
            "hidden",
            "heads",
            "batch_size",
            "lr",
            "dropout",
            "out_dir",
            "data_root",
            "articles_per_topic",
            "device",
        ],
    )
    demo.add_argument("--seeds", type=int, default=argparse.SUPPRESS, help="number of seeds (default 5)")
    demo.add_argument(
        "--models", nargs="+", choices=["hsa", "fsa", "deepset"], default=["hsa", "fsa", "deepset"]
    )
    demo.add_argument(
        "--all-articles", action="store_true", help="all 2,225 articles (default: 100 per topic)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="smoke run: 8 articles per topic, 2 seeds, 2 epochs"
    )
    demo.add_argument("--resume", action="store_true", help="continue every run from its checkpoint")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    train = commands.add_parser("train", help="train one model on one task (checkpoints, resume, results)")
    train.add_argument(
        "--config",
        help="YAML file of options (flags given on the command line win); every value is checked against "
        "its option's type and range before data loads: integers and booleans only from YAML integers and "
        "booleans (not quoted strings), numbers finite (1e-3 is a number)",
    )
    _add_config_flags(train, list(_CONFIG_FLAGS))
    train.add_argument(
        "--resume",
        action="store_true",
        default=argparse.SUPPRESS,
        help="continue from the run's checkpoint (its last finished epoch; its SHA-256 is checked); an "
        "error when there is no checkpoint or when an option other than --epochs/--device/--out-dir/"
        "--data-root/--source/--no-progress differs from the checkpoint's; a finished run is reported, not "
        "recorded twice",
    )
    train.add_argument(
        "--apply-config-changes",
        action="store_true",
        help="with --resume: continue with the options that differ from the checkpoint's (e.g. --lr, "
        "--dropout) from the next epoch on, recorded in the result's config_changes (model shape, task, "
        "model and seed can never change)",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        default=argparse.SUPPRESS,
        help="over torchrun's processes (gloo on CPU, NCCL on CUDA): graph tasks data-parallel, node tasks "
        "sharded (each rank holds its subtrees of the graph's nodes; gps-hsa)",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="run on N local processes: torchrun --standalone --nproc-per-node N -m hgattn train ... "
        "--distributed",
    )
    train.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS)
    train.add_argument("--list", action="store_true", help="list the tasks and their models, then exit")

    bench = commands.add_parser("bench", help="run the repository's speed and memory benchmarks")
    bench.add_argument("--quick", action="store_true", help="small sizes (passed to every script)")
    bench.add_argument("--out-dir", default="runs/bench", help="where the scripts write tables and plots")
    bench.add_argument("--only", nargs="+", choices=list(BENCH_SCRIPTS), help="run only these scripts")
    return parser


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``hgattn train``: defaults, then the ``--config`` YAML file, then the flags."""
    from .train import TrainConfig, load_yaml_config

    values = load_yaml_config(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in TrainConfig.field_names()})
    return TrainConfig(**values)


def demo_config(args: argparse.Namespace) -> tuple[Any, int]:
    """The base TrainConfig and the number of seeds of ``hgattn demo`` (``--quick`` settings, then flags)."""
    from .train import TrainConfig

    values = {**DEMO_DEFAULTS, **(QUICK_DEMO if args.quick else {}), "out_dir": "runs/demo"}
    values.update({k: v for k, v in vars(args).items() if k in TrainConfig.field_names() or k == "seeds"})
    seeds = values.pop("seeds")
    if args.all_articles:
        values["articles_per_topic"] = None
    return TrainConfig(task="bbc-news", model="hsa", **values), seeds


def run_train(args: argparse.Namespace) -> int:
    from .train import load_task, run_name, train
    from .train import distributed
    from .train.loop import load_resume_state
    from .train.sharded import shard_node_task
    from .train.results import markdown_table, plot_curves, read_jsonl, record_result, summarize
    from .train.results import write_text_atomically

    config = train_config(args)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)  # before the data is processed
    if args.apply_config_changes and not config.resume:
        raise ValueError("--apply-config-changes changes a resumed run: it needs --resume")
    load_resume_state(config, apply_changes=args.apply_config_changes)  # before any data loads
    results_path = Path(config.out_dir) / "results.jsonl"
    if results_path.is_file():
        read_jsonl(results_path)  # a damaged results file fails now, not after training
    if config.distributed:
        config = replace(config, device=distributed.setup(config.device))
    main_rank = distributed.is_main()
    try:
        task = distributed.main_first(load_task, config)
        if config.distributed and task.kind == "node":
            task = shard_node_task(task, config.model, config.device)
        result = train(task, config, apply_config_changes=args.apply_config_changes)
    finally:
        if config.distributed:
            distributed.teardown()
    if not main_rank:
        return 0
    out_dir = Path(config.out_dir)
    recorded = record_result(results_path, result)
    if result["resumed_from_epoch"] == result["epochs"]:
        print(_finished_note(run_name(config), result["epochs"], recorded), file=sys.stderr)
    results = [r for r in read_jsonl(results_path) if r["task"] == config.task]
    table = markdown_table(summarize(results))
    write_text_atomically(out_dir / "summary.md", table)
    plot_curves(results, task.metric, out_dir / f"curves_{config.task}.png")
    print(
        f"{run_name(config)}: best epoch {result['best_epoch']}, "
        f"test {task.metric} {result[f'test_{task.metric}']:.4f}\n\n{table}"
    )
    return 0


def _finished_note(run: str, epochs: int, recorded: bool) -> str:
    """What ``hgattn train --resume`` says of a run that had already finished."""
    outcome = (
        "its result was missing from results.jsonl and is recorded now"
        if recorded
        else "its result is already in results.jsonl and is not recorded again"
    )
    return f"hgattn train: {run} had already finished its {epochs} epochs, nothing trained; {outcome}"


def list_tasks() -> int:
    from .train import TASKS

    for name, (_, models) in TASKS.items():
        print(f"{name:18s} models: {', '.join(models)}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from .train import run_demo
    from .train.results import markdown_table

    base, seeds = demo_config(args)
    base = replace(base, resume=args.resume, progress=args.progress)
    rows = run_demo(base, seeds, args.models)
    articles = (
        "all articles" if base.articles_per_topic is None else f"{base.articles_per_topic} articles per topic"
    )
    print(
        f"BBC News topic classification ({articles}), {seeds} seed(s), {base.epochs} epoch(s), width "
        f"{base.hidden}: test metrics as mean ± 95% CI (t-distribution) over seeds\n"
    )
    print(markdown_table(rows))
    print(f"results, table and plots in {base.out_dir}/")
    return 0


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder (next to the ``hgattn`` package in a source checkout).

    Raises:
        FileNotFoundError: when hgattn was installed without the repository (e.g. from a wheel).
    """
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (folder / BENCH_SCRIPTS[0]).is_file():
        raise FileNotFoundError(
            f"no benchmarks folder at {folder}: `hgattn bench` runs the repository's "
            "benchmarks/ scripts; clone the repository and install it with `pip install -e .`"
        )
    return folder


def run_bench(args: argparse.Namespace) -> int:
    folder = benchmarks_dir()
    flags = ["--out-dir", args.out_dir, *(["--quick"] if args.quick else [])]
    for script in args.only or BENCH_SCRIPTS:
        path = folder / script
        if not path.is_file():
            print(f"hgattn bench: {path} is missing, skipped", file=sys.stderr)
            continue
        print(f"hgattn bench: {script} {' '.join(flags)}", file=sys.stderr, flush=True)
        code = subprocess.call([sys.executable, str(path), *flags])
        if code:
            print(f"hgattn bench: {script} failed with exit status {code}", file=sys.stderr)
            return code
    return 0


def run_local_processes(nproc: int, argv: Sequence[str] | None) -> int:
    """``hgattn train`` (``argv`` without ``--nproc``) on ``nproc`` local processes through torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    rest = list(sys.argv[1:] if argv is None else argv)
    for index, arg in enumerate(rest):
        if arg == "--nproc":
            del rest[index:index + 2]
            break
        if arg.startswith("--nproc="):
            del rest[index]
            break
    if "--distributed" not in rest:
        rest.append("--distributed")
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "hgattn", *rest])
    except ChildFailedError as error:
        print(f"hgattn train: {nproc} processes: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hgattn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo_command(args)
        if args.command == "bench":
            return run_bench(args)
        if args.list:
            return list_tasks()
        return run_train(args) if args.nproc is None else run_local_processes(args.nproc, argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"hgattn {args.command}: error: {error}", file=sys.stderr)
        return 2
