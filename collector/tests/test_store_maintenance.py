"""The store's maintenance work under a database that stops answering: the retention sweep runs
in short batches, each bounded by the store timeout, and the schema migration at start is
bounded by the migration timeout, so that neither waits forever on a frozen server."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from collector.tests.server.test_collector_store_timeouts import (
    _FreezingProxy,
    _lock_sqlite,
    _target,
)
from collector.tests.server.test_collector_store_unavailable import proxied
from collector.tests.test_store import HOUR, REL, T0, part
from collector.tests.test_store_schema_guard import run_in_thread

from runcov_collector import cli
from runcov_collector.app import Collector, open_configured_store, redact_secrets, redact_url
from runcov_collector.config import Config, ConfigError, from_sources
from runcov_collector.model import Batch, FileHits, Selection
from runcov_collector.store import SqlStore, open_store, queries
from runcov_collector.store.database import MIGRATION_LOCK_KEY
from runcov_collector.store.dialect import Conn
from runcov_collector.store.errors import StoreTimeout, is_unavailable

# The tables a sweep deletes from, and every table, in a stable order for comparisons.
SWEPT = ("hits_hour", "traces", "trace_marks", "seen_parts")
TABLES = (
    "releases",
    "endpoints",
    "paths",
    "release_files",
    "hits_rel",
    "hits_ep",
    "request_counts",
    *SWEPT,
)


def _expire_in_one_transaction(conn: Conn, older_than_unix: float) -> int:
    """What a sweep deleted when it ran as one transaction: the reference a batched sweep must
    reproduce, row for row (hour buckets that ended by the cutoff, marks of swept traces whose
    keys are kept, marks and part keys received ``KEY_GRACE_HOURS`` before the cutoff)."""
    cutoff = min(max(0, int(older_than_unix // 3600)), 2**62)
    keys_before = max(0, cutoff - queries.KEY_GRACE_HOURS)
    conn.query(
        "INSERT INTO trace_marks (release_id, trace_id, endpoint_id, file_id, received) "
        "SELECT release_id, trace_id, endpoint_id, file_id, MAX(received) FROM traces "
        "WHERE hour < ? AND received >= ? GROUP BY release_id, trace_id, endpoint_id, file_id "
        "ON CONFLICT (release_id, trace_id, endpoint_id, file_id) "
        "DO UPDATE SET received = {greatest}(trace_marks.received, excluded.received)",
        (cutoff, keys_before),
    )
    deleted = 0
    for table, column, before in (
        ("hits_hour", "hour", cutoff),
        ("traces", "hour", cutoff),
        ("trace_marks", "received", keys_before),
        ("seen_parts", "hour", keys_before),
    ):
        cur = conn.raw.cursor()
        try:
            cur.execute(conn.dialect.sql(f"DELETE FROM {table} WHERE {column} < ?"), (before,))
            deleted += max(0, cur.rowcount)
        finally:
            cur.close()
    return deleted


def _reference_expire(store: SqlStore, older_than_unix: float) -> int:
    with store.db.transaction(write=True) as conn:
        return _expire_in_one_transaction(conn, older_than_unix)


def _dump(store: SqlStore) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with store.db.transaction(write=False) as conn:
        for table in TABLES:
            out[table] = sorted(tuple(str(v) for v in row) for row in conn.query(
                f"SELECT * FROM {table}"
            ))
    return out


def _files(n: int) -> list[FileHits]:
    return [
        FileHits(f"shop/m{f}.py", "5e0c", [1, 2 + n % 4], [(1, 2 + n % 4)])
        for f in range(1 + n % 3)
    ]


def _history(store: SqlStore, first: int, traces: int, received_base: float) -> None:
    """``traces`` requests in two parts each over eight span hours, received at five different
    times (so that some swept traces keep their marks and some do not), plus a recent one."""
    for n in range(first, first + traces):
        at = T0 + (n % 8) * HOUR + n
        endpoint = f"GET /e{n % 3}"
        for span in (1, 2):
            received = received_base + ((n + span) % 5) * 12 * HOUR
            store.ingest(
                Batch(
                    coverage=[part(n, 100 * n + span, at=at, endpoint=endpoint, files=_files(n))],
                    received_unix_nano=int(received * 1e9),
                )
            )
    recent = part(first + traces, at=received_base + 60 * HOUR, files=_files(1))
    store.ingest(Batch(coverage=[recent], received_unix_nano=int((T0 + 60 * HOUR) * 1e9)))


def _late_parts(store: SqlStore, traces: range, received: float) -> None:
    """A third part of each of ``traces`` (requests of ``_history``), received late: the
    marks an earlier sweep left of those traces are then kept past the next sweep's key
    cutoff, and the traces' hour buckets swept again meet their marks (an upsert)."""
    for n in traces:
        late = part(n, 100 * n + 3, at=T0 + (n % 8) * HOUR + n, endpoint=f"GET /e{n % 3}",
                    files=_files(n))
        store.ingest(Batch(coverage=[late], received_unix_nano=int(received * 1e9)))


def test_a_sweep_in_batches_deletes_and_keeps_what_one_transaction_did(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical databases: one swept in one transaction (the reference), one by ``expire``
    in batches of 7 rows, each its own write transaction. Both end up row for row the same,
    marks of swept traces (new, kept, met again and expired ones) included, and ``expire``
    reports as many rows deleted."""
    one, batched = store_factory(), store_factory(store_factory.fresh_url())
    for store in (one, batched):
        _history(store, 1, 30, T0)
        # An earlier sweep left marks behind, some of which the next one raises or drops.
        assert _reference_expire(store, T0 + 30 * HOUR) > 0
        _history(store, 100, 30, T0 + 20 * HOUR)
        _late_parts(store, range(1, 30, 3), T0 + 45 * HOUR)
    assert _dump(one) == _dump(batched)

    writes: list[bool] = []
    real = batched.db.transaction

    def counting(write: bool) -> Any:
        writes.append(write)
        return real(write)

    monkeypatch.setattr(batched.db, "transaction", counting)
    cutoff = T0 + 50 * HOUR
    expected = _reference_expire(one, cutoff)
    assert expected > 4 * 7 * 3
    assert batched.expire(cutoff, batch_rows=7) == expected
    # Several batches per table (a batch holds at most 7 rows), each a write transaction.
    assert writes.count(True) >= expected // 7
    assert _dump(batched) == _dump(one)
    swept = Selection("shop", version=REL.version, environment=REL.environment)
    assert batched.series(swept) == one.series(swept)
    monkeypatch.undo()
    assert batched.expire(cutoff, batch_rows=7) == 0


def test_a_sweep_of_many_rows_in_large_batches(store_factory: Any) -> None:
    """Thousands of swept trace rows whose keys are kept, in batches of 2500: each batch writes
    thousands of marks at once (PostgreSQL: through COPY), with the reference's result."""
    one, batched = store_factory(), store_factory(store_factory.fresh_url())
    parts = [
        part(n, at=T0 + (n % 4) * HOUR, endpoint=f"GET /e{n % 2}", files=_files(n))
        for n in range(1, 2001)
    ]
    for store in (one, batched):
        store.ingest(Batch(coverage=parts, received_unix_nano=int((T0 + 30 * HOUR) * 1e9)))
    cutoff = T0 + 40 * HOUR
    expected = _reference_expire(one, cutoff)
    assert expected > 2 * 2500
    assert batched.expire(cutoff, batch_rows=2500) == expected
    after = _dump(batched)
    assert after == _dump(one)
    assert len(after["trace_marks"]) > 2500 and after["traces"] == []


@pytest.mark.postgres
def test_a_sweep_against_a_frozen_postgresql_ends_within_the_store_timeout(pg_factory):
    """The server freezes under a sweep: the sweep fails within about one store timeout (the
    batch running then is cut), instead of waiting forever; once the server answers again the
    next sweep finishes the work, with the result of an uninterrupted sweep."""
    reference = pg_factory()
    _history(reference, 1, 20, T0)
    proxy = _FreezingProxy(*_target(pg_factory.url)).start()
    try:
        fresh = pg_factory.fresh_url()
        _history(pg_factory(fresh), 1, 20, T0)
        store = pg_factory(proxied(fresh, proxy))
        store.db.timeout = 1
        cutoff = T0 + 50 * HOUR
        proxy.freeze()
        started = time.monotonic()
        sweeper, outcome = run_in_thread(lambda: store.expire(cutoff))
        sweeper.join(6)
        assert not sweeper.is_alive(), "the sweep still waits for the frozen server"
        took = time.monotonic() - started
        error = outcome.get("error")
        assert isinstance(error, StoreTimeout) and is_unavailable(error), outcome
        assert str(error).startswith("the database did not answer within 1 s"), error
        assert took < 3.5, took
        proxy.thaw()
        deadline = time.monotonic() + 10
        while not store.ping():
            assert time.monotonic() < deadline, "the store does not answer after the freeze"
            time.sleep(0.1)
        store.expire(cutoff)
        expected = _reference_expire(reference, cutoff)
        assert expected > 0
        assert _dump(store) == _dump(reference)
    finally:
        proxy.thaw()
        proxy.stop()


def _migration_waiting(url: str) -> bool:
    """Whether a session waits for the migration's advisory lock."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchall()
    return int(rows[0][0]) > 0


@pytest.mark.postgres
def test_a_collector_starting_against_a_frozen_postgresql_exits_within_the_migration_timeout(
    pg_factory,
):
    """The migration at start waits on a server that froze (its answers never come): the
    collector gives up at the migration timeout (3 s, set in the environment) and exits 1 with
    a message naming the store, its password masked, and the limit, instead of hanging."""
    import psycopg

    proxy = _FreezingProxy(*_target(pg_factory.url)).start()
    migrating = psycopg.connect(pg_factory.url)
    collector: subprocess.Popen[str] | None = None
    try:
        # Another replica migrates: this collector's migration waits for its lock; the server
        # freezes meanwhile, and then that replica is done.
        migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        url = proxied(pg_factory.url, proxy)
        env = {
            **os.environ,
            "RUNCOV_COLLECTOR_MIGRATION_TIMEOUT": "3",
            "RUNCOV_COLLECTOR_STORE_TIMEOUT": "1",
        }
        collector = subprocess.Popen(
            [sys.executable, "-m", "runcov_collector", "serve", "--no-auth", "--http-port", "0",
             "--grpc-port", "-1", "--retention-hours", "0", "--store", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 30
        while not _migration_waiting(pg_factory.url):
            assert collector.poll() is None, collector.communicate()
            assert time.monotonic() < deadline, "the collector never started migrating"
            time.sleep(0.05)
        proxy.freeze()
        started = time.monotonic()
        migrating.rollback()
        try:
            out, err = collector.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the collector still hangs on the frozen server at start")
        took = time.monotonic() - started
        assert collector.returncode == 1, (out, err)
        assert out == ""
        message = (
            f"MigrationTimeout: store {redact_url(url)}: the schema migration did not finish "
            "within 3 s (--migration-timeout, RUNCOV_COLLECTOR_MIGRATION_TIMEOUT): "
            "StoreTimeout: the database did not answer within 3 s"
        )
        # The test server's password is its user's name: every "runcov" of the URL is masked.
        assert err == f"runcov-collector: cannot serve: {redact_secrets(message, url)}\n", err
        assert ":runcov@" not in err and "/***_test?" in err
        assert took < 6, took
    finally:
        if collector is not None and collector.poll() is None:
            collector.kill()
            collector.wait(10)
        migrating.rollback()
        migrating.close()
        proxy.thaw()
        proxy.stop()


@pytest.mark.postgres
def test_opening_a_store_waits_for_a_running_migration_up_to_the_migration_timeout(pg_factory):
    """A migration waiting for another replica's (the server answers) is cut by the server at
    the migration timeout, and opening fails with the limit and the reason."""
    import psycopg

    migrating = psycopg.connect(pg_factory.url)
    try:
        migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        started = time.monotonic()
        opener, opened = run_in_thread(lambda: open_store(pg_factory.url, migration_timeout=1.5))
        opener.join(6)
        assert not opener.is_alive(), "opening still waits for the migration lock"
        took = time.monotonic() - started
    finally:
        migrating.rollback()
        migrating.close()
    error = opened.get("error")
    assert type(error).__name__ == "MigrationTimeout" and is_unavailable(error), opened
    assert str(error) == (
        "the schema migration did not finish within 1.5 s: "
        "QueryCanceled: canceling statement due to statement timeout"
    )
    assert 1.3 < took < 4, took
    pg_factory().close()  # the lock is gone: opening succeeds


def test_opening_a_sqlite_store_locked_by_another_process_gives_up_at_the_migration_timeout(
    tmp_path,
):
    """Another process holds SQLite's write lock: the migration waits for it up to the
    migration timeout (not a fixed minute), then opening fails with the limit."""
    path = str(tmp_path / "m.db")
    open_store(path).close()
    locker = _lock_sqlite(path)
    try:
        started = time.monotonic()
        opener, opened = run_in_thread(lambda: open_store(path, migration_timeout=1))
        opener.join(10)
        assert not opener.is_alive(), "opening still waits for the lock"
        took = time.monotonic() - started
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(10)
    error = opened.get("error")
    assert type(error).__name__ == "MigrationTimeout", opened
    assert str(error) == (
        "the schema migration did not finish within 1 s: OperationalError: database is locked"
    )
    assert took < 3, took
    open_store(path, migration_timeout=1).close()


def test_the_migration_timeout_bounds_only_the_migration(tmp_path):
    """Requests after opening keep the store timeout; 0 (None) leaves the migration unbounded."""
    store = open_store(str(tmp_path / "t.db"), timeout=2.5, migration_timeout=600)
    try:
        assert store.db.timeout == 2.5
        assert store.db._limit() == 2.5
        with store.db.maintenance(600):
            assert store.db._limit() == 600
        with store.db.maintenance(None):
            assert store.db._limit() is None
        assert store.db._limit() == 2.5
    finally:
        store.close()
    open_store(str(tmp_path / "t.db"), migration_timeout=None).close()


def test_a_batch_that_fails_leaves_the_sweep_to_the_next_interval(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails (here: the third) raises; what earlier batches deleted stays deleted,
    and the next sweep deletes the rest."""
    _history(store, 1, 10, T0)
    real = store.db.transaction
    calls = [0]

    def failing(write: bool) -> Any:
        calls[0] += write
        if write and calls[0] == 3:
            raise StoreTimeout("the database did not answer within 5 s")
        return real(write)

    with store.db.transaction(write=False) as conn:
        before = conn.query("SELECT COUNT(*) FROM hits_hour WHERE hour < ?", (T0 // 3600 + 50,))
    monkeypatch.setattr(store.db, "transaction", failing)
    counted: list[int] = []
    with pytest.raises(StoreTimeout):
        store.expire(T0 + 50 * HOUR, batch_rows=5, on_batch=counted.append)
    monkeypatch.undo()
    with store.db.transaction(write=False) as conn:
        left = conn.query("SELECT COUNT(*) FROM hits_hour WHERE hour < ?", (T0 // 3600 + 50,))
    assert int(left[0][0]) > 0
    # The two batches that committed before the failure are counted, row for row.
    assert counted == [5, 5]
    assert int(before[0][0]) - int(left[0][0]) == 10
    assert store.expire(T0 + 50 * HOUR, batch_rows=5) > 0
    with store.db.transaction(write=False) as conn:
        for table in ("hits_hour", "traces"):
            rows = conn.query(f"SELECT COUNT(*) FROM {table} WHERE hour < ?", (T0 // 3600 + 50,))
            assert rows == [(0,)], table


def test_a_sweep_holds_no_transaction_between_batches(tmp_path) -> None:
    """Between two batches of a sweep another writer gets SQLite's write lock at once."""
    store = open_store(str(tmp_path / "i.db"))
    try:
        _history(store, 1, 10, T0)
        interleaved: list[float] = []
        real = store.db.transaction
        writes = [0]

        def with_a_writer_between(write: bool) -> Any:
            writes[0] += write
            if write and writes[0] == 3:
                done = threading.Event()

                def other() -> None:
                    started = time.monotonic()
                    store.ingest(Batch(coverage=[part(999, at=T0 + 70 * HOUR)]))
                    interleaved.append(time.monotonic() - started)
                    done.set()

                threading.Thread(target=other, daemon=True).start()
                assert done.wait(5)
            return real(write)

        store.db.transaction = with_a_writer_between  # type: ignore[method-assign]
        assert store.expire(T0 + 50 * HOUR, batch_rows=5) > 0
        assert len(interleaved) == 1 and interleaved[0] < 1
    finally:
        store.close()


@pytest.mark.postgres
def test_the_retention_job_survives_a_frozen_postgresql(pg_factory, caplog):
    """The retention job's sweep fails within about the store timeout while the server is
    frozen: it logs why, counts the failure, and the sweep of the next interval after the
    server is back expires the old data."""
    seed = pg_factory()  # on the server itself: it writes while the proxy is frozen
    proxy = _FreezingProxy(*_target(pg_factory.url)).start()
    collector: Collector | None = None
    try:
        config = Config(
            no_auth=True,
            http_port=0,
            grpc_port=-1,
            store_url=proxied(pg_factory.url, proxy),
            store_timeout_seconds=1,
            retention_hours=24,
            retention_interval_seconds=0.2,
        )
        collector = Collector(config).start()
        with caplog.at_level(logging.WARNING, logger="runcov_collector"):
            proxy.freeze()
            old = time.time() - 100 * 24 * HOUR
            late = part(1, at=old, files=_files(1))
            seed.ingest(Batch(coverage=[late], received_unix_nano=int(old * 1e9)))
            deadline = time.monotonic() + 6
            warnings: list[str] = []
            while not warnings:
                assert time.monotonic() < deadline, "the retention job hangs on the frozen server"
                time.sleep(0.05)
                warnings = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
        failures = collector.metrics.retention_failures.value()
        assert failures >= 1
        assert "\nruncov_collector_retention_failures_total " in collector.metrics.render()
        assert warnings[0] == (
            "retention sweep failed, retried in 0.2 s: store unavailable: "
            "StoreTimeout: the database did not answer within 1 s"
        ), warnings
        assert not [r for r in caplog.records if r.exc_info is not None], "a traceback was logged"
        proxy.thaw()
        deadline = time.monotonic() + 10
        while collector.metrics.expired.value() == 0:
            assert time.monotonic() < deadline, "no sweep succeeded after the freeze"
            time.sleep(0.05)
        with seed.db.transaction(write=False) as conn:
            assert conn.query("SELECT COUNT(*) FROM traces") == [(0,)]
            assert conn.query("SELECT COUNT(*) FROM hits_hour") == [(0,)]
        assert seed.coverage(Selection("shop"))["totals"]["lines_covered"] == 4  # 2 files
    finally:
        proxy.thaw()
        if collector is not None:
            collector.stop()
        proxy.stop()


def test_migration_timeout_option_environment_and_validation(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("RUNCOV_COLLECTOR_"):
            monkeypatch.delenv(name)
    assert Config().migration_timeout_seconds == 600.0
    env = {"RUNCOV_COLLECTOR_MIGRATION_TIMEOUT": "0"}
    assert from_sources({}, env).migration_timeout_seconds == 0.0
    args = cli.build_parser().parse_args(
        ["serve", "--no-auth", "--store", "sqlite:///x.db", "--migration-timeout", "30"]
    )
    assert cli.config_from_args(args).migration_timeout_seconds == 30.0
    for bad in (-1.0, float("nan"), float("inf")):
        message = re.escape(
            "--migration-timeout (RUNCOV_COLLECTOR_MIGRATION_TIMEOUT) must be >= 0 seconds"
        )
        with pytest.raises(ConfigError, match=message):
            Config(no_auth=True, migration_timeout_seconds=bad).validate()
    store_url = f"sqlite:///{tmp_path / 'c.db'}"
    seen: list[float | None] = []
    real = SqlStore.__init__

    def spy(self: SqlStore, db: Any, migration_timeout: float | None = None) -> None:
        seen.append(migration_timeout)
        real(self, db, migration_timeout)

    monkeypatch.setattr(SqlStore, "__init__", spy)
    for seconds in (0.0, 30.0):
        config = Config(no_auth=True, store_url=store_url, migration_timeout_seconds=seconds)
        open_configured_store(config).close()
    assert seen == [None, 30.0]
