"""Opening stores: URLs, schema versions and migrations, concurrent openers, crash durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from collector.tests.store_versions import to_version_3

from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    MetricPoint,
    Release,
    Selection,
    StaticPart,
)
from runcov_collector.store import SCHEMA_VERSION, SqlStore, open_store, schema

T0 = 1_764_064_800
REL = Release("shop", "1.0", "prod", "baseline")


def one_part(n: int) -> Batch:
    return Batch(
        coverage=[
            CoveragePart(
                REL,
                f"{n:032x}",
                f"{n:016x}",
                "GET /",
                "exact",
                "2xx",
                (T0 + n) * 10**9,
                0,
                1,
                [FileHits("app.py", "0" * 16, [1, 2, 3], [(1, 2), (2, 3)])],
            )
        ]
    )


def versions(store: SqlStore) -> list[int]:
    with store.db.transaction(write=False) as conn:
        return [int(v) for (v,) in conn.query("SELECT version FROM schema_version")]


def test_new_database_is_created_at_the_current_version(store: SqlStore) -> None:
    assert store.schema_version_found == 0
    assert versions(store) == [SCHEMA_VERSION]


def test_reopen_keeps_data_and_does_not_migrate_again(store_factory: Any) -> None:
    first = store_factory()
    first.ingest(one_part(1))
    first.close()
    again = store_factory()
    assert again.schema_version_found == SCHEMA_VERSION
    assert versions(again) == [SCHEMA_VERSION]
    assert again.coverage(Selection("shop"))["totals"]["requests"] == 1


def test_a_newer_schema_is_refused(store_factory: Any) -> None:
    store = store_factory()
    with store.db.transaction(write=True) as conn:
        conn.query("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this collector"):
        store_factory()


def test_migrations_run_in_order_from_an_older_version(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store_factory()
    old.ingest(one_part(1))
    old.close()
    step = ["CREATE TABLE notes (release_id BIGINT NOT NULL, note TEXT NOT NULL)"]
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(schema, "MIGRATIONS", {**schema.MIGRATIONS, SCHEMA_VERSION: step})
    upgraded = store_factory()
    assert upgraded.schema_version_found == SCHEMA_VERSION
    assert versions(upgraded) == [SCHEMA_VERSION + 1]
    with upgraded.db.transaction(write=False) as conn:
        assert conn.query("SELECT COUNT(*) FROM notes") == [(0,)]
    assert upgraded.coverage(Selection("shop"))["totals"]["requests"] == 1


def test_migration_3_gives_releases_their_span_times_back(store_factory: Any) -> None:
    """Stores written before agent metrics stopped counting as release activity: the times the
    metrics moved are recomputed from what the spans left behind."""
    store = store_factory()
    statics_only = Release("shop", "0.9", "prod", "baseline")
    idle = Release("shop", "2.0", "prod", "baseline")
    store.ingest(one_part(10))
    store.ingest(
        Batch(
            static=[
                StaticPart(
                    statics_only,
                    "9" * 32,
                    "9" * 16,
                    (T0 + 20) * 10**9,
                    [FileStatic("app.py", "1" * 16, [1, 2], [(1, 2)])],
                )
            ],
            metrics=[MetricPoint(idle, "i", "runcov.requests.seen", {}, 4, T0 * 10**9)],
        )
    )
    # What a version 2 collector stored after idle processes exported metrics an hour later.
    later = (T0 + 3600) * 10**9
    with store.db.transaction(write=True) as conn:
        conn.query("UPDATE releases SET last_seen = ?", (later,))
        conn.query("UPDATE releases SET first_seen = ? WHERE version = '2.0'", (later,))
    to_version_3(store)
    with store.db.transaction(write=True) as conn:
        conn.query("UPDATE schema_version SET version = 2")
    store.close()

    upgraded = store_factory()
    assert upgraded.schema_version_found == 2
    times = {
        r["version"]: (r["first_seen"], r["last_seen"], r["requests_seen"])
        for r in upgraded.releases("shop")["releases"]
    }
    assert times == {
        "1.0": ("2025-11-25T10:00:10Z", "2025-11-25T10:00:10Z", 0),
        "0.9": ("2025-11-25T10:00:20Z", "2025-11-25T10:00:20Z", 0),
        "2.0": (None, None, 4),
    }
    assert upgraded.coverage(Selection("shop"))["release"]["version"] == "0.9"
    upgraded.ingest(one_part(30))
    assert upgraded.coverage(Selection("shop"))["release"]["version"] == "1.0"


def test_stores_opening_an_empty_database_at_once_migrate_it_once(store_factory: Any) -> None:
    url = store_factory.fresh_url()
    opened: list[SqlStore] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def open_one() -> None:
        try:
            gate.wait()
            opened.append(store_factory(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(s.schema_version_found for s in opened) == [0, *[SCHEMA_VERSION] * 3]
    assert versions(opened[0]) == [SCHEMA_VERSION]


def test_connections_are_bounded_and_callers_wait(store_factory: Any) -> None:
    store = open_store(store_factory.url, max_connections=2)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                store.ingest(one_part(n * 100 + i))
                store.coverage(Selection("shop"))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.db.open_connections <= 2
        assert store.coverage(Selection("shop"))["totals"]["requests"] == 30
    finally:
        store.close()
    assert store.db.open_connections == 0


def test_closed_store_does_not_answer_ping(store: SqlStore) -> None:
    assert store.ping() is True
    store.close()
    assert store.ping() is False


# -- SQLite specifics ------------------------------------------------------------------------


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, path in (
        ("sqlite:///./rel.db", tmp_path / "rel.db"),
        ("sqlite:///sub/dir/rel2.db", tmp_path / "sub" / "dir" / "rel2.db"),
        (f"sqlite:///{tmp_path / 'abs.db'}", tmp_path / "abs.db"),
        (str(tmp_path / "plain.db"), tmp_path / "plain.db"),
    ):
        store = open_store(url)
        try:
            store.ingest(one_part(1))
        finally:
            store.close()
        assert path.exists(), url
    for bad in ("sqlite://host/x.db", "mysql://x/y", "sqlite:///:memory:", ""):
        with pytest.raises(ValueError):
            open_store(bad)


def test_sqlite_commits_are_durable_by_configuration(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.db.transaction(write=False) as conn:
            assert conn.query("PRAGMA journal_mode") == [("wal",)]
            assert conn.query("PRAGMA synchronous") == [(2,)]  # FULL
    finally:
        store.close()


# -- kill -9 ---------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from runcov_collector.model import Batch, CoveragePart, FileHits, Release
    from runcov_collector.store import open_store

    store = open_store(sys.argv[1])
    release = Release("shop", "1.0", "prod", "baseline")
    n = 0
    while True:
        part = CoveragePart(
            release, f"{n:032x}", f"{n:016x}", "GET /", "exact", "2xx",
            (1_764_064_800 + n) * 10**9, 0, 1,
            [FileHits("app.py", "0" * 16, list(range(1, 40)), [(1, 2), (2, 3)])],
        )
        store.ingest(Batch(coverage=[part]))
        print(n, flush=True)  # acknowledged: the batch is committed
        n += 1
    """
)


def test_acknowledged_batches_survive_kill_9(store_factory: Any, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), store_factory.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked = int(line)
            if acked >= 30:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert acked >= 30, proc.stderr.read() if proc.stderr else ""
    store = store_factory()
    answer = store.file(Selection("shop"), "app.py")
    # Everything acknowledged is there (the writer may have committed one more before dying).
    assert answer["requests"] >= acked + 1
    assert dict((ln, n) for ln, n, _ in answer["lines"])[1] == answer["requests"]


def test_migration_4_gives_stored_counters_their_runs_and_traces_their_receive_hour(
    store_factory: Any,
) -> None:
    """A version 3 store kept one value per series, with no start time. After the upgrade, a
    process that keeps counting adds nothing twice, one that restarted adds its new run, and
    one that never reports again keeps its value; a late request stored before the upgrade
    straddles a retention sweep and still counts once."""
    store = store_factory()
    seen = "runcov.requests.seen"

    def point(instance: str, value: float, at: int, start: int) -> MetricPoint:
        return MetricPoint(REL, instance, seen, {}, value, at * 10**9, start * 10**9)

    rate = MetricPoint(
        REL,
        "a",
        "runcov.sample_rate",
        {"runcov.endpoint": "GET /"},
        0.5,
        (T0 + 10) * 10**9,
        kind="gauge",
    )
    store.ingest(
        Batch(
            metrics=[
                point("a", 10, T0 + 10, T0),
                point("b", 7, T0 + 10, T0),
                point("c", 4, T0 + 10, T0),
                rate,
            ]
        )
    )
    received = (T0 + 10 * 3600) * 10**9
    late = one_part(1).coverage[0]
    late.time_unix_nano = T0 * 10**9
    store.ingest(Batch(coverage=[late], received_unix_nano=received))
    to_version_3(store)
    store.close()

    upgraded = store_factory()
    assert upgraded.schema_version_found == 3
    assert upgraded.releases("shop")["releases"][0]["requests_seen"] == 10 + 7 + 4
    upgraded.ingest(Batch(metrics=[point("a", 15, T0 + 20, T0), point("b", 3, T0 + 20, T0 + 15)]))
    assert upgraded.releases("shop")["releases"][0]["requests_seen"] == 15 + (7 + 3) + 4
    with upgraded.db.transaction(write=False) as conn:
        assert conn.query("SELECT instance FROM metrics_legacy") == [("c",)]
    answer = upgraded.agent(Selection("shop"))
    assert answer["processes"] == 3
    assert answer["endpoints"][0]["sample_rate"]["rate"] == 0.5

    upgraded.expire(received / 1e9 + 60 - 2 * 3600)
    second = one_part(1).coverage[0]
    second.span_id, second.time_unix_nano = "2" * 16, T0 * 10**9
    upgraded.ingest(Batch(coverage=[second], received_unix_nano=received + 60 * 10**9))
    assert upgraded.coverage(Selection("shop"))["totals"]["requests"] == 1
