"""Per-variant peak resident memory inside one benchmark process.

`getrusage` gives the process's all-time high-water mark, which after the first variant says
nothing about the next one. On Linux, writing "5" to /proc/self/clear_refs resets the high-water
mark (VmHWM) to the current RSS (kernel >= 4.0), so each variant gets its own peak: measured from
before it is loaded to the end of its timed loop. Everything loaded before (torch, other variants
still referenced) is in the baseline `rss_before_mb`; `rss_added_mb` is what the variant added.
Elsewhere the reset is unavailable and the report says `method: "getrusage"` (a process-wide peak).
Caveat: pages an earlier variant freed but the allocator kept are reused without raising RSS, so
a later variant's `rss_added_mb` can understate it; bench one source per run for an exact figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.timing import peak_rss_mb as process_peak_rss_mb

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where unsupported."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class MemoryWindow:
    method: str  # "vmhwm-reset" | "getrusage"
    rss_before_mb: float
    peak_rss_mb: float

    @property
    def rss_added_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.rss_before_mb)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rss_added_mb": self.rss_added_mb}


class PeakMemory:
    """with PeakMemory() as mem: ...load and time a variant...; mem.window"""

    def __enter__(self) -> PeakMemory:
        self.before = _status_mb("VmRSS") or 0.0
        self.resettable = reset_peak() and _status_mb("VmHWM") is not None
        self.window: MemoryWindow | None = None
        return self

    def __exit__(self, *exc: Any) -> None:
        peak = _status_mb("VmHWM") if self.resettable else None
        if peak is None:
            self.window = MemoryWindow("getrusage", self.before, process_peak_rss_mb())
        else:
            self.window = MemoryWindow("vmhwm-reset", self.before, peak)
