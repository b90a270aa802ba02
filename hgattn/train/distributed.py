"""``torch.distributed`` data-parallel training (launched by ``torchrun``): process group set-up, samplers,
DDP wrapping; rank 0 alone logs and writes checkpoints and results."""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["setup", "teardown", "is_main", "world_size", "main_first", "train_sampler", "wrap"]

T = TypeVar("T")


def setup(device: str) -> str:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...): NCCL on CUDA, gloo on CPU. Returns this rank's device (``cuda:<LOCAL_RANK>`` on
    CUDA).

    Raises:
        ValueError: outside ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "--distributed needs torchrun (e.g. torchrun --nproc_per_node=2 -m hgattn train ... "
            "--distributed): RANK and WORLD_SIZE are not set"
        )
    cuda = torch.device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def teardown() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0, or when not distributed."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def main_first(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on rank 0 first, then on the other ranks (e.g. so that only rank 0 processes and
    writes a dataset, which the others then read); just the call when not distributed."""
    if not dist.is_initialized():
        return function(*args)
    if not is_main():
        dist.barrier()
    result = function(*args)
    if is_main():
        dist.barrier()
    return result


def train_sampler(dataset: Dataset, seed: int, epoch: int) -> DistributedSampler | None:
    """A shuffling ``DistributedSampler`` for ``epoch`` when distributed, else ``None``."""
    if not dist.is_initialized():
        return None
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def wrap(model: torch.nn.Module) -> Any:
    """``DistributedDataParallel(model)`` when distributed, else ``model``."""
    if not dist.is_initialized():
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
