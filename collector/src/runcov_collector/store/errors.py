"""Errors the store raises to its callers, and which failures mean the store is unavailable."""

from __future__ import annotations

import sqlite3


class StoreError(Exception):
    """Base class of the store's own errors."""


class NotFound(StoreError, LookupError):
    """The service, release or file a query names is not in the store (HTTP 404)."""


class StoreClosed(StoreError, RuntimeError):
    """The store was closed (the collector is shutting down); a later request may succeed."""


class StoreTimeout(StoreError, TimeoutError):
    """The database did not answer within the store's time limit (HTTP 503, gRPC UNAVAILABLE):
    it is frozen, overloaded, or the network to it stopped carrying packets; or every pooled
    connection, or SQLite's write lock, stayed taken that long. A later request may succeed.

    A ``TimeoutError``, so that it is one of ``UNAVAILABLE_ERRORS`` like a lost connection.
    """


class MigrationTimeout(StoreTimeout):
    """The schema migration run when the store is opened did not finish within its own time
    limit (the migration timeout): the database does not answer, or another replica's
    migration held it that long. ``limit`` is the limit in seconds, ``reason`` what failed
    (``unavailable_reason`` of the error)."""

    def __init__(
        self, limit: float, reason: str, store: str | None = None, setting: str | None = None
    ) -> None:
        self.limit = limit
        self.reason = reason
        where = "" if store is None else f"store {store}: "
        named = "" if setting is None else f" ({setting})"
        super().__init__(
            f"{where}the schema migration did not finish within {limit:g} s{named}: {reason}"
        )


class SchemaChanged(StoreError):
    """The database's schema is no longer the version this collector knows (HTTP 503, gRPC
    UNAVAILABLE): a newer collector migrated it while this one was running.

    This collector must not write in its own layout any more (a newer one would not read those
    rows, or misread them), nor answer from tables it may misread; the request belongs to an
    upgraded replica. ``found`` is the database's version, ``known`` this collector's.
    """

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        if found > known:
            message = (
                f"the store's schema was upgraded to version {found} by a newer collector; "
                f"this collector knows version {known}: upgrade it"
            )
        else:
            message = (
                f"the store's schema is version {found}, older than this collector's version "
                f"{known} (was the database restored from a backup?): restart the collector "
                "to migrate it"
            )
        super().__init__(message)


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [
        StoreClosed,
        sqlite3.OperationalError,
        OSError,
        TimeoutError,
    ]
    try:
        import psycopg

        found.append(psycopg.OperationalError)
    except ImportError:  # pragma: no cover - psycopg is a dependency, but stay usable without
        pass
    return tuple(found)


UNAVAILABLE_ERRORS = _unavailable_errors()
"""Failures that say the database cannot be reached or cannot answer now: the store is closed,
the connection is refused or lost (PostgreSQL stopped or restarting), the database does not
answer in time (``StoreTimeout``; a statement cut by PostgreSQL's ``statement_timeout`` is a
``psycopg.errors.QueryCanceled``, an ``OperationalError``), the database is locked, a disk
error. A later request may succeed. A database error of another kind (a query the schema
does not support, a value out of range) says nothing about availability."""

_REASON_CHARS = 200


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a store call) means the store is unavailable for now."""
    return isinstance(exc, UNAVAILABLE_ERRORS)


def may_be_schema_change(exc: BaseException) -> bool:
    """Whether a failed store call may have failed because the schema changed under it, so
    that reading the schema's version is worth it: any failure but an unknown service, release
    or file, a closed store, a lost or refused connection, or the schema check's own answer.

    A SQLite ``OperationalError`` is one of them: SQLite reports a missing table or column
    ("no such column") under the same type as a locked database.
    """
    if isinstance(exc, (NotFound, StoreClosed, SchemaChanged, OSError, TimeoutError)):
        return False
    if isinstance(exc, sqlite3.OperationalError):
        return True
    return not is_unavailable(exc)


def is_time_limit(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a transaction with a time limit) says the limit passed: a
    ``StoreTimeout``, a statement PostgreSQL cancelled at its ``statement_timeout``, or SQLite's
    write lock still held by another process when the busy timeout (the time left) ran out."""
    if isinstance(exc, StoreTimeout):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc)
    return type(exc).__name__ == "QueryCanceled" and "statement timeout" in str(exc)


def unavailable_reason(exc: BaseException) -> str:
    """A one-line reason for an unavailable store: the error's type and the first line of its
    message (database drivers add hints on further lines), at most 200 characters."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > _REASON_CHARS:
        first = first[: _REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
