"""The command line and configuration: precedence, refusing to start without auth, serving as a
real process, graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from runcov_collector import cli
from runcov_collector.config import Config, ConfigError, from_sources
from runcov_collector.testing import ServerProcess, coverage_span, file_hits, trace_request


def test_arguments_beat_environment_beat_defaults():
    env = {
        "RUNCOV_COLLECTOR_HTTP_PORT": "5000",
        "RUNCOV_COLLECTOR_INGEST_TOKEN": "from-env",
        "RUNCOV_COLLECTOR_NO_AUTH": "true",
        "RUNCOV_COLLECTOR_RETENTION_HOURS": "48",
    }
    config = from_sources({"http_port": 6000, "grpc_port": None}, env)
    assert config.http_port == 6000  # argument
    assert config.ingest_token == "from-env"  # environment
    assert config.no_auth is True
    assert config.retention_hours == 48.0
    assert config.grpc_port == 4317  # default
    assert config.max_body_bytes == 16 * 1024 * 1024


def test_bad_environment_values_fail_loudly():
    with pytest.raises(
        ConfigError,
        match=r"^RUNCOV_COLLECTOR_HTTP_PORT in the environment \(--http-port\) must be an "
        "integer, not 'http'$",
    ):
        from_sources({}, {"RUNCOV_COLLECTOR_HTTP_PORT": "http"})
    with pytest.raises(
        ConfigError,
        match=r"^RUNCOV_COLLECTOR_NO_AUTH in the environment \(--no-auth\) must be 1, true, "
        r"yes or on \(0, false, no, off or empty: off\), not 'perhaps'$",
    ):
        from_sources({}, {"RUNCOV_COLLECTOR_NO_AUTH": "perhaps"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "refusing to start without authentication"),
        ({"ingest_token": "a"}, "refusing to start without authentication"),
        (
            {"no_auth": True, "http_port": 70000},
            r"--http-port \(RUNCOV_COLLECTOR_HTTP_PORT\) must be a port number from 0 to 65535, "
            "not 70000",
        ),
        (
            {"no_auth": True, "max_body_bytes": 0},
            r"--max-body-bytes \(RUNCOV_COLLECTOR_MAX_BODY_BYTES\) must be from 1 to",
        ),
        ({"no_auth": True, "retention_hours": -1}, "--retention-hours .* must be >= 0 hours"),
        ({"no_auth": True, "retention_hours": float("nan")}, "must be >= 0 hours .*, not nan$"),
        ({"no_auth": True, "retention_hours": float("inf")}, "at most 876000 .*, not inf$"),
        (
            {"no_auth": True, "retention_interval_seconds": float("nan")},
            "^retention_interval_seconds must be > 0 seconds and at most 86400, not nan$",
        ),
        (
            {"no_auth": True, "source_dir": "/nonexistent/runcov-src"},
            r"^--source-dir \(RUNCOV_COLLECTOR_SOURCE_DIR\) '/nonexistent/runcov-src' is not a "
            "directory$",
        ),
        (
            {"no_auth": True, "ingest_token": "i", "query_token": "q"},
            r"--no-auth \(RUNCOV_COLLECTOR_NO_AUTH\) cannot be combined with --ingest-token "
            r"\(RUNCOV_COLLECTOR_INGEST_TOKEN\) and --query-token \(RUNCOV_COLLECTOR_QUERY_TOKEN\)",
        ),
        ({"no_auth": True, "query_token": "q"}, "cannot be combined with --query-token"),
        (
            {"ingest_token": "i", "query_token": "q\u00fcery"},
            r"--query-token \(RUNCOV_COLLECTOR_QUERY_TOKEN\) contains a non-ASCII character: "
            "a token must consist of visible ASCII characters",
        ),
        ({"ingest_token": "in gest", "query_token": "q"}, "--ingest-token .* contains a space"),
        ({"ingest_token": "i", "query_token": "q\x7f"}, "contains a control character"),
        (
            {"no_auth": True, "http_port": 4317},
            r"--http-port \(RUNCOV_COLLECTOR_HTTP_PORT\) and --grpc-port "
            r"\(RUNCOV_COLLECTOR_GRPC_PORT\) are both 4317: the HTTP and gRPC listeners need a "
            "port each",
        ),
    ],
)
def test_validation_messages(values, message):
    with pytest.raises(ConfigError, match=message):
        Config(**values).validate()


def test_cli_options_map_to_config(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("RUNCOV_COLLECTOR_"):
            monkeypatch.delenv(name)
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "-1",
            "--store",
            "sqlite:///x.db",
            "--ingest-token",
            "i",
            "--query-token",
            "q",
            "--max-body-bytes",
            "1000",
            "--retention-hours",
            "12",
            "--source-dir",
            str(tmp_path),
            "--trace-url-template",
            "https://t.example/{trace_id}",
        ]
    )
    config = cli.config_from_args(args)
    assert (config.http_port, config.grpc_port, config.store_url) == (0, -1, "sqlite:///x.db")
    assert (config.ingest_token, config.query_token, config.no_auth) == ("i", "q", False)
    assert (config.max_body_bytes, config.retention_hours) == (1000, 12.0)
    assert (config.source_dir, config.trace_url_template) == (
        str(tmp_path),
        "https://t.example/{trace_id}",
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}


def test_server_refuses_to_start_without_tokens(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runcov_collector",
            "serve",
            "--store",
            f"sqlite:///{tmp_path}/c.db",
        ],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to start without authentication" in result.stderr
    assert "--no-auth" in result.stderr
    assert not (tmp_path / "c.db").exists()


def test_serves_and_stops_on_sigterm_after_finishing_in_flight_requests(tmp_path):
    db = tmp_path / "c.db"
    env = {**_clean_env(), "RUNCOV_COLLECTOR_NO_AUTH": "1"}
    server = ServerProcess("--grpc-port", "0", "--store", f"sqlite:///{db}", env=env)
    try:
        client = httpx.Client(base_url=server.base, timeout=60)
        assert client.get("/healthz").json() == {"status": "ok"}
        body = trace_request([coverage_span("GET /", [file_hits("a.py", [3])])]).SerializeToString()
        headers = {"content-type": "application/x-protobuf"}
        assert client.post("/v1/traces", content=body, headers=headers).status_code == 200

        # An ingest in flight when SIGTERM arrives still completes and is acknowledged.
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        answers: list[int] = []
        body2 = trace_request(
            [coverage_span("GET /", [file_hits("a.py", [4])])]
        ).SerializeToString()
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{server.base}/v1/traces", content=body2, headers=headers, timeout=60
                ).status_code
            )
        )
        sender.start()
        while "runcov_collector_ingests_in_flight 1" not in client.get("/metrics").text:
            threading.Event().wait(0.01)
        server.proc.send_signal(signal.SIGTERM)
        # Once the listener is closed, let the store commit.
        while True:
            try:
                httpx.get(f"{server.base}/healthz", timeout=5)
            except httpx.TransportError:
                break
        blocker.execute("COMMIT")
        blocker.close()
        sender.join(60)
        assert answers == [200]
        assert server.wait() == 0
        client.close()
    finally:
        server.stop()
    # Both acknowledged batches are in the database.
    check = ServerProcess("--grpc-port", "-1", "--store", f"sqlite:///{db}", env=env)
    try:
        detail = httpx.get(
            f"{check.base}/api/v1/file", params={"service": "shop", "path": "a.py"}
        ).json()
        assert [line for line, _, _ in detail["lines"]] == [3, 4]
    finally:
        check.proc.send_signal(signal.SIGINT)
        assert check.wait() == 0


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "runcov-collector"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == "runcov-collector 0.1.0"


def test_unusable_store_url_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "runcov_collector", "serve", "--no-auth", "--store", "mysql://x"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert "unsupported store URL 'mysql://x'" in result.stderr


def test_create_app_serves_and_closes_its_store_on_shutdown(tmp_path):
    import socket

    import uvicorn

    from runcov_collector.app import create_app

    app = create_app(Config(no_auth=True, store_url=f"sqlite:///{tmp_path / 'app.db'}"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.01)
        body = trace_request([coverage_span("GET /", [file_hits("a.py", [9])])]).SerializeToString()
        response = httpx.post(
            f"{base}/v1/traces", content=body, headers={"content-type": "application/x-protobuf"}
        )
        assert response.status_code == 200
        detail = httpx.get(f"{base}/api/v1/file", params={"service": "shop", "path": "a.py"})
        assert [line for line, _, _ in detail.json()["lines"]] == [9]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    with pytest.raises(RuntimeError, match="the store is closed"):
        app.state.store.services()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runcov_collector", "serve", "--grpc-port", "-1", *args],
        capture_output=True,
        text=True,
        env={**_clean_env(), **(env or {})},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("--ingest-token", "i", "--query-token", "q"),
            {"RUNCOV_COLLECTOR_NO_AUTH": "1"},
            "RUNCOV_COLLECTOR_NO_AUTH in the environment (--no-auth) cannot be combined with "
            "--ingest-token (RUNCOV_COLLECTOR_INGEST_TOKEN) and --query-token "
            "(RUNCOV_COLLECTOR_QUERY_TOKEN)",
        ),
        (
            ("--no-auth", "--ingest-token", "i", "--query-token", "q"),
            {},
            "--no-auth (RUNCOV_COLLECTOR_NO_AUTH) cannot be combined with --ingest-token "
            "(RUNCOV_COLLECTOR_INGEST_TOKEN) and --query-token (RUNCOV_COLLECTOR_QUERY_TOKEN)",
        ),
        (
            ("--no-auth",),
            {"RUNCOV_COLLECTOR_INGEST_TOKEN": "i", "RUNCOV_COLLECTOR_QUERY_TOKEN": "q"},
            "--no-auth (RUNCOV_COLLECTOR_NO_AUTH) cannot be combined with "
            "RUNCOV_COLLECTOR_INGEST_TOKEN in the environment (--ingest-token) and "
            "RUNCOV_COLLECTOR_QUERY_TOKEN in the environment (--query-token)",
        ),
    ],
)
def test_tokens_together_with_no_auth_refuse_to_start(tmp_path, args, env, message):
    result = _serve("--store", f"sqlite:///{tmp_path}/c.db", *args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"runcov-collector: {message}: require tokens or run ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--log-level", "bogus"),
            "--log-level (RUNCOV_COLLECTOR_LOG_LEVEL) must be one of CRITICAL, ERROR, WARNING",
        ),
        (
            ("--retention-hours", "nan"),
            "--retention-hours (RUNCOV_COLLECTOR_RETENTION_HOURS) must be >= 0 hours",
        ),
        (("--retention-hours", "inf"), "and at most 876000 (100 years), not inf"),
        (("--source-dir", "/nonexistent/runcov-src"), "is not a directory"),
    ],
)
def test_bad_option_values_are_a_clean_error_at_start(tmp_path, args, message):
    result = _serve("--no-auth", "--store", f"sqlite:///{tmp_path}/c.db", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("runcov-collector: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (
            ("--ingest-token", "i", "--query-token", "q\u00fcery"),
            {},
            "--query-token (RUNCOV_COLLECTOR_QUERY_TOKEN)",
        ),
        (
            (),
            {"RUNCOV_COLLECTOR_INGEST_TOKEN": "i", "RUNCOV_COLLECTOR_QUERY_TOKEN": "q\u00fcery"},
            "RUNCOV_COLLECTOR_QUERY_TOKEN in the environment (--query-token)",
        ),
    ],
)
def test_a_token_that_is_not_visible_ascii_refuses_to_start(tmp_path, args, env, named):
    """Such a token would pass with HTTP Basic and fail as a bearer token (or in gRPC
    metadata): the collector says so at start instead, without printing the token."""
    result = _serve("--store", f"sqlite:///{tmp_path}/c.db", *args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"runcov-collector: {named} contains a non-ASCII character: a token must consist of "
        "visible ASCII characters"
    )
    assert "q\u00fcery" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.db").exists()


def test_log_level_names_are_accepted_in_any_case():
    assert cli.log_level("debug") == logging.DEBUG
    assert cli.log_level(" Warning ") == logging.WARNING


@pytest.mark.parametrize(
    "ports",
    [("--http-port", "5555", "--grpc-port", "5555"), ("--grpc-port", "4318")],
    ids=["arguments", "grpc-port-on-the-default-http-port"],
)
def test_http_and_grpc_on_one_port_are_refused_before_anything_starts(tmp_path, ports):
    result = subprocess.run(
        [sys.executable, "-m", "runcov_collector", "serve", "--no-auth",
         "--store", f"sqlite:///{tmp_path}/c.db", *ports],
        capture_output=True, text=True, env=_clean_env(), timeout=60,
    )
    port = ports[-1]
    assert result.returncode == 2
    assert result.stderr == (
        "runcov-collector: --http-port (RUNCOV_COLLECTOR_HTTP_PORT) and --grpc-port "
        f"(RUNCOV_COLLECTOR_GRPC_PORT) are both {port}: the HTTP and gRPC listeners need a port "
        "each (--grpc-port -1 turns gRPC off)\n"
    )
    assert not (tmp_path / "c.db").exists()


@pytest.mark.parametrize(("listener", "option"), [("HTTP", "http-port"), ("gRPC", "grpc-port")])
def test_a_port_in_use_names_the_listener_and_its_address(tmp_path, listener, option):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"http-port": "0", "grpc-port": "0", option: str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "runcov_collector", "serve", "--no-auth",
             "--store", f"sqlite:///{tmp_path}/c.db",
             *(arg for name, value in ports.items() for arg in (f"--{name}", value))],
            capture_output=True, text=True, env=_clean_env(), timeout=60,
        )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()  # the message alone (no log line of gRPC's core)
    assert line == (
        f"runcov-collector: cannot listen for {listener} on 127.0.0.1:{port}: the address is "
        f"already in use (another process, or another collector, listens on port {port}); "
        f"choose another --{option} (RUNCOV_COLLECTOR_{option.replace('-', '_').upper()})"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("999.1.1.1", "is neither an IP address nor a name that resolves"),
        ("runcov-no-such-host.invalid", "is neither an IP address nor a name that resolves"),
        ("192.0.2.1", "is not an address of this machine; check --host (RUNCOV_COLLECTOR_HOST)"),
    ],
)
def test_a_host_that_cannot_be_listened_on_names_the_host_and_option(tmp_path, host, problem):
    result = _serve("--no-auth", "--store", f"sqlite:///{tmp_path}/c.db",
                    env={"RUNCOV_COLLECTOR_HOST": host})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"runcov-collector: cannot listen for HTTP on {host}:4318: ")
    assert f"'{host}' " in line and problem in line
    if "resolve" in problem:
        assert "--host (RUNCOV_COLLECTOR_HOST)" in line
