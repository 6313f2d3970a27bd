"""Connections to SQLite or PostgreSQL, pooled for a threaded server, and their transactions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from .dialect import POSTGRES, SQLITE, Conn, Dialect, PostgresConn
from .errors import StoreClosed

# Key of the PostgreSQL advisory lock held while the schema is migrated ("runcov" in ASCII), so
# that replicas opening one database at the same time migrate it once.
MIGRATION_LOCK_KEY = 0x72756E636F76

# Connections one store keeps open at most (per collector process).
MAX_CONNECTIONS = 16


class Database:
    """A pool of connections to one database and the transactions the store runs on them."""

    dialect: Dialect
    conn_class: type[Conn] = Conn

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        # Callers beyond max_connections wait for a connection instead of opening more.
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- driver specifics -------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, raw: Any, write: bool) -> None:
        raise NotImplementedError

    def _commit(self, raw: Any) -> None:
        raw.commit()

    def _rollback(self, raw: Any) -> None:
        raw.rollback()

    def _is_broken(self, raw: Any) -> bool:
        return False

    def lock_for_migration(self, conn: Conn) -> None:
        """Make concurrent openers of this database migrate one after the other."""

    def lock_against_migration(self, conn: Conn) -> None:
        """Keep a migration out until this write transaction ends, and wait for one running.

        Called first in a write transaction that then checks the schema's version: the version
        it reads is then the one every write of the transaction lands in. SQLite needs nothing:
        a write transaction holds the database's single write lock from its start
        (``BEGIN IMMEDIATE``), so a migration, itself a write transaction, runs wholly before
        or wholly after it, and a version read after ``BEGIN IMMEDIATE`` is the latest.
        """

    # -- pool -------------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """Connections currently open (idle or in use)."""
        with self._lock:
            return len(self._all)

    def _acquire(self) -> Any:
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            if self._idle:
                return self._idle.pop()
        raw = self._connect()
        with self._lock:
            self._all.append(raw)
        return raw

    def _release(self, raw: Any, broken: bool) -> None:
        with self._lock:
            if broken or self._closed:
                self._all.remove(raw)
            else:
                self._idle.append(raw)
                return
        with contextlib.suppress(Exception):
            raw.close()

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[Conn]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Write transactions are serialised per release by the store's own row locks (PostgreSQL)
        or by SQLite's single writer; read transactions see one consistent snapshot.
        """
        self._slots.acquire()
        try:
            raw = self._acquire()
        except BaseException:
            self._slots.release()
            raise
        broken = False
        try:
            self._begin(raw, write)
            try:
                yield self.conn_class(raw, self.dialect)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._rollback(raw)
                raise
            self._commit(raw)
        except BaseException:
            broken = self._is_broken(raw)
            raise
        finally:
            self._release(raw, broken)
            self._slots.release()

    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            for raw in idle:
                self._all.remove(raw)
        for raw in idle:
            with contextlib.suppress(Exception):
                raw.close()


class SqliteDatabase(Database):
    """A SQLite file in WAL mode, ``synchronous=FULL``: commits survive kill -9 and power loss."""

    dialect = SQLITE

    def __init__(self, path: str, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(max_connections)
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError("the store needs a SQLite file path (in-memory is not shared)")
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)

    def _connect(self) -> Any:
        raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        raw.execute("PRAGMA busy_timeout = 60000")
        # Switching a new database to WAL needs an exclusive lock and does not wait on the busy
        # timeout, so concurrent openers of a fresh file retry here.
        deadline = time.monotonic() + 60
        while True:
            try:
                raw.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raw.close()
                    raise
                time.sleep(0.01)
        raw.execute("PRAGMA synchronous = FULL")
        return raw

    def _begin(self, raw: Any, write: bool) -> None:
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
        raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _commit(self, raw: Any) -> None:
        raw.execute("COMMIT")

    def _rollback(self, raw: Any) -> None:
        raw.execute("ROLLBACK")


class PostgresDatabase(Database):
    """A PostgreSQL database shared by any number of collector replicas."""

    dialect = POSTGRES
    conn_class = PostgresConn

    def __init__(self, url: str, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(max_connections)
        self.url = url

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=False)

    def _begin(self, raw: Any, write: bool) -> None:
        # psycopg opens the transaction implicitly with the first statement.
        if write:
            raw.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        else:
            raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def _is_broken(self, raw: Any) -> bool:
        return bool(raw.broken or raw.closed)

    def lock_for_migration(self, conn: Conn) -> None:
        """Hold a transaction-scoped advisory lock until the migration commits."""
        conn.query("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))

    def lock_against_migration(self, conn: Conn) -> None:
        """Hold the migration's advisory lock in shared mode until this transaction ends.

        Write transactions share it; a migration takes it exclusively (``lock_for_migration``)
        and waits for those running, and writes starting meanwhile wait for the migration to
        commit. The lock is released only after the migration's commit is visible, so at READ
        COMMITTED the next statement's snapshot (the version check) sees what it committed.
        """
        conn.query("SELECT pg_advisory_xact_lock_shared(?)", (MIGRATION_LOCK_KEY,))
