"""The collector's data model: what the receivers decode and the store keeps (wire format v1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

ROLES = ("baseline", "canary", "shadow", "game-day")


@dataclass(frozen=True)
class Release:
    """The key coverage is kept under: one release of a service in one environment and role."""

    service: str
    version: str = ""
    environment: str = ""
    role: str = "baseline"

    def as_dict(self) -> dict[str, str]:
        """JSON form used by the query API."""
        return {
            "service": self.service,
            "version": self.version,
            "environment": self.environment,
            "role": self.role,
        }


@dataclass
class FileHits:
    """Executed lines and arcs of one file in one coverage part."""

    path: str
    sha: str
    lines: list[int] = field(default_factory=list)
    arcs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class CoveragePart:
    """One decoded ``runcov.coverage`` span (one part of one request's coverage)."""

    release: Release
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    endpoint: str
    mode: str  # "exact" | "census"
    status_class: str
    time_unix_nano: int  # span end time, at most the receive time; selects the hour bucket
    part: int
    parts: int
    files: list[FileHits] = field(default_factory=list)


@dataclass
class FunctionRange:
    """A function's qualified name and line range."""

    name: str
    start: int
    end: int


@dataclass
class FileStatic:
    """Denominators of one file version (``runcov.static``)."""

    path: str
    sha: str
    lines: list[int] = field(default_factory=list)
    arcs: list[tuple[int, int]] = field(default_factory=list)
    functions: list[FunctionRange] = field(default_factory=list)


@dataclass
class StaticPart:
    """One decoded ``runcov.static`` span."""

    release: Release
    trace_id: str
    span_id: str
    time_unix_nano: int
    files: list[FileStatic] = field(default_factory=list)


METRIC_KINDS = ("counter", "sum", "gauge")
"""What a ``MetricPoint`` is: a monotonic cumulative sum (its largest value is its total), a
non-monotonic cumulative sum or a gauge (their latest value counts)."""


@dataclass
class MetricPoint:
    """One cumulative counter/gauge value of an agent metric (``runcov.*``).

    A cumulative sum counts from its ``start_time_unix_nano``: a process that restarts its
    counters (a new ``MeterProvider``, the same ``service.instance.id``) starts a new run, with
    a new start time, that adds to the runs before it instead of replacing them. Gauges have no
    runs (start 0).
    """

    release: Release
    instance: str  # service.instance.id ("" if absent)
    name: str
    attributes: dict[str, str]
    value: float
    time_unix_nano: int
    start_time_unix_nano: int = 0
    kind: str = "counter"  # one of METRIC_KINDS


@dataclass
class Batch:
    """Everything one export request carried that the collector keeps."""

    coverage: list[CoveragePart] = field(default_factory=list)
    static: list[StaticPart] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)
    received_unix_nano: int = 0
    """When the collector received the request (0: when it is stored). The part keys that make
    ingestion idempotent are kept for a period counted from here, not from the span times."""


@dataclass(frozen=True)
class Selection:
    """Which data a query is about (see docs/query-api.md, "Release selection")."""

    service: str
    version: str | None = None
    environment: str | None = None
    role: str | None = None
    endpoint: str | None = None
    since_unix: float | None = None  # inclusive, seconds
    until_unix: float | None = None  # exclusive, seconds


class Store(Protocol):
    """Durable, idempotent coverage storage. SQLite and PostgreSQL implement it alike.

    ``ingest`` returns only after the batch is durably committed. Merging is commutative and
    idempotent: a coverage part already stored (same trace_id, span_id) changes nothing.
    ``ingest`` may say how many coverage parts were new (``"parts"``) and how many were such
    duplicates (``"duplicates"``); a store that cannot tell returns None.
    Query methods return the JSON-ready dicts documented in docs/query-api.md.
    """

    def ingest(self, batch: Batch) -> Mapping[str, int] | None: ...
    def services(self) -> dict[str, Any]: ...
    def releases(self, service: str) -> dict[str, Any]: ...
    def endpoints(self, sel: Selection) -> dict[str, Any]: ...
    def coverage(
        self, sel: Selection, detail: bool = False, path_prefix: str | None = None
    ) -> dict[str, Any]: ...
    def file(self, sel: Selection, path: str) -> dict[str, Any]: ...
    def series(self, sel: Selection, path: str | None = None) -> dict[str, Any]: ...
    def diff(self, a: Selection, b: Selection) -> dict[str, Any]: ...
    def agent(self, sel: Selection) -> dict[str, Any]: ...
    def expire(
        self, older_than_unix: float, *, on_batch: Callable[[int], None] | None = None
    ) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...
