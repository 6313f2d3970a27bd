"""Configuration errors at start: every bad value, from an argument or from the environment, is
refused by ``runcov-collector serve`` with exit 2 and a message naming the option and its
variable (and saying when the value came from the environment), before anything starts; and
every value accepted stays within what the waits, libpq, SQLite and gRPC can take, so that
nothing fails later on a value refused at start."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runcov_collector import cli
from runcov_collector.app import Collector
from runcov_collector.config import Config, ConfigError, from_sources
from runcov_collector.store.database import PostgresDatabase, SqliteDatabase
from runcov_collector.testing import coverage_span, file_hits, trace_request

README = Path(__file__).resolve().parents[1] / "README.md"


def _collector_command() -> list[str]:
    """The installed ``runcov-collector`` script of this interpreter's environment."""
    script = Path(sys.executable).parent / "runcov-collector"
    if script.exists():
        return [str(script)]
    found = shutil.which("runcov-collector")
    return [found] if found else [sys.executable, "-m", "runcov_collector"]


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}
    # The ports from the environment, so that a case may set them there instead.
    ports = {"RUNCOV_COLLECTOR_HTTP_PORT": "0", "RUNCOV_COLLECTOR_GRPC_PORT": "-1"}
    store = f"sqlite:///{tmp_path}/c.db"
    return subprocess.run(
        [*_collector_command(), "serve", "--no-auth", "--store", store, *args],
        capture_output=True,
        text=True,
        env={**clean, **ports, **(env or {})},
        timeout=30,
    )


# (arguments, environment, the whole message after "runcov-collector: ")
START_ERRORS = [
    pytest.param(
        ("--store-timeout", "1e10"),
        {},
        "--store-timeout (RUNCOV_COLLECTOR_STORE_TIMEOUT) must be > 0 seconds and at most 3600, "
        "not 10000000000",
        id="store-timeout-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_STORE_TIMEOUT": "3601"},
        "RUNCOV_COLLECTOR_STORE_TIMEOUT in the environment (--store-timeout) must be > 0 seconds "
        "and at most 3600, not 3601",
        id="store-timeout-environment",
    ),
    pytest.param(
        ("--migration-timeout", "1e10"),
        {},
        "--migration-timeout (RUNCOV_COLLECTOR_MIGRATION_TIMEOUT) must be >= 0 seconds "
        "(0: no limit) and at most 604800 (7 days), not 10000000000",
        id="migration-timeout-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_MIGRATION_TIMEOUT": "604801"},
        "RUNCOV_COLLECTOR_MIGRATION_TIMEOUT in the environment (--migration-timeout) must be "
        ">= 0 seconds (0: no limit) and at most 604800 (7 days), not 604801",
        id="migration-timeout-environment",
    ),
    pytest.param(
        ("--http-port", "70000"),
        {},
        "--http-port (RUNCOV_COLLECTOR_HTTP_PORT) must be a port number from 0 to 65535, "
        "not 70000",
        id="http-port-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_HTTP_PORT": "99999"},
        "RUNCOV_COLLECTOR_HTTP_PORT in the environment (--http-port) must be a port number "
        "from 0 to 65535, not 99999",
        id="http-port-environment",
    ),
    pytest.param(
        # The argument wins: the environment's bad value is never looked at.
        ("--grpc-port", "70000"),
        {"RUNCOV_COLLECTOR_GRPC_PORT": "99999"},
        "--grpc-port (RUNCOV_COLLECTOR_GRPC_PORT) must be -1 (off) or a port number from 0 to "
        "65535, not 70000",
        id="argument-beats-environment",
    ),
    pytest.param(
        ("--grpc-port", "-2"),
        {},
        "--grpc-port (RUNCOV_COLLECTOR_GRPC_PORT) must be -1 (off) or a port number from 0 to "
        "65535, not -2",
        id="grpc-port-argument",
    ),
    pytest.param(
        ("--http-port", "4317", "--grpc-port", "4317"),
        {},
        "--http-port (RUNCOV_COLLECTOR_HTTP_PORT) and --grpc-port (RUNCOV_COLLECTOR_GRPC_PORT) "
        "are both 4317: the HTTP and gRPC listeners need a port each (--grpc-port -1 turns "
        "gRPC off)",
        id="ports-equal",
    ),
    pytest.param(
        ("--max-inflight-ingests", "0"),
        {},
        "--max-inflight-ingests (RUNCOV_COLLECTOR_MAX_INFLIGHT_INGESTS) must be at least 1, "
        "not 0",
        id="max-inflight-ingests-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_MAX_INFLIGHT_INGESTS": "-3"},
        "RUNCOV_COLLECTOR_MAX_INFLIGHT_INGESTS in the environment (--max-inflight-ingests) must "
        "be at least 1, not -3",
        id="max-inflight-ingests-environment",
    ),
    pytest.param(
        ("--header-timeout", "0"),
        {},
        "--header-timeout (RUNCOV_COLLECTOR_HEADER_TIMEOUT) must be > 0 seconds and at most "
        "3600, not 0",
        id="header-timeout-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_MAX_CONNECTIONS": "0"},
        "RUNCOV_COLLECTOR_MAX_CONNECTIONS in the environment (--max-connections) must be at "
        "least 1, not 0",
        id="max-connections-environment",
    ),
    pytest.param(
        ("--metrics-max-releases", "-1"),
        {},
        "--metrics-max-releases (RUNCOV_COLLECTOR_METRICS_MAX_RELEASES) must be at least 0, "
        "not -1",
        id="metrics-max-releases-argument",
    ),
    pytest.param(
        ("--max-body-bytes", "0"),
        {},
        "--max-body-bytes (RUNCOV_COLLECTOR_MAX_BODY_BYTES) must be from 1 to 1073741824 "
        "(1 GiB), not 0",
        id="max-body-bytes-argument",
    ),
    pytest.param(
        # Past gRPC's int: the gRPC server could not even be created.
        (),
        {"RUNCOV_COLLECTOR_MAX_BODY_BYTES": "3000000000"},
        "RUNCOV_COLLECTOR_MAX_BODY_BYTES in the environment (--max-body-bytes) must be from 1 "
        "to 1073741824 (1 GiB), not 3000000000",
        id="max-body-bytes-environment",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_RETENTION_HOURS": "-5"},
        "RUNCOV_COLLECTOR_RETENTION_HOURS in the environment (--retention-hours) must be "
        ">= 0 hours (0: keep everything) and at most 876000 (100 years), not -5",
        id="retention-hours-environment",
    ),
    pytest.param(
        # The retention sweep would fail at every interval (an infinite cutoff).
        ("--retention-hours", "1e306"),
        {},
        "--retention-hours (RUNCOV_COLLECTOR_RETENTION_HOURS) must be >= 0 hours "
        "(0: keep everything) and at most 876000 (100 years), not 1e+306",
        id="retention-hours-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_HTTP_PORT": "http"},
        "RUNCOV_COLLECTOR_HTTP_PORT in the environment (--http-port) must be an integer, "
        "not 'http'",
        id="environment-not-a-number",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_STORE_TIMEOUT": "soon"},
        "RUNCOV_COLLECTOR_STORE_TIMEOUT in the environment (--store-timeout) must be a number, "
        "not 'soon'",
        id="environment-not-a-float",
    ),
    pytest.param(
        ("--source-dir", "/nonexistent/runcov-src"),
        {},
        "--source-dir (RUNCOV_COLLECTOR_SOURCE_DIR) '/nonexistent/runcov-src' is not a "
        "directory",
        id="source-dir-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_SOURCE_DIR": "/nonexistent/runcov-src"},
        "RUNCOV_COLLECTOR_SOURCE_DIR in the environment (--source-dir) "
        "'/nonexistent/runcov-src' is not a directory",
        id="source-dir-environment",
    ),
    pytest.param(
        ("--log-level", "bogus"),
        {},
        "--log-level (RUNCOV_COLLECTOR_LOG_LEVEL) must be one of CRITICAL, ERROR, WARNING, "
        "INFO, DEBUG, not 'bogus'",
        id="log-level-argument",
    ),
    pytest.param(
        (),
        {"RUNCOV_COLLECTOR_LOG_LEVEL": "loud"},
        "RUNCOV_COLLECTOR_LOG_LEVEL in the environment (--log-level) must be one of CRITICAL, "
        "ERROR, WARNING, INFO, DEBUG, not 'loud'",
        id="log-level-environment",
    ),
]


@pytest.mark.parametrize(("args", "env", "message"), START_ERRORS)
def test_a_bad_value_is_refused_at_start_naming_the_option_and_its_variable(
    tmp_path, args, env, message
):
    result = _serve(tmp_path, *args, env=env)
    assert (result.returncode, result.stderr) == (2, f"runcov-collector: {message}\n")
    assert result.stdout == ""
    assert not (tmp_path / "c.db").exists()  # refused before the store was opened


def test_internal_field_names_never_appear_in_messages_about_options():
    """Every value an option sets is named by the option, whichever check refuses it."""
    bad: dict[str, Any] = {
        "http_port": 70000,
        "grpc_port": -5,
        "store_url": "",
        "store_timeout_seconds": 0.0,
        "migration_timeout_seconds": -1.0,
        "max_body_bytes": 2**31,
        "max_inflight_ingests": 0,
        "retention_hours": float("nan"),
        "log_level": "shout",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError) as caught:
            Config(no_auth=True, **{name: value}).validate()
        option = "--store" if name == "store_url" else None
        message = str(caught.value)
        assert name not in message, message
        assert message.startswith(option or "--"), message
        assert "(RUNCOV_COLLECTOR_" in message, message


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("retention_interval_seconds", float("nan"), "must be > 0 seconds and at most 86400"),
        ("retention_interval_seconds", 1e10, "must be > 0 seconds and at most 86400"),
        ("metrics_cache_seconds", -1.0, "must be >= 0 seconds and at most 86400"),
        ("metrics_cache_seconds", float("nan"), "must be >= 0 seconds and at most 86400"),
        ("retry_after_seconds", 2**63, "must be a whole number of seconds from 0 to 3600"),
        ("retry_after_seconds", 1.5, "must be a whole number of seconds from 0 to 3600"),
        ("store_threads", 0, "must be at least 1"),
    ],
)
def test_settings_without_an_option_are_named_by_their_field(name, value, message):
    """Only code sets these: the ``Config`` field is their name."""
    with pytest.raises(ConfigError, match=f"^{name} {re.escape(message)}, not "):
        Config(no_auth=True, **{name: value}).validate()


def test_the_loader_says_where_each_value_came_from():
    env = {"RUNCOV_COLLECTOR_STORE_TIMEOUT": "7200", "RUNCOV_COLLECTOR_HTTP_PORT": "5000"}
    with pytest.raises(ConfigError, match=r"^RUNCOV_COLLECTOR_STORE_TIMEOUT in the environment "):
        from_sources({"no_auth": True}, env).validate()
    # The argument replaces the environment's value, and the message names the argument.
    with pytest.raises(ConfigError, match=r"^--store-timeout \(RUNCOV_COLLECTOR_STORE_TIMEOUT\) "):
        from_sources({"no_auth": True, "store_timeout_seconds": 4000.0}, env).validate()
    config = from_sources({"no_auth": True, "store_timeout_seconds": 30.0}, env).validate()
    assert (config.store_timeout_seconds, config.http_port) == (30.0, 5000)
    # Tokens from the environment are named as such, their values never printed.
    env = {"RUNCOV_COLLECTOR_INGEST_TOKEN": "in gest", "RUNCOV_COLLECTOR_QUERY_TOKEN": "q"}
    with pytest.raises(ConfigError) as caught:
        from_sources({}, env).validate()
    assert str(caught.value).startswith(
        "RUNCOV_COLLECTOR_INGEST_TOKEN in the environment (--ingest-token) contains a space"
    )
    assert "in gest" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "largest", "past"),
    [
        ("store_timeout_seconds", 3600.0, 3600.5),
        ("migration_timeout_seconds", 604800.0, 604800.5),
        ("retention_hours", 876000.0, 876000.5),
        ("max_body_bytes", 1 << 30, (1 << 30) + 1),
    ],
)
def test_the_largest_value_is_accepted_and_the_next_refused(name, largest, past):
    assert getattr(Config(no_auth=True, **{name: largest}).validate(), name) == largest
    with pytest.raises(ConfigError, match=r"at most|from 1 to"):
        Config(no_auth=True, **{name: past}).validate()


def test_the_store_refuses_limits_past_the_bounds_too(tmp_path):
    """Code opening a store directly cannot pass a limit the waits overflow on either."""
    with pytest.raises(ValueError, match="at most 3600"):
        SqliteDatabase(str(tmp_path / "t.db"), timeout=1e10)
    db = SqliteDatabase(str(tmp_path / "t.db"), timeout=3600)
    with pytest.raises(ValueError, match="at most 604800"), db.maintenance(1e10):
        pass
    with db.maintenance(604800), db.transaction(write=True) as conn:
        assert conn.query("SELECT 1") == [(1,)]
    db.close()


def test_a_collector_at_the_largest_timeouts_stores_and_answers(tmp_path):
    """The largest store and migration timeouts flow into every wait (connection slots, SQLite's
    write lock and busy timeout, the migration) without overflowing: ingest and query work."""
    config = Config(
        no_auth=True,
        http_port=0,
        grpc_port=-1,
        store_url=f"sqlite:///{tmp_path / 'c.db'}",
        store_timeout_seconds=3600.0,
        migration_timeout_seconds=604800.0,
        retention_hours=876000.0,
        max_body_bytes=1 << 30,
    )
    collector = Collector(config).start()
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{collector.http_port}", timeout=60)
        body = trace_request([coverage_span("GET /", [file_hits("a.py", [3])])])
        headers = {"content-type": "application/x-protobuf"}
        answer = client.post("/v1/traces", content=body.SerializeToString(), headers=headers)
        assert (answer.status_code, answer.content) == (200, b"")
        assert collector.expire_once() == 0  # the sweep's cutoff, 100 years back, is valid
        assert client.get("/readyz").status_code == 200
        releases = client.get("/api/v1/releases", params={"service": "shop"}).json()
        assert len(releases["releases"]) == 1
    finally:
        collector.stop()


def test_postgresql_limits_at_the_largest_timeouts_fit_libpq_and_the_server():
    """``statement_timeout`` is an int of milliseconds on the server (at most 2^31 - 1, some 24.8
    days), ``connect_timeout`` whole seconds: the largest limits stay within both."""
    db = PostgresDatabase("postgresql://u@127.0.0.1:1/db", timeout=3600.0)
    sent: list[str] = []

    class Raw:
        def execute(self, sql: str) -> None:
            sent.append(sql)

    db._begin(Raw(), True, time.monotonic() + 604800.0)
    (limit,) = re.findall(r"statement_timeout = (\d+)", sent[0])
    assert 604_000_000 < int(limit) <= 604_800_000 < 2**31 - 1
    assert db._connection_parameters(time.monotonic() + 604800.0)["connect_timeout"] == 3600


def test_every_option_of_serve_is_in_the_readme_with_its_variable():
    table = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(--[a-z-]+)` \| `?([A-Z_]+|—)", README.read_text(), re.M)
    }
    serve = cli.build_parser()._subparsers._group_actions[0].choices["serve"]
    options = {
        option
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert options == set(table)
    for option, variable in table.items():
        assert variable == "RUNCOV_COLLECTOR_" + option[2:].upper().replace("-", "_"), option
