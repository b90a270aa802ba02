"""The code task (method names from Python ASTs, ogbg-code2's task): OGB-style AST graphs, the AST tree, the
offline dataset on real standard-library packages, ogbg-code2 through ogb on a fixture in its on-disk layout,
the sub-token F1, the four models and ``hgattn train``."""
from __future__ import annotations

import ast
import gzip
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.datasets import OGBCode2, PythonCode
from hgattn.datasets.code import keep_reason, package_split, read_functions, stdlib_packages
from hgattn.train import TrainConfig
from hgattn.train.tasks import CODE_MODELS, code_task, subtoken_metrics
from hgattn.transforms import CodeHierarchy
from hgattn.transforms.code import (EOS_TOKEN, MASK_TOKEN, NONE_TOKEN, UNK_TOKEN, decode_subtokens,
                                    function_graph, iter_functions, ogb_code_graph, split_subtokens,
                                    target_vocabulary)

pytest.importorskip("ogb")

REPO = Path(__file__).resolve().parents[1]
#: Five small standard-library projects: one split each for json (valid) and html (test), the rest train.
PACKAGES = ["stdlib/calendar", "stdlib/html", "stdlib/json", "stdlib/tomllib", "stdlib/zoneinfo"]
#: Functions per split of PACKAGES, as counted on CPython 3.11.7's standard library.
COUNTS_311 = {"train": 111, "valid": 19, "test": 17}
ADD = "def add(a, b=1):\n    return a + b\n"


def _function(source: str) -> ast.FunctionDef:
    return next(iter_functions(source))[1]


def _assert_same_tree(got, expected) -> None:
    assert torch.equal(got.y, expected.y)
    assert set(got.node_types) == set(expected.node_types) and set(got.edge_types) == set(expected.edge_types)
    for key in expected.node_types + expected.edge_types:
        assert set(got[key].keys()) == set(expected[key].keys()), key
        for attr, value in expected[key].items():
            assert torch.equal(got[key][attr], value), (key, attr)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these small batches gain nothing from two, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("code")


@pytest.fixture(scope="module")
def dataset(data_root) -> PythonCode:
    return PythonCode(str(data_root / "subset"), packages=PACKAGES)


# ---------------------------------------------------------------------- names and ASTs
@pytest.mark.parametrize("name, expected", [
    ("get_item", ["get", "item"]),
    ("getItem", ["get", "item"]),
    ("parseHTTPResponse_v2", ["parse", "http", "response", "v2"]),
    ("_private__helper_", ["private", "helper"]),
    ("HTMLParser", ["html", "parser"]),
    ("to_utf8", ["to", "utf8"]),
    ("isoformat", ["isoformat"]),
    ("__", []),
])
def test_split_subtokens(name, expected):
    assert split_subtokens(name) == expected


def test_function_graph_walks_the_ast_as_ogb_code2():
    graph = function_graph(_function(ADD))
    assert graph.types == ["Module", "FunctionDef", "arguments", "arg", "arg", "Constant", "Return", "BinOp",
                           "Name", "Load", "Add", "Name", "Load"]
    assert graph.attributes == [None, MASK_TOKEN, None, "a", "b", "1", None, None, "a", None, None, "b", None]
    assert graph.depth == [0, 1, 2, 3, 3, 3, 2, 3, 4, 5, 4, 4, 5]
    assert graph.parent == [-1, 0, 1, 2, 2, 2, 1, 6, 7, 8, 7, 7, 11]


def test_recursive_references_to_the_name_are_masked():
    graph = function_graph(_function("def fact(n):\n    return n * fact(n - 1) if n else 1\n"))
    assert "fact" not in graph.attributes and graph.attributes.count(MASK_TOKEN) == 2
    assert function_graph(_function("def fact(n):\n    return fact(n)\n"), mask=False).attributes[1] == "fact"


def test_iter_functions_finds_module_functions_and_methods_not_nested_functions():
    source = ("def f():\n    def inner():\n        pass\nclass A:\n    def m(self):\n        pass\n"
              "    class B:\n        async def n(self):\n            pass\n")
    assert [name for name, _ in iter_functions(source)] == ["f", "A.m", "A.B.n"]


def test_keep_reason_filters_as_codesearchnet():
    short = _function("def get(self): return 1\n")
    long = _function("def get_value(self):\n    x = 1\n    return x\n")
    assert keep_reason(_function("def __init__(self):\n    a = 1\n    b = 2\n"), None, 1000) == "special"
    assert keep_reason(_function("def test_get(self):\n    a = 1\n    b = 2\n"), None, 1000) == "test"
    assert keep_reason(short, None, 1000) == "short"
    assert keep_reason(long, 20, 1000) is None and keep_reason(long, 20, 19) == "large"


def test_ogb_code_graph_layout():
    types = {UNK_TOKEN: 0, "Module": 1, "FunctionDef": 2}
    attributes = {NONE_TOKEN: 0, UNK_TOKEN: 1, MASK_TOKEN: 2, "a": 3}
    data = ogb_code_graph(function_graph(_function(ADD)), types, attributes, ["add"])
    assert data.x[:3].tolist() == [[1, 0], [2, 2], [0, 0]]
    # an unknown type; a known and an unknown attribute
    assert data.x[3].tolist() == [0, 3] and data.x[4].tolist() == [0, 1]
    assert data.node_is_attributed.view(-1).tolist() == [0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0]
    assert data.edge_index[:, :3].tolist() == [[0, 1, 2], [1, 2, 3]] and data.edge_index.size(1) == 12
    assert data.y == ["add"] and data.node_dfs_order.view(-1).tolist() == list(range(13))


def test_code_hierarchy_tree():
    data = ogb_code_graph(function_graph(_function(ADD)), {UNK_TOKEN: 0}, {NONE_TOKEN: 0, UNK_TOKEN: 1},
                          ["add", "numbers"])
    tree = CodeHierarchy(["add"], max_seq_len=3)(data)
    hierarchy = Hierarchy.from_hetero(tree)
    # inner nodes: Module, FunctionDef, arguments, Return, BinOp, Name a, Name b
    assert tree["ast"].node.tolist() == [0, 1, 2, 6, 7, 8, 11]
    assert hierarchy.num_leaves == 13 and torch.equal(hierarchy.leaf_node, torch.arange(13))
    token_parent = tree["token", "in", "ast"].edge_index[1].tolist()
    assert token_parent == [0, 1, 2, 2, 2, 2, 3, 4, 5, 5, 4, 6, 6]
    assert tree["ast", "in", "ast"].edge_index.tolist() == [[1, 2, 3, 4, 5, 6], [0, 1, 1, 3, 4, 4]]
    children = torch.bincount(hierarchy.parent[hierarchy.parent >= 0], minlength=hierarchy.num_nodes)
    assert int(children[~hierarchy.is_leaf].min()) >= 2
    assert tree.y.tolist() == [[0, 1, 2]]  # add, UNK (numbers), EOS
    assert tree["token", "next", "token"].edge_index.tolist() == [[1, 3, 4, 5, 8], [3, 4, 5, 8, 11]]


def test_code_hierarchy_refuses_a_graph_that_is_no_ast():
    data = ogb_code_graph(function_graph(_function(ADD)), {UNK_TOKEN: 0}, {NONE_TOKEN: 0, UNK_TOKEN: 1},
                          ["x"])
    data.edge_index = data.edge_index.flip(0)
    with pytest.raises(ValueError, match="parent -> child"):
        CodeHierarchy(["x"])(data)
    del data.node_depth
    with pytest.raises(ValueError, match="node_depth"):
        CodeHierarchy(["x"])(data)


def test_target_vocabulary_and_decoding():
    vocab = target_vocabulary([["get", "item"], ["set", "item"], ["get"]], size=2)
    assert vocab == ["get", "item"]
    assert decode_subtokens(torch.tensor([1, 2, 0, 3, 3]), vocab) == ["item", UNK_TOKEN, "get"]
    assert decode_subtokens(torch.tensor([0, 3, 1]), vocab) == ["get"]  # stops at the first EOS
    assert EOS_TOKEN == "__EOS__"


# ---------------------------------------------------------------------- the offline dataset
def test_dataset_counts_and_package_split(dataset):
    counts = dataset.info["counts"]
    assert sum(counts.values()) == len(dataset) and all(counts.values())
    assert {key: index.numel() for key, index in dataset.split_idx.items()} == counts
    if platform.python_version() == "3.11.7":
        assert counts == COUNTS_311
    packages = dataset.info["packages"]
    split_packages = {split: {dataset.functions[int(i)][0] for i in index}
                      for split, index in dataset.split_idx.items()}
    assert split_packages["valid"] == {"stdlib/json"} and split_packages["test"] == {"stdlib/html"}
    for split, names in split_packages.items():
        assert all(packages[name]["split"] == split for name in names)
    assert set.intersection(*split_packages.values()) == set()
    assert sum(info["functions"] for info in packages.values()) == len(dataset)
    assert packages["stdlib/json"]["version"] == platform.python_version()


def test_dataset_items_and_vocabularies(dataset):
    item = dataset[0]
    assert item.y.shape == (1, dataset.max_seq_len) and int(item.y.max()) <= len(dataset.vocab) + 1
    assert item["token"].x.size(1) == 2 and item["token"].pos.size(1) == dataset.pos_dim
    assert int(item["token"].x[:, 0].max()) < dataset.num_types
    assert dataset.attributes[:2] == [NONE_TOKEN, UNK_TOKEN] and dataset.types[0] == UNK_TOKEN
    train_names = {dataset.functions[int(i)][2].rpartition(".")[2] for i in dataset.split_idx["train"]}
    train_tokens = {token for name in train_names for token in split_subtokens(name)[:dataset.max_seq_len]}
    assert set(dataset.vocab) == train_tokens  # fewer than num_vocab: every target sub-token of train


def test_function_names_never_appear_in_the_trees(dataset):
    mask = dataset.attributes.index(MASK_TOKEN)
    attribute_ids = {a: i for i, a in enumerate(dataset.attributes)}
    for index in range(len(dataset)):
        name = dataset.functions[index][2].rpartition(".")[2]
        attributes = dataset[index]["token"].x[:, 1]
        assert bool((attributes == mask).any())
        assert name not in attribute_ids or not bool((attributes == attribute_ids[name]).any()), name
    for package in stdlib_packages([name.partition("/")[2] for name in PACKAGES]):
        for function in read_functions(package)[0]:
            assert function.qualname.rpartition(".")[2] not in function.graph.attributes


def test_deterministic_rebuild(dataset, data_root):
    again = PythonCode(str(data_root / "rebuild"), packages=PACKAGES)
    assert again.functions == dataset.functions and again.vocab == dataset.vocab
    assert again.attributes == dataset.attributes and len(again) == len(dataset)
    for index in range(len(dataset)):
        _assert_same_tree(again[index], dataset[index])


def test_package_split_needs_a_package_per_split():
    assert package_split({"a": 50, "b": 8, "c": 7}) == {"a": "train", "b": "valid", "c": "test"}
    with pytest.raises(ValueError, match="get no package"):
        package_split({"a": 50, "b": 8})


# ---------------------------------------------------------------------- ogbg-code2 through ogb
def _write_csv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as file:
        for row in rows:
            file.write((",".join(map(str, row)) if isinstance(row, (list, tuple)) else str(row)) + "\n")


def write_code2_fixture(folder: Path, graphs: list, split: dict[str, list[int]], types: list[str],
                        attributes: list[str]) -> None:
    """``graphs`` (OGB code2 layout) as an ``ogbg_code2`` folder in OGB's csv.gz layout (as its zip
    unpacks)."""
    raw = folder / "raw"
    _write_csv(raw / "edge.csv.gz", [edge for g in graphs for edge in g.edge_index.t().tolist()])
    _write_csv(raw / "num-node-list.csv.gz", [g.num_nodes for g in graphs])
    _write_csv(raw / "num-edge-list.csv.gz", [g.edge_index.size(1) for g in graphs])
    _write_csv(raw / "node-feat.csv.gz", [row for g in graphs for row in g.x.tolist()])
    for key in ("node_is_attributed", "node_dfs_order", "node_depth"):
        _write_csv(raw / f"{key}.csv.gz", [v for g in graphs for v in g[key].view(-1).tolist()])
    _write_csv(raw / "graph-label.csv.gz", [" ".join(g.y) for g in graphs])
    for part, index in split.items():
        _write_csv(folder / "split" / "project" / f"{part}.csv.gz", index)
    (folder / "mapping").mkdir()
    pandas.DataFrame({"type idx": range(len(types)), "type": types}).to_csv(
        folder / "mapping" / "typeidx2type.csv.gz", index=False)
    pandas.DataFrame({"attr idx": range(len(attributes)), "attr": attributes}).to_csv(
        folder / "mapping" / "attridx2attr.csv.gz", index=False)
    (folder / "RELEASE_v1.txt").write_text("# Release note for ogbg-code2\n\n### v1: fixture\n")


@pytest.fixture(scope="module")
def code2_fixture(tmp_path_factory):
    """Real json/html functions in ogbg-code2's layout (split by package: json train, html valid + test)."""
    functions = [f for package in stdlib_packages(["json", "html"]) for f in read_functions(package)[0]]
    graphs = [f.graph for f in functions]
    types = [UNK_TOKEN, *sorted({t for g in graphs for t in g.types})]
    attributes = [NONE_TOKEN, UNK_TOKEN, *sorted({a for g in graphs for a in g.attributes if a is not None})]
    type_index = {t: i for i, t in enumerate(types)}
    attribute_index = {a: i for i, a in enumerate(attributes)}
    data = [ogb_code_graph(f.graph, type_index, attribute_index, f.subtokens) for f in functions]
    train = [i for i, f in enumerate(functions) if f.package == "stdlib/json"]
    rest = [i for i, f in enumerate(functions) if f.package == "stdlib/html"]
    split = {"train": train, "valid": rest[: len(rest) // 2], "test": rest[len(rest) // 2:]}
    source = tmp_path_factory.mktemp("code2") / "ogbg_code2"
    write_code2_fixture(source, data, split, types, attributes)
    return source, data, split, len(types), len(attributes)


def test_ogbg_code2_fixture_through_ogb_gives_the_same_trees(code2_fixture, tmp_path):
    source, data, split, num_types, num_attributes = code2_fixture
    dataset = OGBCode2(str(tmp_path / "ogb"), source=source, num_vocab=50)
    assert len(dataset) == len(data) and dataset.num_types == num_types
    assert dataset.num_attributes == num_attributes
    assert {k: v.tolist() for k, v in dataset.split_idx.items()} == split
    vocab = target_vocabulary([data[i].y for i in split["train"]], 50)
    assert dataset.vocab == vocab
    builder = CodeHierarchy(vocab)
    for index in range(len(data)):
        _assert_same_tree(dataset[index], builder(data[index]))


def test_subtoken_metrics_are_ogb_evaluator_f1():
    from ogb.graphproppred import Evaluator

    vocab = ["get", "item", "set"]
    unk, eos = len(vocab), len(vocab) + 1
    y = torch.tensor([[0, 1, eos], [unk, 1, eos], [2, eos, eos]])
    predicted = torch.tensor([[0, 2, eos], [unk, 1, eos], [2, eos, 0]])
    logits = F.one_hot(predicted, len(vocab) + 2).float().view(-1, len(vocab) + 2)
    scores = subtoken_metrics(vocab)(logits, y)
    reference = Evaluator("ogbg-code2").eval({
        "seq_ref": [["get", "item"], ["rare", "item"], ["set"]],
        "seq_pred": [["get", "set"], [UNK_TOKEN, "item"], ["set"]]})
    assert scores == pytest.approx({"f1": reference["F1"], "precision": reference["precision"],
                                    "recall": reference["recall"]})
    assert scores["f1"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    with pytest.raises(ValueError, match=r"\[N \* L, V\]"):
        subtoken_metrics(vocab)(logits[:-1], y)


# ---------------------------------------------------------------------- models and training
@pytest.mark.parametrize("model", CODE_MODELS)
def test_each_model_learns_a_batch(dataset, model):
    torch.manual_seed(0)
    config = TrainConfig(task="code-python", model=model, hidden=32, heads=2, layers=2, dropout=0.0)
    task = code_task("code-python", dataset, config)
    net = task.build_model(model, config)
    batch = next(iter(DataLoader(task.splits["train"][:8], batch_size=8)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        logits = net(batch)
        assert logits.shape == (8 * dataset.max_seq_len, task.num_outputs)
        loss = F.cross_entropy(logits, batch.y.view(-1))
        loss.backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    net.eval()
    assert 0.0 <= task.evaluate(net(batch), batch.y)["f1"] <= 1.0


@pytest.mark.parametrize("model", CODE_MODELS)
def test_each_model_trains_on_a_batch_of_one_function(dataset, model):
    """The last training batch of an epoch may hold one graph (the virtual node's batch norm sees one row)."""
    config = TrainConfig(task="code-python", model=model, hidden=16, heads=2, layers=2)
    task = code_task("code-python", dataset, config)
    net = task.build_model(model, config).train()
    batch = next(iter(DataLoader(task.splits["train"][:1], batch_size=1)))
    F.cross_entropy(net(batch), batch.y.view(-1)).backward()


def test_hgattn_train_code_python_from_a_source_folder(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = tmp_path / "packages"
    source.mkdir()
    for name in PACKAGES:
        entry = name.partition("/")[2]
        if (stdlib / entry).is_dir():
            shutil.copytree(stdlib / entry, source / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(stdlib / f"{entry}.py", source)
    run = subprocess.run(
        [sys.executable, "-m", "hgattn", "train", "--task", "code-python", "--model", "hsa", "--epochs", "1",
         "--max-graphs", "200", "--hidden", "32", "--heads", "2", "--threads", "1", "--source", str(source),
         "--data-root", str(tmp_path / "data"), "--out-dir", str(tmp_path / "runs"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test f1" in run.stdout
    record = json.loads((tmp_path / "runs" / "results.jsonl").read_text().splitlines()[0])
    assert record["task"] == "code-python" and 0.0 <= record["test_f1"] <= 1.0
    assert {"test_precision", "test_recall"} <= set(record)
