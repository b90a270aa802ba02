"""Faults in ``hgattn train``: SIGKILL at chosen points (mid-epoch, during and after the checkpoint save,
while results are written) followed by ``--resume`` must end with weights, optimizer state, history and
results bit-identical to an uninterrupted run; damaged checkpoints are refused naming the file; every bad
config value fails with an error naming the option and the value, before any data loads."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import hgattn.train
from hgattn import cli
from hgattn.train.checkpoint import load_checkpoint
from hgattn.train.results import read_jsonl

REPO = Path(__file__).resolve().parents[1]
CORA = REPO.parent / "shared" / "data" / "planetoid" / "Cora" / "raw"
MOLBACE = REPO.parent / "shared" / "data" / "ogb" / "ogbg_molbace"
RUN = "cora-gcn-seed0"
#: Result and history keys that measure the machine, not the run (they differ between any two runs).
TIMINGS = ("train_seconds", "peak_bytes", "seconds_per_epoch")

#: Runs ``hgattn train`` (argv[2:]) and SIGKILLs itself at one point, ``<point>:<n>`` (argv[1]), counted
#: in this process: ``step:n`` inside the n-th optimizer step (gradients computed, weights not yet updated);
#: ``save:n`` in the n-th checkpoint save, its temporary file written and fsynced but not renamed;
#: ``saved:n`` just after the n-th checkpoint rename; ``results:n`` in the n-th write of results.jsonl,
#: before its rename.
DRIVER = """
import os, signal, sys
import torch

point, count = sys.argv[1].split(":")
calls = [0]

def reached():
    calls[0] += 1
    return calls[0] == int(count)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "step":
    step = torch.optim.AdamW.step
    def killing_step(self, *args, **kwargs):
        if reached():
            die()
        return step(self, *args, **kwargs)
    torch.optim.AdamW.step = killing_step
else:
    target = "results.jsonl" if point == "results" else "checkpoint.pt"
    replace = os.replace
    def killing_replace(src, dst, *args, **kwargs):
        hit = os.path.basename(dst) == target and reached()
        if hit and point != "saved":
            die()
        replace(src, dst, *args, **kwargs)
        if hit:
            die()
    os.replace = killing_replace

from hgattn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _needs_cora() -> None:
    if not CORA.is_dir():
        pytest.skip("needs the real Planetoid files in ../shared/data")
    pytest.importorskip("pymetis")


@pytest.fixture(scope="module")
def cora_root(tmp_path_factory) -> Path:
    """A data root with Cora processed once (later runs only read it)."""
    _needs_cora()
    root = tmp_path_factory.mktemp("cora-data")
    config = hgattn.train.TrainConfig(task="cora", model="gcn", data_root=str(root), source=str(CORA))
    hgattn.train.load_task(config)
    return root


def _cora_args(out_dir: Path, data_root: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--task", "cora", "--model", "gcn", "--hidden", "16", "--dropout", "0.5", "--epochs",
            str(epochs), "--out-dir", str(out_dir), "--data-root", str(data_root), "--source", str(CORA),
            "--no-progress", *extra]


def _hgattn(tmp_path: Path, args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    """``python -m hgattn <args>`` in a subprocess, or the same through :data:`DRIVER` killing at ``kill``."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    command = [sys.executable, *(["-m", "hgattn"] if kill is None else [str(driver), kill]), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def _killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


def _without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in keys}


def _assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Nested checkpoint contents equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_same_run(reference: Path, resumed: Path, run: str = RUN) -> None:
    """The run in ``resumed`` ended exactly as the uninterrupted one in ``reference``: weights, optimizer
    state, history (timings aside) and one result record each; no temporary file left behind."""
    a, b = (load_checkpoint(out / run / "checkpoint.pt") for out in (reference, resumed))
    assert a["epoch"] == b["epoch"]
    _assert_same_state(a["model"], b["model"], "model")
    _assert_same_state(a["optimizer"], b["optimizer"], "optimizer")
    assert [_without(r, *TIMINGS) for r in a["history"]] == [_without(r, *TIMINGS) for r in b["history"]]
    (first,), (second,) = read_jsonl(reference / "results.jsonl"), read_jsonl(resumed / "results.jsonl")
    volatile = (*TIMINGS, "history", "config", "resumed_from_epoch")
    assert _without(first, *volatile) == _without(second, *volatile)
    assert _without(first["config"], "resume", "out_dir") == _without(second["config"], "resume", "out_dir")
    assert not list(resumed.rglob("*.tmp")), list(resumed.rglob("*.tmp"))


# ---------------------------------------------------------------- SIGKILL and resume
def test_sigkill_at_each_point_then_resume_is_bit_identical(tmp_path, cora_root) -> None:
    """One run killed three times (mid-epoch 2, in the save of epoch 3, right after the last checkpoint and
    before its result is recorded) and resumed each time ends exactly as an uninterrupted run, one record."""
    epochs = 4
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _ok(_hgattn(tmp_path, _cora_args(reference, cora_root, epochs)))

    _killed(_hgattn(tmp_path, _cora_args(resumed, cora_root, epochs), kill="step:2"))
    assert load_checkpoint(resumed / RUN / "checkpoint.pt")["epoch"] == 1
    _killed(_hgattn(tmp_path, _cora_args(resumed, cora_root, epochs, "--resume"), kill="save:2"))
    assert load_checkpoint(resumed / RUN / "checkpoint.pt")["epoch"] == 2  # epoch 3's save never landed
    assert list((resumed / RUN).glob(".checkpoint.pt.*.tmp"))  # its temporary file is left behind
    _killed(_hgattn(tmp_path, _cora_args(resumed, cora_root, epochs, "--resume"), kill="saved:2"))
    assert load_checkpoint(resumed / RUN / "checkpoint.pt")["epoch"] == epochs
    assert not (resumed / "results.jsonl").exists()

    done = _hgattn(tmp_path, _cora_args(resumed, cora_root, epochs, "--resume"))
    _ok(done)
    assert "recorded now" in done.stderr
    _assert_same_run(reference, resumed)


@pytest.mark.slow
def test_sigkill_while_results_are_written_then_resume(tmp_path, cora_root) -> None:
    """Killed in the rename of results.jsonl (first run) and in that of summary.md (its resume): results
    stay whole and the run is recorded exactly once."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _ok(_hgattn(tmp_path, _cora_args(reference, cora_root, 2)))
    _killed(_hgattn(tmp_path, _cora_args(resumed, cora_root, 2), kill="results:1"))
    assert not (resumed / "results.jsonl").exists() and list(resumed.glob(".results.jsonl.*.tmp"))
    done = _hgattn(tmp_path, _cora_args(resumed, cora_root, 2, "--resume"))
    _ok(done)
    assert "recorded now" in done.stderr
    done = _hgattn(tmp_path, _cora_args(resumed, cora_root, 2, "--resume"))
    _ok(done)
    assert "not recorded again" in done.stderr
    _assert_same_run(reference, resumed)


@pytest.mark.slow
def test_sigkill_in_the_first_epoch_leaves_nothing_to_resume(tmp_path, cora_root) -> None:
    out = tmp_path / "runs"
    _killed(_hgattn(tmp_path, _cora_args(out, cora_root, 2), kill="step:1"))
    done = _hgattn(tmp_path, _cora_args(out, cora_root, 2, "--resume"))
    assert done.returncode == 2 and f"no checkpoint at {out / RUN / 'checkpoint.pt'}" in done.stderr
    _ok(_hgattn(tmp_path, _cora_args(out, cora_root, 2)))
    assert len(read_jsonl(out / "results.jsonl")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_times_then_resume_is_bit_identical(tmp_path, cora_root, seed: int) -> None:
    """Plain ``python -m hgattn train`` killed from outside at random moments after it saved a checkpoint
    (wherever that lands: in an epoch, a save, evaluation, the results), resumed until it finishes."""
    epochs, delays = 40, random.Random(seed)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _ok(_hgattn(tmp_path, _cora_args(reference, cora_root, epochs)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    checkpoint, epochs_at_kill = resumed / RUN / "checkpoint.pt", []
    for attempt in range(3):
        before = _inode(checkpoint)
        resume = ["--resume"] if before is not None else []
        command = [sys.executable, "-m", "hgattn", *_cora_args(resumed, cora_root, epochs, *resume)]
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _inode(checkpoint) == before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # until this process has saved a checkpoint of its own
        time.sleep(delays.uniform(0, 0.4))
        process.send_signal(signal.SIGKILL)
        if process.wait() == -signal.SIGKILL:
            epochs_at_kill.append(load_checkpoint(checkpoint)["epoch"])
    resume = ["--resume"] if checkpoint.is_file() else []
    _ok(_hgattn(tmp_path, _cora_args(resumed, cora_root, epochs, *resume)))
    assert epochs_at_kill and epochs_at_kill == sorted(epochs_at_kill)  # killed, each time further on
    _assert_same_run(reference, resumed)


def _inode(path: Path) -> int | None:
    """``path``'s inode (every atomic save makes a new one), ``None`` when there is no file."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_of_a_batched_graph_task(tmp_path) -> None:
    """ogbg-molbace (real molecules, 300 of them, batches of 32): killed inside a batch of epoch 2 and in
    the save of epoch 2, resumed: the same weights as an uninterrupted run (the epoch's shuffle replays)."""
    if not (MOLBACE / "raw").is_dir():
        pytest.skip("needs ../shared/data/ogb/ogbg_molbace")
    pytest.importorskip("ogb")
    pytest.importorskip("rdkit")
    import shutil

    source = tmp_path / "source" / "ogbg_molbace"
    shutil.copytree(MOLBACE, source)
    batches_per_epoch = -(-240 // 32)  # 300 molecules, the 80% scaffold-train part, in batches of 32

    def args(out: Path, *extra: str) -> list[str]:
        return ["train", "--task", "ogbg-molbace", "--model", "gin", "--max-graphs", "300", "--batch-size",
                "32", "--hidden", "16", "--epochs", "3", "--out-dir", str(out), "--data-root",
                str(tmp_path / "data"), "--source", str(source), "--no-progress", *extra]

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _ok(_hgattn(tmp_path, args(reference)))
    _killed(_hgattn(tmp_path, args(resumed), kill=f"step:{batches_per_epoch + 3}"))
    assert load_checkpoint(resumed / "ogbg-molbace-gin-seed0" / "checkpoint.pt")["epoch"] == 1
    _killed(_hgattn(tmp_path, args(resumed, "--resume"), kill="save:1"))
    _ok(_hgattn(tmp_path, args(resumed, "--resume")))
    _assert_same_run(reference, resumed, "ogbg-molbace-gin-seed0")


# ---------------------------------------------------------------- damaged checkpoints through the CLI
@pytest.fixture(scope="module")
def cora_run(tmp_path_factory, cora_root) -> Path:
    """The out_dir of a finished 2-epoch Cora run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("cora-run")
    assert cli.main(_cora_args(out, cora_root, 2)) == 0
    return out


@pytest.mark.parametrize("position", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
def test_flipped_bytes_in_a_checkpoint_are_refused_naming_it(
    tmp_path, cora_root, cora_run, capsys, position: float
) -> None:
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(cora_run, out)
    path = out / RUN / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * position), len(data) - 64)
    data[start : start + 64] = bytes(byte ^ 0xFF for byte in data[start : start + 64])
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(_cora_args(out, cora_root, 3, "--resume")) == 2
    error = capsys.readouterr().err
    assert f"checkpoint {path}" in error and ("damaged" in error or "checksum header" in error)
    assert path.read_bytes() == bytes(data)  # refused before anything was trained or written


# ---------------------------------------------------------------- bad configs, table-driven
@pytest.fixture
def no_data(monkeypatch) -> list:
    """Records any attempt of ``hgattn train`` to load a task's data (none should happen for bad input)."""
    loads: list = []
    monkeypatch.setattr(
        hgattn.train, "load_task", lambda config: loads.append(config) or pytest.fail("data loaded")
    )
    return loads


#: (YAML text, fragments the error must contain: the option and its value as written in the message).
BAD_YAML = [
    ("epochs: ten\n", ["epochs must be an integer", "'ten'"]),
    ("hidden: '64'\n", ["hidden must be an integer", "'64'", "without quotes"]),
    ("epochs: 2.5\n", ["epochs must be an integer", "2.5"]),
    ("epochs: 1e3\n", ["epochs must be an integer", "1000.0"]),
    ("epochs: true\n", ["epochs must be an integer", "True (bool)"]),
    ("epochs: 0\n", ["epochs must be >= 1", "0"]),
    ("resume: 'false'\n", ["resume must be true or false", "'false'"]),
    ("progress: 1\n", ["progress must be true or false", "1 (int)"]),
    ("lr: .inf\n", ["lr must be a finite number", "inf"]),
    ("lr: .nan\n", ["lr must be a finite number", "nan"]),
    ("lr: -1e-3\n", ["lr must be > 0", "-0.001"]),
    ("lr: '1e-3'\n", ["lr must be a number", "'1e-3'"]),
    ("lr: null\n", ["lr must be a number", "None"]),
    ("weight_decay: -1\n", ["weight_decay must be >= 0", "-1"]),
    ("dropout: 1.0\n", ["dropout must be in [0, 1)", "1.0"]),
    ("seed: -1\n", ["seed must be in [0, 2**32)", "-1"]),
    ("batch_size: null\n", ["batch_size must be an integer", "None"]),
    ("max_graphs: 0\n", ["max_graphs must be >= 1", "0"]),
    ("articles_per_topic: 2.0\n", ["articles_per_topic must be an integer or null", "2.0"]),
    ("data_root: 5\n", ["data_root must be a non-empty string", "5 (int)"]),
    ("out_dir: ''\n", ["out_dir must be a non-empty string", "''"]),
    ("task: [cora]\n", ["task must be a non-empty string", "['cora']"]),
    ("device: gpu\n", ["device must be cpu, cuda, cuda:<index> or mps", "'gpu'"]),
    ("lr: 0.1\nlr: 0.01\n", ["option 'lr' is given twice"]),
    ("batch-size: 8\nbatch_size: 4\n", ["option 'batch_size' is given twice"]),
    ("learning_rate: 0.1\n", ["unknown option(s) ['learning_rate']"]),
    ("- lr\n", ["a config must be a mapping", "list"]),
    ("lr: [0.1\nepochs: 2\n", ["not valid YAML", "expected ',' or ']'"]),
    ("hidden: 30\nheads: 4\n", ["hidden (30) must be divisible by heads (4)"]),
]


@pytest.mark.parametrize("text, fragments", BAD_YAML, ids=[text.splitlines()[0] for text, _ in BAD_YAML])
def test_bad_yaml_values_fail_before_data_loads(tmp_path, capsys, no_data, text: str, fragments) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path), "--out-dir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("hgattn train: error: "), error  # one line
    for fragment in fragments:
        assert fragment in error, error
    if not any("divisible" in fragment for fragment in fragments):  # one value: its file and line named
        assert str(path) in error
    assert not no_data and not (tmp_path / "runs").exists()


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys, no_data) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("task: cora\nlr: [0.1\nepochs: 2\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    assert f"{path}:3:7: not valid YAML" in capsys.readouterr().err


BAD_FLAGS = [
    (["--lr", "nan"], ["lr must be a finite number", "nan"]),
    (["--lr", "inf"], ["lr must be a finite number", "inf"]),
    (["--lr", "0"], ["lr must be > 0", "0.0"]),
    (["--weight-decay", "-0.1"], ["weight_decay must be >= 0", "-0.1"]),
    (["--dropout", "-0.5"], ["dropout must be in [0, 1)", "-0.5"]),
    (["--seed", "-3"], ["seed must be in [0, 2**32)", "-3"]),
    (["--heads", "0"], ["heads must be >= 1", "0"]),
    (["--max-graphs", "-1"], ["max_graphs must be >= 1", "-1"]),
    (["--device", "cuda:x"], ["device must be cpu, cuda, cuda:<index> or mps", "'cuda:x'"]),
    (["--apply-config-changes"], ["--apply-config-changes", "needs --resume"]),
]


@pytest.mark.parametrize("flags, fragments", BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_bad_flag_values_fail_before_data_loads(tmp_path, capsys, no_data, flags, fragments) -> None:
    assert cli.main(["train", "--out-dir", str(tmp_path / "runs"), *flags]) == 2
    error = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in error, error
    assert not no_data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, no_data, device: str) -> None:
    assert cli.main(["train", "--device", device, "--out-dir", str(tmp_path)]) == 2
    assert f"device is '{device}' but CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--epochs", "ten"], ["--epochs", "2.5"], ["--lr", "fast"]])
def test_unparseable_flags_are_argparse_errors(capsys, flag) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", *flag])
    assert exit.value.code == 2 and f"argument {flag[0]}: invalid" in capsys.readouterr().err


def test_resume_without_a_checkpoint_fails_before_data_loads(tmp_path, capsys, no_data) -> None:
    assert cli.main(["train", "--task", "cora", "--out-dir", str(tmp_path), "--resume"]) == 2
    path = tmp_path / "cora-hsa-seed0" / "checkpoint.pt"
    assert f"no checkpoint at {path}" in capsys.readouterr().err and not no_data


def test_damaged_results_file_fails_before_data_loads(tmp_path, capsys, no_data) -> None:
    (tmp_path / "results.jsonl").write_text('{"task": "cora"}\n{"task": "co')
    assert cli.main(["train", "--task", "cora", "--out-dir", str(tmp_path)]) == 2
    assert f"{tmp_path / 'results.jsonl'}:2: not a JSON record" in capsys.readouterr().err and not no_data
