"""The Store implementation shared by SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from ..model import Batch, Selection
from . import agent, queries
from .database import Database
from .ingest import ingest_batch
from .schema import migrate


class SqlStore:
    """Durable, idempotent coverage storage on SQL (implements ``runcov_collector.model.Store``).

    Thread-safe: each call runs in its own transaction on a pooled connection.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.schema_version_found = migrate(db)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect.name

    def ingest(self, batch: Batch) -> dict[str, int]:
        """Store a batch in one transaction; returns only after it is committed.

        Returns how many coverage parts were new and how many duplicates (``ingest_counted``).
        """
        return self.ingest_counted(batch)

    def ingest_counted(self, batch: Batch) -> dict[str, int]:
        """Like ``ingest``; returns how many coverage parts were new and how many duplicates."""
        with self.db.transaction(write=True) as conn:
            return ingest_batch(conn, batch)

    def services(self) -> dict[str, Any]:
        """All services (``GET /api/v1/services``)."""
        with self.db.transaction(write=False) as conn:
            return queries.services(conn)

    def releases(self, service: str) -> dict[str, Any]:
        """A service's releases, newest first (``GET /api/v1/releases``)."""
        with self.db.transaction(write=False) as conn:
            return queries.releases(conn, service)

    def endpoints(self, sel: Selection) -> dict[str, Any]:
        """A release's endpoints (``GET /api/v1/endpoints``)."""
        with self.db.transaction(write=False) as conn:
            return queries.endpoints(conn, sel)

    def coverage(
        self, sel: Selection, detail: bool = False, path_prefix: str | None = None
    ) -> dict[str, Any]:
        """Coverage totals and files (``GET /api/v1/coverage``)."""
        with self.db.transaction(write=False) as conn:
            return queries.coverage(conn, sel, detail=detail, path_prefix=path_prefix)

    def file(self, sel: Selection, path: str) -> dict[str, Any]:
        """One file with detail (``GET /api/v1/file``)."""
        with self.db.transaction(write=False) as conn:
            return queries.file(conn, sel, path)

    def series(self, sel: Selection, path: str | None = None) -> dict[str, Any]:
        """Per-hour trend (``GET /api/v1/series``)."""
        with self.db.transaction(write=False) as conn:
            return queries.series(conn, sel, path)

    def agent(self, sel: Selection) -> dict[str, Any]:
        """The release's agent metrics (``GET /api/v1/agent``)."""
        with self.db.transaction(write=False) as conn:
            return agent.agent(conn, sel)

    def diff(self, a: Selection, b: Selection) -> dict[str, Any]:
        """Release a against release b (``GET /api/v1/diff``)."""
        with self.db.transaction(write=False) as conn:
            return queries.diff(conn, a, b)

    def expire(self, older_than_unix: float) -> int:
        """Delete per-hour rows and part keys older than the time; return rows deleted."""
        with self.db.transaction(write=True) as conn:
            return queries.expire(conn, older_than_unix)

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.db.transaction(write=False) as conn:
                return conn.query("SELECT 1")[0][0] == 1
        except Exception:
            return False

    def close(self) -> None:
        """Release the database connections."""
        self.db.close()
