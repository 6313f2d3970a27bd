"""Reports on the production coverage a collector holds: report, export, diff, gate, compare."""

from __future__ import annotations

from runcov.reports.client import (
    CollectorAnswerError,
    CollectorClient,
    CollectorError,
    CollectorRequestError,
    CollectorUnreachable,
    ReleaseSelection,
)

__all__ = [
    "CollectorAnswerError",
    "CollectorClient",
    "CollectorError",
    "CollectorRequestError",
    "CollectorUnreachable",
    "ReleaseSelection",
]
