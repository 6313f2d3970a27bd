"""A newer collector migrating a running store's database (a rolling upgrade), for tests.

The newer collector is this one with ``SCHEMA_VERSION + 1`` and one more migration: either one
that renames what this version writes and reads (its writes and queries would fail), or one
that copies part keys to a new table (its writes would still succeed, into a table the newer
version no longer reads).
"""

from __future__ import annotations

from typing import Any

import pytest

from runcov_collector.store import SCHEMA_VERSION, SqlStore, schema

NEWER = SCHEMA_VERSION + 1
MESSAGE = (
    f"the store's schema was upgraded to version {NEWER} by a newer collector; "
    f"this collector knows version {SCHEMA_VERSION}: upgrade it"
)

RENAMED: list[Any] = [
    "ALTER TABLE seen_parts RENAME TO part_keys",
    "ALTER TABLE releases RENAME COLUMN last_seen TO last_span",
]
"""Version "5" keeps part keys in part_keys and calls a release's latest span time last_span."""

COPIED: list[Any] = ["CREATE TABLE part_keys AS SELECT trace_id, span_id, hour FROM seen_parts"]
"""Version "5" keeps part keys in part_keys; seen_parts stays, read by no one."""


def newer_schema(monkeypatch: pytest.MonkeyPatch, steps: list[Any]) -> None:
    """Make stores opened from now on those of a collector one schema version newer, whose
    migration from the current version runs ``steps``."""
    monkeypatch.setattr(schema, "SCHEMA_VERSION", NEWER)
    monkeypatch.setattr(schema, "MIGRATIONS", {**schema.MIGRATIONS, SCHEMA_VERSION: steps})


def open_newer(store_factory: Any, monkeypatch: pytest.MonkeyPatch, steps: list[Any]) -> SqlStore:
    """A newer collector opening ``store_factory``'s database: it migrates it to ``NEWER``."""
    with monkeypatch.context() as patch:
        newer_schema(patch, steps)
        newer: SqlStore = store_factory()
    assert newer.schema_version_found == SCHEMA_VERSION
    return newer


def part_keys(store: SqlStore, table: str) -> list[str]:
    """The trace ids of the part keys in ``table`` (``seen_parts`` or the newer ``part_keys``)."""
    with store.db.transaction(write=False) as conn:
        return sorted(str(t) for (t,) in conn.query(f"SELECT trace_id FROM {table}"))
