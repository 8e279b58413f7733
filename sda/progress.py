"""A dependency-free progress bar for long runs on a terminal (plain lines when not a tty)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`with Progress("participants", total) as bar: bar.advance()` draws one updating line."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._start = self._last = time.monotonic()

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done = self.total if exc[0] is None else self.done
        self._draw(force=True, end=True)

    def advance(self, n: int = 1) -> None:
        """Count n more items done."""
        self.done += n
        self._draw()

    def _draw(self, force: bool = False, end: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = (f"{self.label:<14} [{bar}] {self.done:>7}/{self.total:<7}"
                f" {frac * 100:5.1f}%  {now - self._start:6.1f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if end else ""))
        elif end or force:
            self.stream.write(line + "\n")
        self.stream.flush()
