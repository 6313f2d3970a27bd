"""Store fixtures: every store test runs against SQLite and against a real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runcov_collector.store import SqlStore, open_store

PG_ENV = "RUNCOV_TEST_PG_URL"


def _postgres_url() -> str:
    """The test server's URL; a loud skip locally when unset, a failure on CI."""
    url = os.environ.get(PG_ENV, "")
    if url:
        return url
    if os.environ.get("CI") == "1":
        pytest.fail(f"CI=1 but {PG_ENV} is not set: PostgreSQL store tests must run on CI")
    pytest.skip(
        f"POSTGRESQL STORE TESTS NOT RUN: {PG_ENV} is unset "
        f"(start a server with `.ci/pg start` and export {PG_ENV}=<the URL it prints>)"
    )


class StoreFactory:
    """Opens stores on one fresh database (SQLite file or PostgreSQL schema) and cleans up."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self._tmp = tmp_path
        self._opened: list[SqlStore] = []
        self._schemas: list[str] = []
        self.url = self.fresh_url()

    def fresh_url(self) -> str:
        """The URL of a new, empty database."""
        if self.backend == "sqlite":
            return f"sqlite:///{self._tmp / f'store-{uuid.uuid4().hex[:8]}.db'}"
        import psycopg

        base = _postgres_url()
        schema = f"runcov_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self._schemas.append(schema)
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}options=-csearch_path%3D{schema}"

    def __call__(self, url: str | None = None) -> SqlStore:
        """Open a store (on this factory's database unless ``url`` names another)."""
        store = open_store(url or self.url)
        self._opened.append(store)
        return store

    def cleanup(self) -> None:
        """Close every store opened here and drop the PostgreSQL schemas created."""
        for store in self._opened:
            store.close()
        if self._schemas:
            import psycopg

            with psycopg.connect(_postgres_url(), autocommit=True) as conn:
                for schema in self._schemas:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of stores on one fresh database, for each backend."""
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def store(store_factory: StoreFactory) -> SqlStore:
    """A store on a fresh, empty database (SQLite and PostgreSQL)."""
    return store_factory()


@pytest.fixture
def pg_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of PostgreSQL stores only (for multi-replica tests)."""
    factory = StoreFactory("postgres", tmp_path)
    yield factory
    factory.cleanup()
