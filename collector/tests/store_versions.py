"""Take a store's database back to an older schema version, to test the migrations from it."""

from __future__ import annotations

from runcov_collector.store import SqlStore


def to_version_3(store: SqlStore) -> None:
    """The database as a version 3 collector kept it, the data of the current one carried over.

    Version 3 kept one value per series (process, name, attributes) in ``metrics``, which the
    current version keeps as ``metrics_legacy`` (values not given a run yet); ``traces`` had no
    ``received`` column and there was no ``trace_marks``. Each series must have one run.
    """
    with store.db.transaction(write=True) as conn:
        conn.query("ALTER TABLE metrics_legacy RENAME TO metrics")
        conn.query(
            "INSERT INTO metrics (release_id, instance, name, attributes, value, time) "
            "SELECT release_id, instance, name, attributes, value, time FROM metric_values"
        )
        conn.query("DROP TABLE metric_values")
        conn.query("DROP TABLE trace_marks")
        conn.query("ALTER TABLE traces DROP COLUMN received")
        conn.query("UPDATE schema_version SET version = 3")
