"""runcov without code changes: ``opentelemetry-instrument``, ``runcov run``, gunicorn workers.

Each service runs in a real subprocess with its own interpreter and sends coverage over OTLP to
the receiver in the test.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.otlp_sink import HTTPSink
from tests.integration.conftest import APPS, reported
from tests.integration.otlp import coverage_by_trace

BIN = Path(sys.executable).parent
TRACE_IDS = [0x2E40C0DE0 + i for i in range(4)]


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A temp directory holding the services and ``shop/`` (the source root of the run)."""
    shutil.copytree(APPS / "shop", tmp_path / "shop")
    shutil.copy(APPS / "zero_code_app.py", tmp_path / "zero_code_app.py")
    shutil.copy(APPS / "gunicorn_app.py", tmp_path / "gunicorn_app.py")
    return tmp_path


def _env(sink: HTTPSink, source: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOV_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        RUNCOV_SOURCE=str(source),
        RUNCOV_SAMPLE_RATE="1",
        RUNCOV_MAX_PER_SECOND="0",
        RUNCOV_SATURATION="false",
        RUNCOV_METRICS_INTERVAL="0",
        RUNCOV_EXPORTER_ENDPOINT=sink.endpoint,
        # opentelemetry-distro defaults OTEL_EXPORTER_OTLP_PROTOCOL to grpc; runcov follows
        # the standard variables unless told otherwise.
        RUNCOV_EXPORTER_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="zero-code-shop",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    env.update(extra)
    return env


def _oracle(service_dir: Path) -> dict[int, tuple[Any, Any]]:
    """What each request of ``zero_code_app.main`` executes, measured in this process."""
    from runcov.testing import capture_coverage

    sys.path.insert(0, str(service_dir))
    try:
        module = importlib.import_module("zero_code_app")
        client = module.create_app().test_client()
        out = {}
        for n, trace_id in enumerate(TRACE_IDS):
            url = "/items/13" if n % 2 else f"/items/{n + 2}?q={n * 6}"
            with capture_coverage(source=[str(service_dir)]) as cap:
                assert client.get(url).status_code == 200
            out[trace_id] = reported(cap, service_dir)
        return out
    finally:
        sys.path.remove(str(service_dir))
        for name in ("zero_code_app", "shop", "shop.logic"):
            sys.modules.pop(name, None)


def _run(command: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert f"served {len(TRACE_IDS)}" in proc.stdout, proc.stderr


def _check_exported(sink: HTTPSink, service_dir: Path) -> None:
    by_trace = sink.wait_for(
        lambda: (t := coverage_by_trace(sink.coverage_spans()))
        and all(i in t and t[i].complete for i in TRACE_IDS)
        and t,
        timeout=30,
    )
    expected = _oracle(service_dir)
    for trace_id in TRACE_IDS:
        got = by_trace[trace_id]
        assert got.endpoint == "GET /items/<int:item_id>"
        assert (got.lines, got.arcs) == expected[trace_id]
        assert got.resources[0]["service.name"] == "zero-code-shop"


SCRIPT_ARGS = ["zero_code_app.py", *[f"{t:x}" for t in TRACE_IDS]]


def test_opentelemetry_instrument_picks_runcov_up(sink: HTTPSink, service_dir: Path) -> None:
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, *SCRIPT_ARGS]
    _run(command, _env(sink, service_dir), service_dir)
    _check_exported(sink, service_dir)


def test_opentelemetry_instrument_without_runcov_settings_leaves_runcov_off(
    sink: HTTPSink, service_dir: Path
) -> None:
    env = _env(sink, service_dir)
    del env["RUNCOV_SOURCE"]
    _run([str(BIN / "opentelemetry-instrument"), sys.executable, *SCRIPT_ARGS], env, service_dir)
    assert sink.raw == []


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("RUNCOV_ENABLED", "maybe", "RUNCOV_ENABLED='maybe': not a boolean"),
        ("RUNCOV_MODE", "fast", "RUNCOV_MODE='fast': not one of exact, census"),
    ],
)
def test_opentelemetry_instrument_with_a_bad_setting_serves_and_says_runcov_is_off(
    sink: HTTPSink, service_dir: Path, variable: str, value: str, reason: str
) -> None:
    """Under ``opentelemetry-instrument`` the service starts without runcov, and the log says
    why, whatever the bad value is (a misspelt ``RUNCOV_ENABLED`` too, not read as false)."""
    env = _env(sink, service_dir, **{variable: value})
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, *SCRIPT_ARGS], env=env,
        cwd=service_dir, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"served {len(TRACE_IDS)}" in proc.stdout, proc.stderr
    assert "runcov is off: " in proc.stderr and reason in proc.stderr, proc.stderr
    assert sink.raw == []


def test_runcov_run_measures_a_service_without_opentelemetry(
    sink: HTTPSink, service_dir: Path
) -> None:
    env = _env(sink, service_dir)
    del env["RUNCOV_SOURCE"]  # runcov run measures the current directory by default
    command = [sys.executable, "-m", "runcov", "run", "--", sys.executable, *SCRIPT_ARGS]
    _run(command, env, service_dir)
    _check_exported(sink, service_dir)


def test_runcov_run_chains_opentelemetry_instrument(sink: HTTPSink, service_dir: Path) -> None:
    command = [
        str(BIN / "runcov"), "run", "--source", str(service_dir), "--",
        str(BIN / "opentelemetry-instrument"), sys.executable, *SCRIPT_ARGS,
    ]
    _run(command, _env(sink, service_dir), service_dir)
    _check_exported(sink, service_dir)
    # Measured once per request, not by both the span processor and the framework hook.
    assert len(sink.coverage_spans()) == len(TRACE_IDS)


@pytest.mark.parametrize("launcher", ["runcov run", "opentelemetry-instrument"])
def test_the_applications_own_start_replaces_the_launchers_agent(
    sink: HTTPSink, service_dir: Path, launcher: str
) -> None:
    """An application that calls ``runcov.start(...)`` itself keeps working under a zero-code
    launcher: its arguments replace the agent the launcher started from the environment."""
    if launcher == "runcov run":
        command = [str(BIN / "runcov"), "run", "--source", str(service_dir), "--"]
    else:
        command = [str(BIN / "opentelemetry-instrument")]
    proc = subprocess.run(
        [*command, sys.executable, *SCRIPT_ARGS, "--own-start"], env=_env(sink, service_dir),
        cwd=service_dir, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "own start: GET /items/* False" in proc.stdout, proc.stdout + proc.stderr
    _check_exported(sink, service_dir)
    assert len(sink.coverage_spans()) == len(TRACE_IDS)  # measured once, by the new agent


def test_a_tracer_provider_set_after_start_is_attached(sink: HTTPSink, service_dir: Path) -> None:
    _run([sys.executable, *SCRIPT_ARGS, "--manual"], _env(sink, service_dir), service_dir)
    _check_exported(sink, service_dir)


def test_runcov_run_rejects_a_bad_setting_before_starting_the_command(
    sink: HTTPSink, service_dir: Path
) -> None:
    command = [
        sys.executable, "-m", "runcov", "run", "--sample-rate", "abc", "--",
        sys.executable, "-c", "print('started')",
    ]
    proc = subprocess.run(
        command, env=_env(sink, service_dir), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "started" not in proc.stdout
    assert "RUNCOV_SAMPLE_RATE='abc'" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["runcov run", "opentelemetry-instrument"])
def gunicorn(request: pytest.FixtureRequest, sink: HTTPSink, service_dir: Path) -> Iterator[str]:
    """gunicorn with 3 pre-forked workers, under ``runcov run`` (framework hooks) or under
    ``opentelemetry-instrument`` (span processor)."""
    port = _free_port()
    launcher = (
        [str(BIN / "runcov"), "run", "--"]
        if request.param == "runcov run"
        else [str(BIN / "opentelemetry-instrument")]
    )
    command = [
        *launcher, str(BIN / "gunicorn"), "--workers", "3",
        "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5", "gunicorn_app:app",
    ]
    env = _env(sink, service_dir, OTEL_BSP_SCHEDULE_DELAY="200")
    proc = subprocess.Popen(
        command, env=env, cwd=service_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(url + "/items/1", timeout=1.0)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_gunicorn_workers_each_export(sink: HTTPSink, gunicorn: str) -> None:
    pids: set[int] = set()
    trace_ids: list[int] = []
    with httpx.Client(base_url=gunicorn, timeout=10.0) as client:
        for n in range(600):
            trace_id = 0x6E7000000 + n
            headers = {"traceparent": f"00-{trace_id:032x}-{0xABCDEF:016x}-01"}
            # A new connection per request lets every worker's accept() take some.
            response = client.get(f"/items/{n % 20}", headers={**headers, "connection": "close"})
            assert response.status_code == 200
            pids.add(response.json()["pid"])
            trace_ids.append(trace_id)
            if len(pids) >= 2 and n >= 20:
                break
    assert len(pids) >= 2

    def instances() -> Any:
        by_trace = coverage_by_trace(sink.coverage_spans())
        ours = {t: c for t, c in by_trace.items() if t in trace_ids}
        ids = {r["service.instance.id"] for c in ours.values() for r in c.resources}
        return len(ids) >= len(pids) and ours

    ours = sink.wait_for(instances, timeout=60)
    assert all(c.endpoint == "GET /items/<int:item_id>" for c in ours.values())
    assert all("shop/logic.py" in c.lines for c in ours.values())


@pytest.mark.parametrize(
    ("framework", "endpoint"),
    [("django", "GET /items/<int:item_id>"), ("starlette", "GET /items/{item_id}")],
)
def test_runcov_run_hooks_django_and_starlette(
    sink: HTTPSink, service_dir: Path, framework: str, endpoint: str
) -> None:
    shutil.copy(APPS / "hooked_apps.py", service_dir / "hooked_apps.py")
    trace_ids = [0x4007ED0 + i for i in range(3)]
    command = [
        sys.executable, "-m", "runcov", "run", "--",
        sys.executable, "hooked_apps.py", framework, *[f"{t:x}" for t in trace_ids],
    ]
    proc = subprocess.run(
        command, env=_env(sink, service_dir), cwd=service_dir, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    by_trace = sink.wait_for(
        lambda: (t := coverage_by_trace(sink.coverage_spans()))
        and all(i in t and t[i].complete for i in trace_ids)
        and t,
        timeout=30,
    )
    for n, trace_id in enumerate(trace_ids):
        got = by_trace[trace_id]
        assert got.endpoint == endpoint
        assert got.status_class == "2xx"
        # Items 12 and 14 are priced; 13 is sold out: each trace has its own branch.
        assert (25 in got.lines["shop/logic.py"]) == (n == 1)
        assert (17 in got.lines["shop/logic.py"]) == (n != 1)


@pytest.mark.parametrize(
    ("framework", "endpoint"),
    [("django", "GET /items/<int:item_id>"), ("starlette", "GET /items/{item_id}")],
)
def test_hooked_requests_not_sampled_are_counted_as_seen(
    sink: HTTPSink, service_dir: Path, framework: str, endpoint: str
) -> None:
    """The hooks count a request that cannot be sampled (under the route the framework
    resolved during it) without measuring it; the sampled one is measured as usual."""
    shutil.copy(APPS / "hooked_apps.py", service_dir / "hooked_apps.py")
    low = 0x4007ED10000000000000000000000001  # randomness 1: not sampled at 50 %
    high = 0x4007ED100000000000FFFFFFFFFFFFFF  # randomness 2**56 - 1: sampled
    trace_ids = [low, high, low + 2]
    command = [
        sys.executable, "-m", "runcov", "run", "--",
        sys.executable, "hooked_apps.py", framework, *[f"{t:x}" for t in trace_ids],
    ]
    env = _env(
        sink,
        service_dir,
        RUNCOV_SAMPLE_RATE="0.5",
        RUNCOV_METRICS_INTERVAL="3600",  # sent once, when the process exits
        OTEL_METRICS_EXPORTER="otlp",
    )
    proc = subprocess.run(
        command, env=env, cwd=service_dir, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = sink.wait_for(
        lambda: [p for p in sink.metric_points().get("runcov.requests.seen", [])
                 if p[0].get("runcov.endpoint") == endpoint],
        timeout=30,
    )
    assert sum(value for _, value, _ in seen) == 3
    by_trace = sink.wait_for(
        lambda: (t := coverage_by_trace(sink.coverage_spans())) and high in t and t, timeout=30
    )
    assert set(by_trace) == {high}
    assert by_trace[high].endpoint == endpoint
