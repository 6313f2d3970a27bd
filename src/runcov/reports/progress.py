"""Progress indication on stderr for long-running report work."""

from __future__ import annotations

import os
import sys
from typing import Optional, TextIO

from runcov.config import OFF_WORDS, ON_WORDS


def progress_wanted(flag: Optional[bool], stream: TextIO) -> bool:
    """Explicit flag first, then ``RUNCOV_PROGRESS``, then "only on a terminal"."""
    if flag is not None:
        return flag
    env = os.environ.get("RUNCOV_PROGRESS", "").strip().lower()
    if env in ON_WORDS:
        return True
    if env in OFF_WORDS:
        return False
    return stream.isatty()


class Progress:
    """Counts work items and rewrites one status line on stderr; silent when disabled.

    On a terminal the line is redrawn in place (carriage return); elsewhere (CI logs) a line
    is printed at every tenth of the work so that logs stay short.
    """

    def __init__(
        self, label: str, total: Optional[int] = None, enabled: bool = True,
        stream: Optional[TextIO] = None, unit: str = "", scale: int = 1,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.unit = unit
        self.scale = scale
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._tty = self.enabled and self.stream.isatty()
        self._last_decile = -1
        self._shown = False

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more items done."""
        if not self.enabled:
            return
        self.done += n
        if self._tty:
            self.stream.write("\r" + self._text())
            self.stream.flush()
            self._shown = True
        elif self.total:
            decile = min(10, self.done * 10 // self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._text() + "\n")
                self._shown = True

    def _text(self) -> str:
        if self.scale != 1:
            return f"{self.label}: {self.done / self.scale:.1f}{self.unit}"
        if self.total:
            pct = 100 * self.done // self.total
            return f"{self.label}: {self.done}/{self.total}{self.unit} ({pct}%)"
        return f"{self.label}: {self.done}{self.unit}"

    def finish(self) -> None:
        """Print the final state once and end the status line."""
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + self._text() + "\n")
        elif not self._shown or (self.total and self._last_decile != 10) or not self.total:
            self.stream.write(self._text() + "\n")
        self.stream.flush()
