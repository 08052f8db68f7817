"""A minimal progress bar for terminals (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws one line on a TTY at most every 0.1 s; silent elsewhere."""

    def __init__(self, total: int, *, stream: TextIO | None = None, label: str = "frames"):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self.count = 0
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, *, note: str = "") -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.count < self.total:
            return
        self._last = now
        frac = self.count / self.total if self.total else 1.0
        width = 30
        filled = int(round(frac * width))
        rate = self.count / max(now - self._start, 1e-9)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
            f"{self.label} {rate:6.1f}/s {note[:30]:<30}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
