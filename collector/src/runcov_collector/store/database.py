"""Connections to SQLite or PostgreSQL, pooled for a threaded server, and their transactions."""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

from .dialect import POSTGRES, SQLITE, Conn, Dialect, PostgresConn
from .errors import StoreClosed, StoreTimeout

# Key of the PostgreSQL advisory lock held while the schema is migrated ("runcov" in ASCII), so
# that replicas opening one database at the same time migrate it once.
MIGRATION_LOCK_KEY = 0x72756E636F76

# Connections one store keeps open at most (per collector process).
MAX_CONNECTIONS = 16

DEFAULT_TIMEOUT = 5.0
"""Seconds one transaction of a request may take in all: waiting for a pooled connection (and
for SQLite's write lock), connecting, and its statements. Past it the store raises
``StoreTimeout`` (PostgreSQL's ``QueryCanceled`` for a statement the server cut), which the
collector answers 503 / UNAVAILABLE: an OTLP exporter gives up after 10 s, so an ingest must
answer, and not store the batch later behind the exporter's back, before then."""

DEFAULT_MIGRATION_TIMEOUT = 600.0
"""Seconds the schema migration run when a store is opened may take in all (``SqlStore``): long,
as a migration may legitimately rewrite a large database, but bounded, so that a collector
starting against a database that does not answer fails with a message instead of hanging."""

MAX_TIMEOUT = 3600.0
"""Largest store timeout (an hour, as the agent's export timeout): a request nobody waits for
that long is no request. Far below what the waits it bounds can take: ``threading``'s
(``TIMEOUT_MAX``, some 292 years), libpq's ``connect_timeout``."""

MAX_MIGRATION_TIMEOUT = 7 * 24 * 3600.0
"""Largest limit of the schema migration (7 days). It becomes a ``statement_timeout`` and a
SQLite busy timeout, both C ints of milliseconds (at most 2^31 - 1 ms, some 24.8 days), and the
watchdog's and the lock waits' timeouts."""

MAINTENANCE_LOCK_WAIT = 60.0
"""Seconds a transaction without a time limit (``Database.maintenance(None)``) waits for
SQLite's write lock."""

# A transaction still running this long after its deadline has its connection cut: PostgreSQL
# cancels a statement at the deadline itself (statement_timeout), so a connection that has not
# answered by then belongs to a server that does not answer at all (frozen, or the network to
# it is down).
_CUT_GRACE = 1.0

# Pause between two tries of a database that stopped answering (``Database._recheck``).
_RECHECK_PAUSE = 0.5


class _Guard:
    """One transaction the watchdog cuts at ``deadline`` (``fired`` once it did)."""

    __slots__ = ("deadline", "fired", "raw")

    def __init__(self, raw: Any, deadline: float) -> None:
        self.raw = raw
        self.deadline = deadline
        self.fired = False


class _Watchdog:
    """One thread that cuts the connection of each transaction still running past its deadline.

    A client of a server that stopped answering waits on its socket forever: the kernel of a
    frozen server (or of a stopped process on it) still acknowledges what is sent, so neither
    TCP keepalives nor ``tcp_user_timeout`` end the wait, and the server's own
    ``statement_timeout`` cannot fire. Shutting the socket down ends it at once: the waiting
    statement fails as a lost connection, and the connection is discarded.
    """

    def __init__(self, cut: Callable[[Any], None]) -> None:
        self._cut = cut
        self._cond = threading.Condition()
        self._guards: set[_Guard] = set()
        self._next: float | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, raw: Any, deadline: float) -> _Guard:
        """Cut ``raw`` at ``deadline`` unless ``disarm`` comes first."""
        guard = _Guard(raw, deadline)
        with self._cond:
            self._guards.add(guard)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="runcov-store-watchdog", daemon=True
                )
                self._thread.start()
            if self._next is None or deadline < self._next:
                self._cond.notify()
        return guard

    def disarm(self, guard: _Guard) -> bool:
        """Stop watching ``guard``'s transaction; True when its connection was cut already.

        Once this returns, the connection is never cut (it may go back to the pool).
        """
        with self._cond:
            self._guards.discard(guard)
            return guard.fired

    def stop(self) -> None:
        """End the thread (the database is closed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for guard in [g for g in self._guards if g.deadline <= now]:
                    # Under the lock: a transaction that disarmed is never cut afterwards.
                    guard.fired = True
                    self._guards.discard(guard)
                    with contextlib.suppress(Exception):
                        self._cut(guard.raw)
                self._next = min((g.deadline for g in self._guards), default=None)
                self._cond.wait(None if self._next is None else max(0.0, self._next - now))


class Database:
    """A pool of connections to one database and the transactions the store runs on them.

    Each transaction of a request is bounded by ``timeout`` seconds in all (``DEFAULT_TIMEOUT``;
    see ``transaction``); those opened inside ``maintenance()`` by the block's own limit (the
    schema migration's, much longer), or by none. Once a transaction found that the database
    does not answer at all, further ones fail at once with ``StoreTimeout`` rather than each
    wait for the limit again, while one thread tries the database until it answers
    (``_recheck``).
    """

    dialect: Dialect
    conn_class: type[Conn] = Conn

    def __init__(
        self, max_connections: int = MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.timeout = timeout
        # Callers beyond max_connections wait for a connection instead of opening more.
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._local = threading.local()
        # (since when, what it did not do) while the database is known not to answer.
        self._stall: tuple[float, str] | None = None
        self._rechecking = False

    @property
    def timeout(self) -> float:
        """Seconds a transaction outside ``maintenance()`` may take; may be changed at any time
        (transactions starting afterwards use the new value)."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
            raise ValueError(
                f"the store timeout must be > 0 seconds and at most {MAX_TIMEOUT:g}, not {seconds}"
            )
        self._timeout = float(seconds)

    # -- driver specifics -------------------------------------------------------------------
    def _connect(self, deadline: float | None) -> Any:
        raise NotImplementedError

    def _begin(self, raw: Any, write: bool, deadline: float | None) -> None:
        raise NotImplementedError

    def _commit(self, raw: Any) -> None:
        raw.commit()

    def _rollback(self, raw: Any) -> None:
        raw.rollback()

    def _is_broken(self, raw: Any) -> bool:
        return False

    def _usable(self, raw: Any) -> bool:
        """Whether an idle pooled connection may be handed out (not closed by the server)."""
        return True

    def _guard(self, raw: Any, deadline: float | None) -> _Guard | None:
        """Have ``raw`` cut if its transaction runs on past ``deadline``; None: not needed."""
        return None

    def _unguard(self, guard: _Guard) -> bool:
        """Undo ``_guard``; True when the connection was cut."""
        return False

    @contextlib.contextmanager
    def _writing(self, write: bool, deadline: float | None, limit: float | None) -> Iterator[None]:
        """Held around a whole transaction (SQLite: one writer of this process at a time)."""
        yield

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

    # -- time limits --------------------------------------------------------------------------
    @contextlib.contextmanager
    def maintenance(self, timeout: float | None) -> Iterator[None]:
        """Transactions this thread opens inside the block are bounded by ``timeout`` seconds
        each instead of the store's ``timeout``; None: by nothing.

        For the schema migration at start: work that may legitimately take long on a large
        database, that no client waits for, and that would never finish if cut at a request's
        limit, but must not wait forever either. The limit is enforced as a request's is
        (``transaction``): statement_timeout, the watchdog, SQLite's busy timeout. Connecting
        keeps the store's limit. Without a limit a lost network still ends the work
        (PostgreSQL's TCP keepalives), a frozen server does not.
        """
        if timeout is not None and not (
            math.isfinite(timeout) and 0 < timeout <= MAX_MIGRATION_TIMEOUT
        ):
            raise ValueError(
                "a maintenance time limit must be > 0 seconds and at most "
                f"{MAX_MIGRATION_TIMEOUT:g}, not {timeout}"
            )
        # (the block's limit,) inside a block, None outside any.
        previous = getattr(self._local, "maintenance", None)
        self._local.maintenance = (timeout,)
        try:
            yield
        finally:
            self._local.maintenance = previous

    def _limit(self) -> float | None:
        """The time limit of a transaction this thread opens now (None: none)."""
        inside: tuple[float | None] | None = getattr(self._local, "maintenance", None)
        return self.timeout if inside is None else inside[0]

    def _stalled(self, message: str) -> StoreTimeout:
        """Note that the database does not answer (``message`` says what it did not do in
        time) and start trying it in the background; returns the error to raise."""
        with self._lock:
            if self._stall is None:
                self._stall = (time.monotonic(), message)
            start = not (self._rechecking or self._closed)
            self._rechecking = self._rechecking or start
        if start:
            threading.Thread(target=self._recheck, name="runcov-store-recheck", daemon=True).start()
        return StoreTimeout(message)

    def _refuse_while_stalled(self) -> None:
        """Raise ``StoreTimeout`` at once while the database is known not to answer.

        Requests queued behind ones that waited for the limit would otherwise each wait for it
        again, and answer long after the client (an OTLP exporter: 10 s) gave up.
        """
        stall = self._stall
        if stall is None or getattr(self._local, "rechecking", False):
            return
        since, message = stall
        raise StoreTimeout(f"{message} (not answering for {time.monotonic() - since:.0f} s)")

    def _recheck(self) -> None:
        """Try the database until it answers (or fails otherwise: refused, closed), then let
        transactions try it again."""
        self._local.rechecking = True
        try:
            while True:
                time.sleep(_RECHECK_PAUSE)
                try:
                    with self.transaction(write=False) as conn:
                        conn.query("SELECT 1")
                except StoreTimeout:
                    if not self._closed:
                        continue
                except Exception:  # it answered, with an error: requests say which
                    pass
                return
        finally:
            with self._lock:
                self._stall = None
                self._rechecking = False

    # -- pool -------------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """Connections currently open (idle or in use)."""
        with self._lock:
            return len(self._all)

    def _acquire(self, deadline: float | None) -> Any:
        """An idle pooled connection the server has not closed, or a new one."""
        while True:
            with self._lock:
                if self._closed:
                    raise StoreClosed("the store is closed")
                if not self._idle:
                    break
                raw = self._idle.pop()
            if self._usable(raw):
                return raw
            self._discard([raw])
        raw = self._connect(deadline)
        with self._lock:
            self._all.append(raw)
        return raw

    def _release(self, raw: Any, broken: bool) -> None:
        """Give ``raw`` back to the pool, or close it when ``broken``: then close the idle
        connections too, as they most likely lost the same server (a restart, a network cut)
        and would each fail, or hang, one more request."""
        with self._lock:
            if not (broken or self._closed):
                self._idle.append(raw)
                return
            lost = [raw]
            if broken:
                lost += self._idle
                self._idle = []
        self._discard(lost)

    def _discard(self, raws: list[Any]) -> None:
        with self._lock:
            for raw in raws:
                if raw in self._all:
                    self._all.remove(raw)
        for raw in raws:
            with contextlib.suppress(Exception):
                raw.close()

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[Conn]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Write transactions are serialised per release by the store's own row locks (PostgreSQL)
        or by SQLite's single writer; read transactions see one consistent snapshot.

        The whole transaction, from waiting for a connection to the commit, is bounded by
        ``timeout`` (inside ``maintenance()``, by the block's limit, if any): past it, waiting
        for a pooled connection or for SQLite's write lock raises ``StoreTimeout`` (SQLite's
        lock held by another process: ``sqlite3.OperationalError``, database is locked),
        PostgreSQL cancels the statement running (``QueryCanceled``), and a server that does
        not even answer that has the connection cut a moment later (``StoreTimeout``).
        """
        self._refuse_while_stalled()
        limit = self._limit()
        deadline = None if limit is None else time.monotonic() + limit
        with self._writing(write, deadline, limit):
            if deadline is None:
                self._slots.acquire()
            elif not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise StoreTimeout(
                    f"no database connection was free within {limit:g} s "
                    f"({self.max_connections} in use)"
                )
            try:
                raw = self._acquire(deadline)
            except BaseException:
                self._slots.release()
                raise
            broken = False
            guard = self._guard(raw, deadline)
            try:
                self._begin(raw, write, deadline)
                try:
                    yield self.conn_class(raw, self.dialect)
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._rollback(raw)
                    raise
                self._commit(raw)
            except Exception as exc:
                broken = self._is_broken(raw)
                if guard is not None and guard.fired and limit is not None:
                    raise self._stalled(f"the database did not answer within {limit:g} s") from exc
                raise
            except BaseException:
                broken = self._is_broken(raw)
                raise
            finally:
                if guard is not None and self._unguard(guard):
                    broken = True
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
    """A SQLite file in WAL mode, ``synchronous=FULL``: commits survive kill -9 and power loss.

    Write transactions of this process take turns on an in-process lock before SQLite's own
    (``_writing``): SQLite's busy handler polls with growing sleeps and lets a newcomer overtake
    a writer that has waited long, so under steady writes one could wait for seconds; behind the
    lock they queue, and the busy timeout only waits for other processes.
    """

    dialect = SQLITE

    def __init__(
        self, path: str, max_connections: int = MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(max_connections, timeout)
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError("the store needs a SQLite file path (in-memory is not shared)")
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._writer = threading.Lock()

    @staticmethod
    def _lock_wait(deadline: float | None) -> float:
        """Seconds to wait for SQLite's lock: what is left until ``deadline``."""
        if deadline is None:
            return MAINTENANCE_LOCK_WAIT
        return max(0.0, deadline - time.monotonic())

    def _connect(self, deadline: float | None) -> Any:
        wait = self._lock_wait(deadline)
        raw = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=wait
        )
        # Switching a new database to WAL needs an exclusive lock and does not wait on the busy
        # timeout, so concurrent openers of a fresh file retry here.
        give_up = time.monotonic() + wait
        while True:
            try:
                raw.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raw.close()
                    raise
                time.sleep(0.01)
        raw.execute("PRAGMA synchronous = FULL")
        return raw

    @contextlib.contextmanager
    def _writing(self, write: bool, deadline: float | None, limit: float | None) -> Iterator[None]:
        if not write:
            yield
            return
        if deadline is None:
            self._writer.acquire()
        elif not self._writer.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreTimeout(
                f"the database stayed locked by this collector's other writes for {limit:g} s"
            )
        try:
            yield
        finally:
            self._writer.release()

    def _begin(self, raw: Any, write: bool, deadline: float | None) -> None:
        # The busy timeout is the transaction's time left: waits for another process's lock.
        raw.execute(f"PRAGMA busy_timeout = {int(self._lock_wait(deadline) * 1000)}")
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
        raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _commit(self, raw: Any) -> None:
        raw.execute("COMMIT")

    def _rollback(self, raw: Any) -> None:
        raw.execute("ROLLBACK")


def _cut(raw: Any) -> None:
    """Shut a psycopg connection's socket down, so that a statement waiting on it fails now.

    A duplicate of the descriptor is shut down and closed: the connection's own descriptor
    stays open (closing it under the waiting thread could hand its number to another socket).
    """
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


class PostgresDatabase(Database):
    """A PostgreSQL database shared by any number of collector replicas.

    What bounds each wait on the server (libpq parameters that the URL gives win):

    - connecting: ``connect_timeout``, the transaction's time left, at most the store
      timeout (a migration's long limit is for its statements) and at least 2 s (libpq's
      least);
    - each statement of a transaction with a limit: ``statement_timeout``, its time left at
      the start (``SET LOCAL``: it ends with the transaction); a statement waiting for a lock
      (a write waiting for another replica's migration too) is cancelled;
    - a server that does not answer at all (frozen, or the network to it is down): the
      watchdog cuts the connection ``_CUT_GRACE`` after the deadline (``_Watchdog``);
    - a peer gone from the network, under a statement without a limit or in the pool: TCP
      keepalives (a silent connection is probed after 5 s, dropped after 3 probes 2 s apart)
      and ``tcp_user_timeout`` (dropped when what was sent is not acknowledged within 10 s).
      Fixed values, not the store timeout: a live server's kernel answers them however long
      its statements run.
    """

    dialect = POSTGRES
    conn_class = PostgresConn

    def __init__(
        self, url: str, max_connections: int = MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(max_connections, timeout)
        self.url = url
        self._watchdog = _Watchdog(_cut)

    def _connection_parameters(self, deadline: float | None) -> dict[str, Any]:
        """libpq parameters for a new connection: the time limits above, less those the URL
        sets itself."""
        from psycopg import pq
        from psycopg.conninfo import conninfo_to_dict

        seconds = self.timeout
        if deadline is not None:
            seconds = min(seconds, deadline - time.monotonic())
        params: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(seconds)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        if pq.version() >= 120000:  # libpq 12 knows it; an older one refuses unknown parameters
            params["tcp_user_timeout"] = 10_000
        given = conninfo_to_dict(self.url)
        return {key: value for key, value in params.items() if key not in given}

    def _connect(self, deadline: float | None) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        params = self._connection_parameters(deadline)
        try:
            return psycopg.connect(self.url, autocommit=False, **params)
        except psycopg.OperationalError as exc:
            # psycopg's own connection timeout (a server that accepts but does not answer).
            timed_out = getattr(psycopg.errors, "ConnectionTimeout", None)
            if timed_out is None or not isinstance(exc, timed_out):
                raise
            seconds = params.get("connect_timeout") or conninfo_to_dict(self.url)["connect_timeout"]
            message = f"the database did not accept a connection within {seconds} s"
            raise self._stalled(message) from exc

    def _begin(self, raw: Any, write: bool, deadline: float | None) -> None:
        # psycopg opens the transaction implicitly with the first statement.
        if write:
            sql = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
        else:
            sql = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        if deadline is not None:
            # In the same round trip; LOCAL: it ends with the transaction.
            left = max(1, int((deadline - time.monotonic()) * 1000))
            sql += f"; SET LOCAL statement_timeout = {left}"
        raw.execute(sql)

    def _is_broken(self, raw: Any) -> bool:
        return bool(raw.broken or raw.closed)

    def _usable(self, raw: Any) -> bool:
        """False for a connection the server closed while it sat idle in the pool.

        A restarted (or crashed, or terminating) server closes its end: the socket of an idle
        connection is then readable, while that of a healthy one has nothing to read. Polling
        it costs about a microsecond, against some 80 microseconds (on loopback; a network
        round trip elsewhere) for a ``SELECT 1``; it does not see a server that vanished
        without closing (the watchdog and keepalives are for that).
        """
        if raw.closed or raw.broken:
            return False
        try:
            poller = select.poll()
            poller.register(raw.fileno(), select.POLLIN)
            return not poller.poll(0)
        except Exception:
            return False

    def _guard(self, raw: Any, deadline: float | None) -> _Guard | None:
        if deadline is None:
            return None
        return self._watchdog.arm(raw, deadline + _CUT_GRACE)

    def _unguard(self, guard: _Guard) -> bool:
        return self._watchdog.disarm(guard)

    def close(self) -> None:
        """Close every pooled connection and stop the watchdog."""
        super().close()
        self._watchdog.stop()

    def lock_for_migration(self, conn: Conn) -> None:
        """Hold a transaction-scoped advisory lock until the migration commits."""
        conn.query("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))

    def lock_against_migration(self, conn: Conn) -> None:
        """Hold the migration's advisory lock in shared mode until this transaction ends.

        Write transactions share it; a migration takes it exclusively (``lock_for_migration``)
        and waits for those running, and writes starting meanwhile wait for the migration to
        commit. The lock is released only after the migration's commit is visible, so at READ
        COMMITTED the next statement's snapshot (the version check) sees what it committed.
        A write waits for a running migration at most until its deadline (statement_timeout).
        """
        conn.query("SELECT pg_advisory_xact_lock_shared(?)", (MIGRATION_LOCK_KEY,))
