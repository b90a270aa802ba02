"""Peak memory of a code region: CUDA allocator peak, or the process's peak resident set on Linux."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Optional

import torch

__all__ = ["PeakMemory", "process_status_bytes", "release_free_heap"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def process_status_bytes(field: str) -> int:
    """A byte-valued field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...; Linux)."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def release_free_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; nothing elsewhere), so that a resident-set
    baseline counts only live memory."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where that is impossible. (``ru_maxrss``
    cannot serve: after ``exec`` it keeps the peak of the image it replaced.)"""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory increase over a baseline, in bytes (``None`` where unmeasurable).

    As a context manager it measures the region and leaves the result in ``peak``; otherwise :meth:`start`
    takes the baseline and :meth:`peak_increase` reads the peak since then. CUDA:
    ``torch.cuda.max_memory_allocated`` minus the allocation at the start. CPU (Linux): the peak resident set
    ``VmHWM`` (reset through ``/proc/self/clear_refs`` at the start) minus the resident set at the start;
    ``release_heap`` first returns freed heap memory to the OS (:func:`release_free_heap`).
    """

    def __init__(self, device: torch.device | str = "cpu", release_heap: bool = False) -> None:
        self.device = torch.device(device)
        self.release_heap = release_heap
        self.base = 0
        self.available = False
        self.peak: Optional[int] = None

    def start(self) -> "PeakMemory":
        """Take the baseline now and reset the peak."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.available, self.base = True, torch.cuda.memory_allocated(self.device)
            return self
        if self.release_heap:
            release_free_heap()
        self.available = _reset_peak_rss()
        self.base = process_status_bytes("VmRSS") if self.available else 0
        return self

    def peak_increase(self) -> Optional[int]:
        """Bytes of the peak since :meth:`start` above the baseline (``None`` where unmeasurable)."""
        if not self.available:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return max(process_status_bytes("VmHWM") - self.base, 0)

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.peak = self.peak_increase()
