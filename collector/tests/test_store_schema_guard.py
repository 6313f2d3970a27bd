"""A store whose schema a newer collector migrates while it runs (a rolling upgrade): it writes
nothing more, in no interleaving, and says to upgrade it rather than failing on database errors
(the newer collector: ``newer_schema``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from collector.tests.newer_schema import (
    COPIED,
    MESSAGE,
    NEWER,
    RENAMED,
    newer_schema,
    open_newer,
    part_keys,
)
from collector.tests.test_store_schema import REL, T0, one_part

from runcov_collector.model import Batch, MetricPoint, Selection
from runcov_collector.store import SCHEMA_VERSION, SchemaChanged, SqlStore, sql_store


def metric(value: float) -> Batch:
    return Batch(metrics=[MetricPoint(REL, "i", "runcov.requests.seen", {}, value, T0 * 10**9)])


def key(n: int) -> str:
    return f"{n:032x}"


def run_in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``work``; the dict gets its ``result`` or ``error`` when it ends."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_writes_after_a_newer_migration_are_refused_and_write_nothing(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    store.ingest(one_part(1))
    newer = open_newer(store_factory, monkeypatch, RENAMED)
    for batch in (one_part(2), metric(5)):
        with pytest.raises(SchemaChanged) as info:
            store.ingest(batch)
        assert str(info.value) == MESSAGE
        assert (info.value.found, info.value.known) == (NEWER, SCHEMA_VERSION)
    with pytest.raises(SchemaChanged, match="upgraded to version"):
        store.expire(time.time())
    assert part_keys(newer, "part_keys") == [key(1)]
    with newer.db.transaction(write=False) as conn:
        assert conn.query("SELECT COUNT(*) FROM metric_values") == [(0,)]
        assert conn.query("SELECT COUNT(*) FROM hits_hour") == [(1,)]


def test_writes_a_newer_schema_would_not_read_are_refused(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worse case: the tables this version writes are still there, so without the check its
    writes would commit, and be acknowledged, where the newer version never looks."""
    store = store_factory()
    store.ingest(one_part(1))
    newer = open_newer(store_factory, monkeypatch, COPIED)
    with pytest.raises(SchemaChanged, match="upgrade it"):
        store.ingest(one_part(2))
    assert part_keys(newer, "seen_parts") == part_keys(newer, "part_keys") == [key(1)]


def test_queries_failing_on_a_newer_schema_raise_schema_changed(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    store.ingest(one_part(1))
    sel = Selection("shop")
    before = store.coverage(sel)
    assert store.ping() is True
    newer = open_newer(store_factory, monkeypatch, RENAMED)
    queries: list[Callable[[], Any]] = [
        store.services,
        lambda: store.releases("shop"),
        lambda: store.endpoints(sel),
        lambda: store.coverage(sel),
        lambda: store.file(sel, "app.py"),
        lambda: store.series(sel),
        lambda: store.agent(sel),
        lambda: store.diff(sel, sel),
    ]
    for query in queries:
        with pytest.raises(SchemaChanged) as info:
            query()
        assert str(info.value) == MESSAGE
        assert info.value.__cause__ is not None  # the database error it explains
    with pytest.raises(SchemaChanged, match="upgrade it"):
        store.ping()
    assert part_keys(newer, "part_keys") == [key(1)]
    # Once the schema is this store's version again (say, a restored backup), it answers.
    with newer.db.transaction(write=True) as conn:
        for statement in ("ALTER TABLE part_keys RENAME TO seen_parts",
                          "ALTER TABLE releases RENAME COLUMN last_span TO last_seen"):
            conn.query(statement)
        conn.query("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    assert store.coverage(sel) == before
    assert store.ping() is True


def test_a_failing_query_on_an_unchanged_schema_keeps_its_error(store: SqlStore) -> None:
    store.ingest(one_part(1))
    with store.db.transaction(write=True) as conn:
        conn.query("ALTER TABLE releases RENAME COLUMN last_seen TO last_span")
    with pytest.raises(Exception) as info:
        store.coverage(Selection("shop"))
    assert not isinstance(info.value, SchemaChanged)
    assert "last_seen" in str(info.value)


def test_an_older_schema_is_named_as_such(store: SqlStore) -> None:
    with store.db.transaction(write=True) as conn:
        conn.query("UPDATE schema_version SET version = ?", (SCHEMA_VERSION - 1,))
    with pytest.raises(SchemaChanged, match=f"is version {SCHEMA_VERSION - 1}, older than"):
        store.ingest(one_part(1))


def test_an_ingest_waiting_for_a_running_migration_is_refused_once_it_commits(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration started first: the ingest waits for it, then sees the new version. On
    PostgreSQL (READ COMMITTED) a write that checked the version before the migration
    committed, and did not wait for it, would commit into the old tables."""
    store = store_factory()
    store.ingest(one_part(1))
    migrating, finish = threading.Event(), threading.Event()

    def hold(conn: Any) -> None:
        migrating.set()
        assert finish.wait(30)

    newer_schema(monkeypatch, [*COPIED, hold])
    migration, migrated = run_in_thread(store_factory)
    try:
        assert migrating.wait(30)
        ingest, ingested = run_in_thread(lambda: store.ingest(one_part(2)))
        ingest.join(1.0)
        assert ingest.is_alive(), f"the ingest did not wait for the migration: {ingested}"
    finally:
        finish.set()
    migration.join(30)
    ingest.join(30)
    assert "error" not in migrated, migrated
    assert isinstance(ingested.get("error"), SchemaChanged), ingested
    newer = migrated["result"]
    assert part_keys(newer, "seen_parts") == part_keys(newer, "part_keys") == [key(1)]


def test_a_migration_waits_for_an_ingest_in_flight(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest started first (and checked the version): the migration waits until it
    committed, so its rows are in the database the migration converts. On PostgreSQL a
    migration that did not wait would copy the part keys before the ingest wrote its own."""
    store = store_factory()
    store.ingest(one_part(1))
    writing, finish = threading.Event(), threading.Event()
    real_ingest_batch = sql_store.ingest_batch

    def paused(conn: Any, batch: Batch) -> Any:
        writing.set()
        assert finish.wait(30)
        return real_ingest_batch(conn, batch)

    monkeypatch.setattr(sql_store, "ingest_batch", paused)
    ingest, ingested = run_in_thread(lambda: store.ingest(one_part(2)))
    try:
        assert writing.wait(30)
        newer_schema(monkeypatch, COPIED)
        migration, migrated = run_in_thread(store_factory)
        migration.join(1.0)
        assert migration.is_alive(), f"the migration did not wait for the ingest: {migrated}"
    finally:
        finish.set()
    ingest.join(30)
    migration.join(30)
    assert ingested.get("result") == {"parts": 1, "duplicates": 0}, ingested
    assert "error" not in migrated, migrated
    assert part_keys(migrated["result"], "part_keys") == [key(1), key(2)]
    with pytest.raises(SchemaChanged):
        store.ingest(one_part(3))


NEWER_PROCESS = textwrap.dedent(
    """
    import sys
    from runcov_collector.store import SCHEMA_VERSION, open_store, schema

    schema.SCHEMA_VERSION = SCHEMA_VERSION + 1
    schema.MIGRATIONS[SCHEMA_VERSION] = [
        "ALTER TABLE seen_parts RENAME TO part_keys",
        "ALTER TABLE releases RENAME COLUMN last_seen TO last_span",
    ]
    store = open_store(sys.argv[1])
    print(store.schema_version_found, flush=True)
    store.close()
    """
)


def test_a_newer_collector_process_sharing_the_database(
    store_factory: Any, tmp_path: Path
) -> None:
    """Two processes on one SQLite file (or one PostgreSQL): the one still running stops
    writing once the other migrated."""
    store = store_factory()
    store.ingest(one_part(1))
    script = tmp_path / "newer.py"
    script.write_text(NEWER_PROCESS)
    done = subprocess.run(
        [sys.executable, str(script), store_factory.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(SCHEMA_VERSION)
    with pytest.raises(SchemaChanged) as info:
        store.ingest(one_part(2))
    assert str(info.value) == MESSAGE
    with pytest.raises(SchemaChanged):
        store.releases("shop")
    with store.db.transaction(write=False) as conn:
        assert [t for (t,) in conn.query("SELECT trace_id FROM part_keys")] == [key(1)]
