"""The store's time limit: what it bounds (a write waiting for a migration, SQLite's write lock)
and what it does not (the migration itself, which has a longer limit of its own:
test_store_maintenance.py); writers of one process sharing SQLite's lock."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest
from collector.tests.test_store_schema_guard import run_in_thread

from runcov_collector import decode
from runcov_collector.store import SqlStore, open_store
from runcov_collector.store.database import MIGRATION_LOCK_KEY, PostgresDatabase, SqliteDatabase
from runcov_collector.store.errors import is_unavailable
from runcov_collector.testing import coverage_span, file_hits, trace_request


def _batch(lines: list[int], files: int = 1, spans: int = 1) -> Any:
    request = trace_request(
        [
            coverage_span(
                "GET /", [file_hits(f"shop/m{f}.py", lines, [(1, 2)]) for f in range(files)]
            )
            for _ in range(spans)
        ]
    )
    return decode.decode_traces(request).batch


@pytest.mark.postgres
def test_a_running_migration_holds_writes_off_only_until_the_timeout(pg_factory):
    """While another replica migrates (it holds the migration lock), a write waits for it at
    most the store timeout and fails as unavailable (the exporter retries); opening a store,
    which migrates, waits longer, up to the migration timeout (600 s by default), as a
    migration may legitimately be long."""
    import psycopg

    store = pg_factory()
    store.db.timeout = 1
    store.ingest(_batch([1]))
    migrating = psycopg.connect(pg_factory.url)
    opener: threading.Thread | None = None
    opened: dict[str, Any] = {}
    try:
        migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        writer, written = run_in_thread(lambda: store.ingest(_batch([2])))
        writer.join(5)
        assert not writer.is_alive(), "the write still waits for the migration"
        error = written["error"]
        assert is_unavailable(error)
        assert "canceling statement due to statement timeout" in str(error)
        db = PostgresDatabase(pg_factory.url)
        db.timeout = 1
        opener, opened = run_in_thread(lambda: SqlStore(db))
        opener.join(2.5)
        assert opener.is_alive(), f"the migration gave up waiting: {opened}"
    finally:
        migrating.rollback()
        migrating.close()
        if opener is not None:
            opener.join(10)
    assert isinstance(opened.get("result"), SqlStore), opened
    opened["result"].close()
    store.ingest(_batch([2]))
    assert store.ping() is True


@pytest.mark.parametrize(
    ("max_connections", "write", "message"),
    [
        (1, False, "no database connection was free within 0.5 s (1 in use)"),
        (4, True, "the database stayed locked by this collector's other writes for 0.5 s"),
    ],
    ids=["pool", "sqlite-writer"],
)
def test_waiting_for_a_connection_or_the_write_lock_is_bounded(
    tmp_path, max_connections, write, message
):
    """A transaction that cannot get a pooled connection, or SQLite's write lock held by
    another write of this process, gives up at the timeout rather than queue without end."""
    db = SqliteDatabase(str(tmp_path / "p.db"), max_connections)
    db.timeout = 0.5
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction(write=write):
            holding.set()
            release.wait(10)

    def use() -> Any:
        with db.transaction(write=write) as conn:
            return conn.query("SELECT 1")

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    try:
        waiter, outcome = run_in_thread(use)
        waiter.join(3)
        assert not waiter.is_alive(), "still waiting"
        assert is_unavailable(outcome["error"])
        assert str(outcome["error"]) == message
    finally:
        release.set()
        holder.join(10)
    assert use() == [(1,)]
    db.close()


def test_writers_of_one_process_share_sqlite_without_failing(tmp_path):
    """Writers of one collector queue for SQLite's write lock in turn: with as many writers as
    the collector has store threads, none waits anywhere near the timeout, none fails."""
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    store.db.timeout = 2
    failures: list[str] = []
    slowest = [0.0]
    lock = threading.Lock()
    stop = time.monotonic() + 3

    def write(writer: int) -> None:
        n = 0
        while time.monotonic() < stop:
            batch = _batch(list(range(1, 60, 1 + (writer + n) % 5)), files=20, spans=20)
            n += 1
            started = time.monotonic()
            try:
                store.ingest(batch)
            except Exception as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
            with lock:
                slowest[0] = max(slowest[0], time.monotonic() - started)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    store.close()
    assert failures == []
    assert slowest[0] < 2


def _tcp_options(store: SqlStore) -> tuple[int, ...]:
    with store.db.transaction(write=False) as conn:
        sock = socket.socket(fileno=os.dup(conn.raw.fileno()))
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, 18),  # TCP_USER_TIMEOUT (Linux)
        )
    finally:
        sock.close()


@pytest.mark.postgres
def test_postgresql_connections_notice_a_peer_gone_from_the_network(pg_factory):
    """TCP keepalives and tcp_user_timeout on every connection (a dead network under a long
    statement or in the pool); what the store URL sets itself wins."""
    assert _tcp_options(pg_factory()) == (1, 5, 2, 3, 10_000)
    tuned = pg_factory(f"{pg_factory.url}&keepalives_idle=30&tcp_user_timeout=60000")
    assert _tcp_options(tuned) == (1, 30, 2, 3, 60_000)
