"""``runcov agent``: a real agent in its own process measures a WSGI app through runcov's
middleware and exports its metrics over OTLP to the real collector; the CLI reads them back."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.cli import support
from tests.cli.conftest import INGEST, RunningCollector
from tests.fresh import environ_without, run_python

SERVICE = "metered"

APP = '''
def items(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"].endswith("/7"):
        return [b"seven"]
    return [b"item"]
'''

DRIVER = '''
import json, sys
import runcov
from runcov.middleware import RuncovWSGIMiddleware
sys.path.insert(0, {root!r})
import app

agent = runcov.start(
    source=[{root!r}], endpoints=["GET /items/{{item_id}}", "POST /orders"], sample_rate=1.0,
    max_per_second={cap}, saturation=False, service_name={service!r}, service_version="2.0",
    environment="test", exporter_endpoint={url!r},
    exporter_headers={{"authorization": "Bearer {token}"}}, metrics_interval=3600,
)
wsgi = RuncovWSGIMiddleware(app.items, route=lambda environ: "/items/{{item_id}}")
for i in range({requests}):
    environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/items/%d" % i, "wsgi.input": None}}
    b"".join(wsgi(environ, lambda status, headers, exc_info=None: None))
runcov.stop(30)
'''


def _run_agent(root: Path, collector: RunningCollector, requests: int, cap: float) -> None:
    (root / "app.py").write_text(textwrap.dedent(APP))
    script = DRIVER.format(
        root=str(root), cap=cap, service=SERVICE, url=collector.url, token=INGEST,
        requests=requests,
    )
    run_python("-c", script, env=environ_without(("RUNCOV_", "OTEL_")), timeout=120)


def test_agent_shows_what_a_real_agent_counted_and_dropped(
    collector: RunningCollector, tmp_path: Path
) -> None:
    # A cap of one sampled request per second: of 40 requests in well under a second or two,
    # a few are sampled and the rest turned away by the cap, counted as rate_cap drops.
    _run_agent(tmp_path, collector, requests=40, cap=1)
    proc = support.runcov("agent", "--service", SERVICE, "--format", "json", *collector.args())
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["release"]["version"] == "2.0" and doc["release"]["environment"] == "test"
    assert doc["processes"] == 1
    assert doc["requests_seen"] == 40
    dropped = doc["dropped_by_reason"]
    assert dropped["rate_cap"] >= 30
    assert doc["requests_sampled"] + dropped["rate_cap"] == 40
    assert doc["requests_dropped"] == sum(dropped.values())
    assert doc["overhead_seconds"] > 0
    (endpoint,) = doc["endpoints"]
    assert endpoint["endpoint"] == "GET /items/{item_id}"
    assert endpoint["requests_seen"] == 40
    assert endpoint["dropped_by_reason"]["rate_cap"] == dropped["rate_cap"]

    text = support.runcov("agent", "--service", SERVICE, *collector.args())
    assert text.returncode == 0, text.stderr
    assert f"Agents of {SERVICE} 2.0 (test, baseline): 1 process(es)" in text.stdout
    assert f"rate_cap {dropped['rate_cap']}" in text.stdout
    row = next(line for line in text.stdout.splitlines() if line.startswith("GET /items/"))
    assert row.split()[2:5] == ["40", str(doc["requests_sampled"]), str(dropped["rate_cap"])]


def test_agent_refuses_an_unknown_endpoint_and_a_window(
    collector: RunningCollector, tmp_path: Path
) -> None:
    _run_agent(tmp_path, collector, requests=3, cap=0)
    proc = support.runcov(
        "agent", "--service", SERVICE, "--endpoint", "GET /items/{id}", *collector.args()
    )
    assert proc.returncode == 2
    assert "unknown endpoint 'GET /items/{id}'" in proc.stderr
    assert "did you mean 'GET /items/{item_id}'?" in proc.stderr
    narrowed = support.runcov(
        "agent", "--service", SERVICE, "--endpoint", "GET /items/{item_id}", "--format", "json",
        *collector.args(),
    )
    assert narrowed.returncode == 0, narrowed.stderr
    doc = support.as_json(narrowed)
    assert [e["endpoint"] for e in doc["endpoints"]] == ["GET /items/{item_id}"]
    assert doc["requests_sampled"] == 3 and doc["requests_dropped"] == 0
    # Running totals have no window (see test_agent_has_no_time_window).
    windowed = support.runcov("agent", "--service", SERVICE, "--since", "1h", *collector.args())
    assert windowed.returncode == 2
    assert "--since" in windowed.stderr
    unknown = support.runcov("agent", "--service", "nobody", *collector.args())
    assert unknown.returncode == 2


def test_an_endpoint_of_a_release_whose_agents_sent_no_metrics_is_not_a_usage_error(
    collector: RunningCollector, tmp_path: Path
) -> None:
    """Metrics off (metrics_interval 0): the release and its endpoint are known from spans, and
    the answer is that its agents sent no metrics, with or without --endpoint (exit 0), not an
    "unknown endpoint" usage error listing no endpoint."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    script = DRIVER.format(
        root=str(tmp_path), cap=0, service=SERVICE, url=collector.url, token=INGEST, requests=2,
    ).replace("metrics_interval=3600", "metrics_interval=0")
    run_python("-c", script, env=environ_without(("RUNCOV_", "OTEL_")), timeout=120)
    endpoints = support.runcov("report", "--service", SERVICE, "--format", "json",
                               *collector.args())
    assert "GET /items/{item_id}" in endpoints.stdout, endpoints.stderr
    for narrowed in ([], ["--endpoint", "GET /items/{item_id}"]):
        proc = support.runcov("agent", "--service", SERVICE, *narrowed, *collector.args())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "the agents of metered 2.0 (test, baseline) have sent no metrics\n"


def test_agent_has_no_time_window() -> None:
    """--since/--until are refused by ``runcov agent`` itself, saying why, before the
    collector is asked: not with the usage of ``runcov`` and "unrecognized arguments"."""
    for window, given in ((["--since", "1h"], "--since"),
                          (["--until", "1h", "--since", "2h"], "--since/--until")):
        proc = support.runcov("agent", "--service", SERVICE, *window,
                              "--collector", "http://127.0.0.1:9")
        assert proc.returncode == 2
        assert proc.stderr == (
            f"runcov: runcov agent has no time window ({given} given): it shows the running "
            "totals the agents counted since they started; leave out --since/--until\n"
        )
