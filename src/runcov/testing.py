"""Test helpers for users and for runcov's own suite: measure a block of code with runcov."""

from __future__ import annotations

from types import TracebackType
from typing import Iterable, Optional

from runcov.tracing import EXACT, get_core
from runcov.tracing._base import Arc, Scope


class capture_coverage:
    """Measure exactly the code run inside the block (this thread/task and its thread-pool work).

    ``source`` lists the roots (directories or files) whose code is measured. After the block,
    ``lines`` and ``arcs`` hold the executed lines and arcs (coverage.py's convention) keyed by
    absolute file path. Works as ``with`` and ``async with``.
    """

    def __init__(self, source: Iterable[str], mode: str = EXACT) -> None:
        self.source = [str(s) for s in source]
        self.mode = mode
        self.lines: dict[str, set[int]] = {}
        self.arcs: dict[str, set[Arc]] = {}
        self.traced = False
        self._scope: Optional[Scope] = None

    def __enter__(self) -> capture_coverage:
        self._scope = get_core().open_scope(mode=self.mode, roots=self.source)
        self.traced = self._scope.traced
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._scope is not None:
            data = self._scope.close()
            self.lines = data.lines
            self.arcs = data.arcs
            self._scope = None

    async def __aenter__(self) -> capture_coverage:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.__exit__(exc_type, exc, tb)


__all__ = ["capture_coverage"]
