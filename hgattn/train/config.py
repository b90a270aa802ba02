"""Run configuration: defaults, YAML files, and a typed schema that checks every option before data loads.

Every :class:`TrainConfig` field is checked against its annotated type and its range when the config is
built (from the command line, a YAML file or Python alike), so a bad value fails before any data loads, with
an error naming the option and the value:

* integers only from integers (``2.5``, ``'64'`` and ``true`` are not integers: booleans are not numbers);
* numbers (``float`` fields) from integers or floats, finite only (``.inf`` and ``.nan`` are refused);
* booleans only from booleans (``'false'``, quoted, is a string and is refused);
* strings only from non-empty strings; ``None`` (YAML ``null``) only where the field is optional.

YAML files are read with YAML 1.2's rule for floats, so ``lr: 1e-3`` is the number 0.001 (PyYAML's YAML 1.1
resolver would read it as the string ``'1e-3'``). A quoted value (``hidden: '64'``) stays a string and is
refused for a number: values keep the type YAML gives them.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Callable

__all__ = ["TrainConfig", "load_yaml_config", "validate_option"]

#: Optimizers of ``TrainConfig.optimizer``: AdamW (decoupled weight decay) and Adam (weight decay as an L2 term
#: in the gradient, as the published GCN is trained).
OPTIMIZERS = ("adamw", "adam")
_AT_LEAST_ONE: tuple[Callable[[Any], bool], str] = (lambda value: value >= 1, ">= 1")
#: Range of each numeric option: a test and how the requirement reads in an error message.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _AT_LEAST_ONE,
    "seed": (lambda value: 0 <= value < 2**32, "in [0, 2**32)"),
    "lr": (lambda value: value > 0, "> 0"),
    "weight_decay": (lambda value: value >= 0, ">= 0"),
    "batch_size": _AT_LEAST_ONE,
    "hidden": _AT_LEAST_ONE,
    "heads": _AT_LEAST_ONE,
    "layers": _AT_LEAST_ONE,
    "dropout": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "max_graphs": _AT_LEAST_ONE,
    "articles_per_topic": _AT_LEAST_ONE,
    "threads": _AT_LEAST_ONE,
    "optimizer": (lambda value: value in OPTIMIZERS, f"one of {OPTIMIZERS}"),
}
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
#: Floats in exponent notation without a dot (``1e-3``, ``-2E+5``), which YAML 1.1 reads as strings.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@dataclass
class TrainConfig:
    """Everything that defines one training run (``hgattn train`` flags and YAML keys use these names, with
    ``-`` for ``_`` on the command line).

    Every field is checked on construction (see the module docstring): its type, its range, ``hidden``
    divisible by ``heads`` and ``device`` available here.

    Raises:
        ValueError: naming the first bad option and its value.
    """

    task: str = "bbc-news"
    model: str = "hsa"
    epochs: int = 10
    seed: int = 0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    out_dir: str = "runs/train"
    data_root: str = "runs/data"
    source: str | None = None
    max_graphs: int | None = None
    articles_per_topic: int | None = None
    device: str = "cpu"
    threads: int | None = None
    resume: bool = False
    distributed: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in self.field_names():
            setattr(self, name, validate_option(name, getattr(self, name)))
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@cache
def _schema() -> dict[str, tuple[type, bool]]:
    """``{field: (type, optional)}`` from :class:`TrainConfig`'s annotations (``int | None``: int, True)."""
    schema = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [member for member in members if member is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _KIND_NAMES:
            raise TypeError(f"TrainConfig.{name}: the schema supports bool, int, float, str and X | None")
        schema[name] = (kinds[0], len(kinds) < len(members))
    return schema


def validate_option(name: str, value: Any) -> Any:
    """``value`` checked against the type and range of :class:`TrainConfig` field ``name`` (``device``:
    also that this machine has it, see :func:`check_device`); returned as that type (an integer given for a
    number becomes a float).

    Raises:
        ValueError: an unknown option, or a value of the wrong type or out of range (naming both).
    """
    schema = _schema()
    if name not in schema:
        raise ValueError(f"unknown option {name!r}; known: {list(schema)}")
    kind, optional = schema[name]
    if value is None and optional:
        return None
    if not _has_kind(value, kind):
        raise ValueError(
            f"{name} must be {_KIND_NAMES[kind]}{' or null' if optional else ''}, "
            f"got {value!r} ({type(value).__name__}){_quoting_hint(value, kind)}"
        )
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    test, requirement = _RANGES.get(name, (None, ""))
    if test is not None and not test(value):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    if name == "device":
        check_device(value)
    return value


def _has_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) and value != ""


def _quoting_hint(value: Any, kind: type) -> str:
    if isinstance(value, str) and kind in (int, float, bool):
        return "; a quoted YAML value is a string: write it without quotes"
    return ""


def check_device(device: str) -> None:
    """Check that ``device`` names a torch device this machine has (``cpu``, ``cuda``, ``cuda:<i>``, ``mps``).

    Raises:
        ValueError: an unknown device string, or CUDA / MPS asked for where it is not available.
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be cpu, cuda, cuda:<index> or mps, got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device is {device!r} but CUDA is not available ({why}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device is {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device is {device!r} but MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be cpu, cuda, cuda:<index> or mps, got {device!r}")


def _yaml_loader() -> type:
    """PyYAML's safe loader, with YAML 1.2's exponent floats (``1e-3``) read as floats."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return ConfigLoader


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file, every key checked against :class:`TrainConfig` (``-`` read as
    ``_``) and every value against its type and range (see :func:`validate_option`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``<path>:<line>: ...`` for a YAML syntax error, a document that is not a mapping, a key
            given twice, an unknown key or a bad value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    loader = _yaml_loader()(path.read_text())
    try:
        node = loader.get_single_node()
        loaded = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as error:
        raise ValueError(_yaml_error_line(path, error)) from None
    finally:
        loader.dispose()
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path}: a config must be a mapping of option names to values, got {type(loaded).__name__}"
        )
    lines = _key_lines(path, node) if node is not None else {}
    config = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(config) - set(TrainConfig.field_names()))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; known: {TrainConfig.field_names()}")
    for name, value in config.items():
        try:
            config[name] = validate_option(name, value)
        except ValueError as error:
            raise ValueError(f"{path}:{lines.get(name, '?')}: {error}") from None
    return config


def _key_lines(path: Path, node: Any) -> dict[str, int]:
    """``{option: line}`` of a YAML mapping node (1-based lines).

    Raises:
        ValueError: an option given twice (PyYAML would silently keep the last one).
    """
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        name, line = str(key_node.value).replace("-", "_"), key_node.start_mark.line + 1
        if name in lines:
            raise ValueError(f"{path}:{line}: option {name!r} is given twice (first on line {lines[name]})")
        lines[name] = line
    return lines


def _yaml_error_line(path: Path, error: Exception) -> str:
    """A one-line message for a YAML parse error: file, line, column and the problem."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: not valid YAML: {problem}{f' ({context})' if context else ''}"
