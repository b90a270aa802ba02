"""Peak memory of a code region: CUDA allocator peak, or the process's peak resident set on Linux."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

__all__ = ["PeakMemory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """Context manager measuring the peak memory increase inside it, in bytes (``None`` if unmeasurable).

    CUDA: ``torch.cuda.max_memory_allocated`` over the region minus the allocation at its start. CPU (Linux):
    the peak resident set ``VmHWM`` (reset through ``/proc/self/clear_refs`` at the start) minus the resident
    set at the start; elsewhere ``None``.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.base = 0
        self.peak: Optional[int] = None
        self._rss_ok = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self._can_reset_rss():
            self.base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self._rss_ok:
            self.peak = max(_status_bytes("VmHWM") - self.base, 0)

    def _can_reset_rss(self) -> bool:
        try:
            _CLEAR_REFS.write_text("5")
            self._rss_ok = True
        except OSError:
            self._rss_ok = False
        return self._rss_ok
