"""Progress reporting for long operations: a line on stderr when stderr is a
terminal, silence when piped (or when ``quiet``)."""
from __future__ import annotations

import sys
import time

TYPE_CHECKING = False   # typing is not imported at run time (start-up of every command)
if TYPE_CHECKING:
    from typing import Optional, TextIO


def human_bytes(n: float) -> str:
    """``1.5 GiB``: binary units, one decimal (bytes as a whole number)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Callable progress sink: ``p(done, total)``.  Rate-limited to ~10 Hz."""

    def __init__(self, label: str, total: Optional[int] = None, *, stream: Optional[TextIO] = None,
                 enabled: Optional[bool] = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (self.total is None or done < self.total):
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if self.total:
            pct = 100.0 * done / self.total
            msg = f"\r{self.label}: {pct:5.1f}% {human_bytes(done)}/{human_bytes(self.total)} {human_bytes(rate)}/s"
        else:
            msg = f"\r{self.label}: {human_bytes(done)} {human_bytes(rate)}/s"
        self.stream.write(msg + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
