"""Run configuration: defaults, YAML files, validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_yaml_config"]


@dataclass
class TrainConfig:
    """Everything that defines one training run (``hgattn train`` flags and YAML keys use these names, with
    ``-`` for ``_`` on the command line)."""

    task: str = "bbc-news"
    model: str = "hsa"
    epochs: int = 10
    seed: int = 0
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
    resume: bool = False
    distributed: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hidden", "heads", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        for name in ("max_graphs", "articles_per_topic"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file, keys checked against :class:`TrainConfig` (``-`` read as ``_``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path}: a config must be a mapping of option names to values, got {type(loaded).__name__}"
        )
    config = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(config) - set(TrainConfig.field_names()))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; known: {TrainConfig.field_names()}")
    return config
