"""The interface every tracing core implements, and the per-request scope it hands out."""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Hashable, Iterable

Arc = tuple[int, int]

#: Scope modes: ``exact`` records the request's own lines and arcs; ``census`` records the lines
#: this request was first (in the current epoch) to execute in this process.
EXACT = "exact"
CENSUS = "census"
#: ``co_flags`` of generator-like code, whose frames suspend and resume: GENERATOR,
#: COROUTINE, ITERABLE_COROUTINE, ASYNC_GENERATOR.
GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200


class CoverageData:
    """Lines and arcs measured in one scope, keyed by absolute file path.

    A scope hands over its raw records; they are turned into per-file sets on first access, so
    closing a scope on the request path stays cheap and the work happens where the data is used
    (the exporter's thread).
    """

    __slots__ = ("_arcs", "_key", "_key_source", "_lines", "_raw")

    def __init__(
        self,
        lines: dict[str, set[int]] | None = None,
        arcs: dict[str, set[Arc]] | None = None,
        raw: Callable[[], tuple[dict[str, set[int]], dict[str, set[Arc]]]] | None = None,
        key: Callable[[], Hashable] | None = None,
    ) -> None:
        self._lines = lines if lines is not None else {}
        self._arcs = arcs if arcs is not None else {}
        self._raw = raw
        self._key_source = key
        self._key: Hashable = None

    def fingerprint(self) -> Hashable:
        """A key equal for two data built from equal raw records (so with equal lines and arcs),
        or None when the data was not built from raw records. Computed once, without building
        the per-file sets: the exporter recognises a request that repeats an earlier one by it.
        """
        source, self._key_source = self._key_source, None
        if source is not None:
            try:
                self._key = source()
            except Exception:
                self._key = None
        return self._key

    def _materialize(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            lines, arcs = raw()
            self._lines.update(lines)
            self._arcs.update(arcs)

    @property
    def lines(self) -> dict[str, set[int]]:
        """Executed lines per absolute file path."""
        if self._raw is not None:
            self._materialize()
        return self._lines

    @property
    def arcs(self) -> dict[str, set[Arc]]:
        """Executed arcs per absolute file path (coverage.py's convention)."""
        if self._raw is not None:
            self._materialize()
        return self._arcs

    def update(self, other: CoverageData) -> None:
        """Merge ``other`` into this data (set union)."""
        self._key_source, self._key = None, None  # no longer the raw records' data
        for path, lines in other.lines.items():
            self.lines.setdefault(path, set()).update(lines)
        for path, arcs in other.arcs.items():
            self.arcs.setdefault(path, set()).update(arcs)

    def is_known_empty(self) -> bool:
        """True when nothing was recorded, as far as known without building the sets (data
        still holding raw records is never "known" empty)."""
        return self._raw is None and not any(self._lines.values()) and not any(
            self._arcs.values()
        )

    def is_empty(self) -> bool:
        """True when nothing was recorded."""
        return not any(self.lines.values()) and not any(self.arcs.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CoverageData):
            return NotImplemented
        return self.lines == other.lines and self.arcs == other.arcs

    def __repr__(self) -> str:
        return f"CoverageData(lines={self.lines!r}, arcs={self.arcs!r})"


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
    #: True when census first hits outside any census scope can be attributed to the request
    #: that runs (:meth:`set_census_owner`), so census needs no scope per request.
    attributes_census: bool = False
    #: First hits attributed outside scopes, waiting to be claimed: key -> co_filename -> lines.
    census_pending: dict[Hashable, dict[str, set[int]]]

    def set_census_owner(self, owner: Callable[[], Hashable] | None) -> bool:
        """Attribute census first hits made outside census scopes to ``owner()`` (a key such as
        the current trace id; None: not attributable). False when this core cannot: census
        then needs a scope per request."""
        return False

    def take_census(self, key: Hashable) -> CoverageData | None:
        """Claim the first hits attributed to ``key`` (None when there are none)."""
        return None

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

    @property
    def exact_prepared(self) -> bool:
        """True when an exact scope opens with nothing to prepare first (see
        :meth:`expect_exact_scopes`)."""
        return True

    def expect_exact_scopes(self) -> None:
        """Exact scopes will be opened: prepare now what the first one would otherwise pay
        for on its request (probing the code under the roots on 3.11; on 3.12+, watching it
        for its first call). Without this call
        nothing is prepared until an exact scope opens, so a process that never samples
        carries nothing in its code."""
        return None

    #: What cuts this core's exact scopes at their maximum age (``_scope.ScopeExpiry``).
    _expiry: Any = None

    def set_max_scope_age(
        self, seconds: float, on_expired: Callable[[Scope], None] | None = None
    ) -> bool:
        """Cut exact scopes opened from now on once they are older than ``seconds`` (0: never):
        such a scope stops recording and keeps nothing armed (the sysmon core's events, the
        3.11 probes); what it recorded before stays its result, and its ``expired`` is True.
        ``on_expired(scope)`` is called on the expiry's thread for each. False when this core
        cannot. Never call it holding the core's lock (it may start a thread)."""
        expiry = self._expiry
        if expiry is None:
            return False
        expiry.configure(seconds, on_expired)
        return True

    @property
    def max_scope_age(self) -> float:
        """Seconds an exact scope may stay open (0: no limit)."""
        expiry = self._expiry
        return float(expiry.max_age) if expiry is not None else 0.0

    def _scope_roots(self, roots: Iterable[str] | None) -> tuple[str, ...]:
        """The roots a new scope reports: the given ones (added to the core's), else the core's."""
        if roots is None:
            return self.roots
        roots = list(roots)
        self.add_roots(roots)
        return tuple(dict.fromkeys(normalize_root(root) for root in roots))

    @property
    @abc.abstractmethod
    def roots(self) -> tuple[str, ...]:
        """The core's normalized source roots."""

    @abc.abstractmethod
    def current_scope(self) -> Scope | None:
        """The scope bound to the current context, if any."""

    @abc.abstractmethod
    def new_epoch(self) -> None:
        """Start a new census epoch: forget first hits and re-arm census recording."""

    @abc.abstractmethod
    def disable_census(self) -> None:
        """Stop census recording (census scopes opened later turn it on again)."""

    @abc.abstractmethod
    def census_lines(self) -> dict[str, set[int]]:
        """Lines first hit in the current census epoch, by absolute path (a copy)."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop tracing, release the tool id / tracer, drop all state."""


def normalize_root(root: str) -> str:
    """Absolute, symlink-resolved form of a source root, without a trailing separator."""
    return os.path.realpath(os.path.abspath(root)).rstrip(os.sep) or os.sep
