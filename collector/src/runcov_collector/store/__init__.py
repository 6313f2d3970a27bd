"""The collector's durable store: open one by URL (SQLite file or PostgreSQL database)."""

from __future__ import annotations

from .database import (
    DEFAULT_MIGRATION_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_CONNECTIONS,
    PostgresDatabase,
    SqliteDatabase,
)
from .errors import MigrationTimeout, NotFound, SchemaChanged, StoreClosed, StoreError
from .schema import SCHEMA_VERSION
from .sql_store import SqlStore

DEFAULT_URL = "sqlite:///./runcov-collector.db"

__all__ = [
    "DEFAULT_URL",
    "SCHEMA_VERSION",
    "MigrationTimeout",
    "NotFound",
    "SchemaChanged",
    "SqlStore",
    "StoreClosed",
    "StoreError",
    "open_store",
]


def open_store(
    url: str = DEFAULT_URL,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = DEFAULT_TIMEOUT,
    migration_timeout: float | None = DEFAULT_MIGRATION_TIMEOUT,
) -> SqlStore:
    """Open (creating and migrating if needed) the store at ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or a plain file path open a
    SQLite database; ``postgresql://user:pass@host:port/db`` (or ``postgres://``) a PostgreSQL one.
    At most ``max_connections`` connections are open at once; further callers wait. Each call
    of the store is bounded by ``timeout`` seconds (``Database.timeout``), the schema migration
    run here by ``migration_timeout`` (None: unbounded; ``MigrationTimeout`` past it).
    """
    if url.startswith(("postgresql://", "postgres://")):
        return SqlStore(PostgresDatabase(url, max_connections, timeout), migration_timeout)
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ValueError(f"bad SQLite URL {url!r}: use sqlite:///path/to.db")
        path = rest[1:]
    elif "://" in url:
        raise ValueError(f"unsupported store URL {url!r}: use sqlite:///... or postgresql://...")
    else:
        path = url
    return SqlStore(SqliteDatabase(path, max_connections, timeout), migration_timeout)
