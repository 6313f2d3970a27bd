"""The warning of an agent that no request reaches: ``runcov.start()`` in an application
with neither OpenTelemetry's SDK nor runcov's middleware measures nothing, and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys, time
import runcov, runcov.agent

runcov.agent.UNREACHED_AFTER = 0.5
case, source = sys.argv[1], sys.argv[2]
if case == "sdk":  # the application sets OpenTelemetry's SDK up (its spans reach runcov)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
runcov.start(source=[source], exporter_endpoint="http://127.0.0.1:9", metrics_interval=3600)
if case == "middleware":  # a plain WSGI application wrapped in runcov's middleware
    from werkzeug.test import Client
    from runcov.middleware import RuncovWSGIMiddleware

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    Client(RuncovWSGIMiddleware(app)).get("/")
if case == "later":  # the provider set after runcov started: runcov attaches to it then
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
time.sleep(2.5)  # the export worker's rounds: the check runs 0.5 s after start
runcov.stop(0.5)
"""


@pytest.mark.parametrize(
    "case, warned", [("none", True), ("sdk", False), ("middleware", False), ("later", False)]
)
def test_an_agent_no_request_reaches_says_so_once(
    tmp_path: Path, case: str, warned: bool
) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), case, str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "no request has reached" in line]
    assert len(lines) == (1 if warned else 0), done.stderr
    if warned:
        assert "no OpenTelemetry SDK tracer provider" in lines[0]
        assert "runcov run" in lines[0] and "RuncovASGIMiddleware" in lines[0]
