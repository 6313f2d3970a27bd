"""The Store implementation shared by SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

from ..model import Batch, Selection
from . import agent, queries, schema
from .database import DEFAULT_MIGRATION_TIMEOUT, Database
from .dialect import Conn
from .errors import (
    MigrationTimeout,
    SchemaChanged,
    is_time_limit,
    may_be_schema_change,
    unavailable_reason,
)
from .ingest import ingest_batch

T = TypeVar("T")


class SqlStore:
    """Durable, idempotent coverage storage on SQL (implements ``runcov_collector.model.Store``).

    Thread-safe: each call runs in its own transaction on a pooled connection.

    Another collector sharing the database may migrate its schema to a newer version while
    this one runs (a rolling upgrade). Every write transaction therefore first checks, under
    ``Database.lock_against_migration``, that the schema is still the version this store was
    opened at, and raises ``SchemaChanged`` before writing anything if not; a query that fails
    checks the version once, so that it answers ``SchemaChanged`` rather than the database
    error of a table it no longer knows.

    Every transaction is bounded by the database's ``timeout`` (``StoreTimeout`` or the
    database's own error past it), except the migration when opening: it may take long on a
    large database, and has a limit of its own (``migration_timeout``). ``expire`` runs in
    batches, each a transaction of its own.
    """

    def __init__(
        self, db: Database, migration_timeout: float | None = DEFAULT_MIGRATION_TIMEOUT
    ) -> None:
        """Migrate ``db``'s schema (in ``Database.maintenance(migration_timeout)``; None: no
        limit) and serve it. Past the limit raises ``MigrationTimeout``, from the error that
        says so; on any failure the database is closed."""
        self.db = db
        try:
            with db.maintenance(migration_timeout):
                self.schema_version_found = schema.migrate(db)
        except Exception as exc:
            db.close()
            if migration_timeout is not None and is_time_limit(exc):
                raise MigrationTimeout(migration_timeout, unavailable_reason(exc)) from exc
            raise
        self.schema_version = schema.SCHEMA_VERSION
        """The schema version this store reads and writes (the database's, once opened)."""

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect.name

    @contextlib.contextmanager
    def _write(self) -> Iterator[Conn]:
        """A write transaction on a schema known to be this store's version until it ends.

        Raises ``SchemaChanged`` (nothing written) when a newer collector migrated it.
        """
        with self.db.transaction(write=True) as conn:
            self.db.lock_against_migration(conn)
            schema.check_version(conn, self.schema_version)
            yield conn

    def _read(self, run: Callable[[Conn], T]) -> T:
        """``run`` in a read transaction; a failure that a schema change may explain checks
        the version and raises ``SchemaChanged`` instead when it moved."""
        try:
            with self.db.transaction(write=False) as conn:
                return run(conn)
        except Exception as exc:
            if may_be_schema_change(exc):
                self._check_schema_after(exc)
            raise

    def _check_schema_after(self, failure: BaseException) -> None:
        """Raise ``SchemaChanged`` (from ``failure``) if the schema is not this store's
        version; return quietly if it is, or if the version cannot be read either."""
        try:
            with self.db.transaction(write=False) as conn:
                found = schema.current_version(conn)
        except Exception:
            return
        if found != self.schema_version:
            raise SchemaChanged(found, self.schema_version) from failure

    def ingest(self, batch: Batch) -> dict[str, int]:
        """Store a batch in one transaction; returns only after it is committed.

        Returns how many coverage parts were new and how many duplicates (``ingest_counted``).
        """
        return self.ingest_counted(batch)

    def ingest_counted(self, batch: Batch) -> dict[str, int]:
        """Like ``ingest``; returns how many coverage parts were new and how many duplicates."""
        with self._write() as conn:
            return ingest_batch(conn, batch)

    def services(self) -> dict[str, Any]:
        """All services (``GET /api/v1/services``)."""
        return self._read(queries.services)

    def releases(self, service: str) -> dict[str, Any]:
        """A service's releases, newest first (``GET /api/v1/releases``)."""
        return self._read(lambda conn: queries.releases(conn, service))

    def endpoints(self, sel: Selection) -> dict[str, Any]:
        """A release's endpoints (``GET /api/v1/endpoints``)."""
        return self._read(lambda conn: queries.endpoints(conn, sel))

    def coverage(
        self, sel: Selection, detail: bool = False, path_prefix: str | None = None
    ) -> dict[str, Any]:
        """Coverage totals and files (``GET /api/v1/coverage``)."""
        return self._read(
            lambda conn: queries.coverage(conn, sel, detail=detail, path_prefix=path_prefix)
        )

    def file(self, sel: Selection, path: str) -> dict[str, Any]:
        """One file with detail (``GET /api/v1/file``)."""
        return self._read(lambda conn: queries.file(conn, sel, path))

    def series(self, sel: Selection, path: str | None = None) -> dict[str, Any]:
        """Per-hour trend (``GET /api/v1/series``)."""
        return self._read(lambda conn: queries.series(conn, sel, path))

    def agent(self, sel: Selection) -> dict[str, Any]:
        """The release's agent metrics (``GET /api/v1/agent``)."""
        return self._read(lambda conn: agent.agent(conn, sel))

    def diff(self, a: Selection, b: Selection) -> dict[str, Any]:
        """Release a against release b (``GET /api/v1/diff``)."""
        return self._read(lambda conn: queries.diff(conn, a, b))

    def expire(
        self,
        older_than_unix: float,
        batch_rows: int = queries.EXPIRE_BATCH_ROWS,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete per-hour rows and part keys older than the time (``queries.expire_batch``);
        return rows deleted.

        In batches of at most ``batch_rows`` rows of one table, each a write transaction of its
        own under the store's timeout: a sweep of a large database is many short transactions,
        which hold locks briefly and let ingests write in between, and a database that stops
        answering costs one batch's timeout, not a sweep that never ends. A batch that fails
        raises (``StoreTimeout``...): what the batches before it deleted stays deleted (rows
        past the retention either way; a swept trace's rows and its marks change in one
        batch), and the next sweep goes on from there. A table is done when a batch finds
        nothing left to delete.

        Raises ``SchemaChanged`` (that batch deletes nothing) when a newer collector migrated
        the schema. ``on_batch`` is called with the rows of each batch once it committed, so
        what a sweep that fails part-way deleted is still counted.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
        deleted = 0
        for table in queries.EXPIRED_TABLES:
            while True:
                with self._write() as conn:
                    removed = queries.expire_batch(conn, table, older_than_unix, batch_rows)
                deleted += removed
                if removed and on_batch is not None:
                    on_batch(removed)
                if not removed:
                    break
        return deleted

    def check_ready(self) -> None:
        """Return when the database answers with the schema version this store knows; raise
        why not otherwise: the database's error (``errors.is_unavailable`` tells an outage),
        ``StoreTimeout``, or ``SchemaChanged`` when it answers with another version (the
        collector is up, but must not serve this database). ``/readyz`` says which."""
        with self.db.transaction(write=False) as conn:
            found = schema.current_version(conn)
        if found != self.schema_version:
            raise SchemaChanged(found, self.schema_version)

    def ping(self) -> bool:
        """True when the database answers with the schema version this store knows.

        Raises ``SchemaChanged`` when it answers with another: the collector is up, but must
        not serve this database (``/readyz`` says why).
        """
        try:
            self.check_ready()
        except SchemaChanged:
            raise
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Release the database connections."""
        self.db.close()
