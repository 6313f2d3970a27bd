"""Reading what runcov exported: coverage per trace out of received OTLP spans.

Decoding follows docs/wire-format.md directly (not runcov's own decoder), so these tests also
check that the agent keeps to the written contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tests.agent.otlp_sink import ReceivedSpan


@dataclass
class TraceCoverage:
    """The union of a trace's ``runcov.coverage`` parts: relative path -> lines / arcs."""

    endpoint: str
    mode: str
    status_class: str
    parent_span_id: int
    lines: dict[str, set[int]] = field(default_factory=dict)
    arcs: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    parts: int = 1
    seen_parts: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        """True once every part of the request has arrived."""
        return len(self.seen_parts) == self.parts


def coverage_by_trace(spans: Iterable[ReceivedSpan]) -> dict[int, TraceCoverage]:
    """``runcov.coverage`` spans grouped by trace id, parts merged."""
    out: dict[int, TraceCoverage] = {}
    for span in spans:
        if span.name != "runcov.coverage":
            continue
        a = span.attributes
        tc = out.get(span.trace_id)
        if tc is None:
            tc = out[span.trace_id] = TraceCoverage(
                endpoint=a["runcov.endpoint"],
                mode=a["runcov.mode"],
                status_class=a["runcov.status_class"],
                parent_span_id=span.parent_span_id or 0,
                parts=int(a["runcov.parts"]),
            )
        tc.seen_parts.add(int(a["runcov.part"]))
        tc.resources.append(span.resource)
        assert span.scope == "runcov"
        for f in span.payload["files"]:
            tc.lines.setdefault(f["path"], set()).update(f["lines"])
            tc.arcs.setdefault(f["path"], set()).update(tuple(arc) for arc in f["arcs"])
    return out


def static_files(spans: Iterable[ReceivedSpan]) -> dict[tuple[str, str], dict[str, Any]]:
    """``runcov.static`` files keyed by (path, sha)."""
    out = {}
    for span in spans:
        if span.name == "runcov.static":
            for f in span.payload["files"]:
                out[(f["path"], f["sha"])] = f
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
