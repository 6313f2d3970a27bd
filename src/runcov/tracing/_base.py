"""The interface every tracing core implements, and the per-request scope it hands out."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Iterable

Arc = tuple[int, int]

#: Scope modes: ``exact`` records the request's own lines and arcs; ``census`` records the lines
#: this request was first (in the current epoch) to execute in this process.
EXACT = "exact"
CENSUS = "census"


@dataclass
class CoverageData:
    """Lines and arcs measured in one scope, keyed by absolute file path."""

    lines: dict[str, set[int]] = field(default_factory=dict)
    arcs: dict[str, set[Arc]] = field(default_factory=dict)

    def update(self, other: CoverageData) -> None:
        """Merge ``other`` into this data (set union)."""
        for path, lines in other.lines.items():
            self.lines.setdefault(path, set()).update(lines)
        for path, arcs in other.arcs.items():
            self.arcs.setdefault(path, set()).update(arcs)

    def is_empty(self) -> bool:
        """True when nothing was recorded."""
        return not any(self.lines.values()) and not any(self.arcs.values())


class Scope(abc.ABC):
    """One unit of measured work (a request), bound to the context that opened it.

    Created by :meth:`Core.open_scope`; code that runs in the same thread or asyncio task (and the
    work it hands to thread pools) is recorded into it until :meth:`close`.
    """

    #: ``exact`` or ``census``.
    mode: str
    #: Free-form identity of the request (the agent stores the trace id here).
    trace_id: int | None
    #: False when tracing could not be turned on for this scope (e.g. another settrace tracer
    #: owns the thread); the result is then empty and the agent counts a drop.
    traced: bool

    @abc.abstractmethod
    def close(self) -> CoverageData:
        """Stop recording and return what was recorded. Idempotent; never raises."""


class Core(abc.ABC):
    """A tracing core: turns recording on for open scopes, off otherwise."""

    #: ``sysmon`` or ``settrace``.
    name: str

    @abc.abstractmethod
    def add_roots(self, roots: Iterable[str]) -> None:
        """Add source roots (directories or files); only code under them is ever recorded."""

    @abc.abstractmethod
    def open_scope(
        self,
        mode: str = EXACT,
        trace_id: int | None = None,
        roots: Iterable[str] | None = None,
    ) -> Scope:
        """Open a scope bound to the current context (thread / asyncio task).

        ``roots`` restricts what this scope reports to files under those roots (they are added
        to the core's roots). Never raises: on internal failure an untraced scope is returned.
        """

    @abc.abstractmethod
    def current_scope(self) -> Scope | None:
        """The scope bound to the current context, if any."""

    @abc.abstractmethod
    def new_epoch(self) -> None:
        """Start a new census epoch: forget first hits and re-arm census recording."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop tracing, release the tool id / tracer, drop all state."""


def normalize_root(root: str) -> str:
    """Absolute, symlink-resolved form of a source root, without a trailing separator."""
    return os.path.realpath(os.path.abspath(root)).rstrip(os.sep) or os.sep
