"""``runcov run``'s framework hooks under real servers (uvicorn, gunicorn).

Django under ASGI is measured as under WSGI; a request is measured and counted once whatever
layers see it (an application that sets up OpenTelemetry itself, Starlette applications
mounted in one another); a mounted application's routes are named by their full templates.
Each service runs in a subprocess and exports over OTLP to the receiver in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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

from runcov.middleware import RuncovASGIMiddleware
from tests.agent import otlp_sink
from tests.agent.otlp_sink import HTTPSink, attributes
from tests.integration.conftest import APPS, AgentFactory, exported, traceparent
from tests.integration.otlp import TraceCoverage, coverage_by_trace
from tests.integration.test_zero_code import BIN, _env

#: The span id of the caller in every ``traceparent`` these tests send.
CALLER = 0xABCDEF


def _loopback_port() -> int:
    """A free loopback port in 31100-31999, the range of the servers these tests start."""
    for port in random.sample(range(31100, 32000), 900):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port in 31100-31999")


@contextlib.contextmanager
def _receiver() -> Iterator[HTTPSink]:
    """The suite's OTLP/HTTP test receiver, on a port of :func:`_loopback_port`."""
    port = _loopback_port()
    server = otlp_sink.ThreadingHTTPServer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            otlp_sink,
            "ThreadingHTTPServer",
            lambda address, handler: server((address[0], port), handler),
        )
        receiver = HTTPSink()
    with receiver:
        yield receiver


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    """The suite's ``sink`` (which ``start_agent`` exports to), on a port of that range."""
    with _receiver() as receiver:
        yield receiver


@pytest.fixture
def services(tmp_path: Path) -> Path:
    """A temp dir (the source root) holding ``shop/`` and the services of hooked_servers.py."""
    shutil.copytree(APPS / "shop", tmp_path / "shop")
    shutil.copy(APPS / "hooked_servers.py", tmp_path / "hooked_servers.py")
    return tmp_path


def _server(kind: str, target: str, port: int) -> list[str]:
    """The command serving ``target`` (a factory of hooked_servers.py) on ``port``."""
    if kind == "uvicorn":
        return [
            str(BIN / "uvicorn"), "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", f"hooked_servers:{target}",
        ]
    return [
        str(BIN / "gunicorn"), "--workers", "1", "--bind", f"127.0.0.1:{port}",
        f"hooked_servers:{target}()",
    ]


@contextlib.contextmanager
def _runcov_run(kind: str, target: str, receiver: HTTPSink, source: Path) -> Iterator[str]:
    """``runcov run -- <server>`` serving ``target``; yields its base URL once it listens.
    Metrics go out every half second (uvicorn re-raises SIGTERM once it has shut down, so the
    process dies without the agent's exit flush); coverage every 100 ms."""
    port = _loopback_port()
    command = [str(BIN / "runcov"), "run", "--source", str(source), "--",
               *_server(kind, target, port)]
    env = _env(
        receiver, source, RUNCOV_METRICS_INTERVAL="0.5", OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRICS_EXPORTER="otlp",
    )
    proc = subprocess.Popen(
        command, env=env, cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # listening (no request: it would be counted)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _get(url: str, paths: list[str], trace_ids: list[int]) -> list[int]:
    """One request per path, each in its own trace; the status codes."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        return [
            client.get(path, headers={"traceparent": traceparent(trace_id, CALLER)}).status_code
            for path, trace_id in zip(paths, trace_ids)
        ]


def _counts(receiver: HTTPSink, name: str) -> dict[str, int]:
    """The last value of the cumulative counter ``name`` per endpoint, summed over the
    processes that sent it."""
    with receiver.lock:
        requests = list(receiver.metric_requests)
    last: dict[tuple[Any, str], int] = {}
    for request in requests:
        for rm in request.resource_metrics:
            instance = attributes(rm.resource.attributes).get("service.instance.id")
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in getattr(metric, metric.WhichOneof("data")).data_points:
                        endpoint = attributes(point.attributes)["runcov.endpoint"]
                        value = getattr(point, point.WhichOneof("value"))
                        last[(instance, endpoint)] = int(value)
    out: dict[str, int] = {}
    for (_, endpoint), value in last.items():
        out[endpoint] = out.get(endpoint, 0) + value
    return out


def _settled_counts(receiver: HTTPSink, name: str, at_least: int) -> dict[str, int]:
    """:func:`_counts` once they add up to ``at_least`` and two more exports came in (a
    request is counted when it ends, which can be after its response reached the client)."""
    receiver.wait_for(lambda: sum(_counts(receiver, name).values()) >= at_least, timeout=15)
    with receiver.lock:
        seen_exports = len(receiver.metric_requests)
    receiver.wait_for(lambda: len(receiver.metric_requests) >= seen_exports + 2, timeout=15)
    return _counts(receiver, name)


def _coverage(receiver: HTTPSink, trace_ids: list[int]) -> dict[int, TraceCoverage]:
    """The coverage of every trace in ``trace_ids``, once complete."""
    return receiver.wait_for(
        lambda: (t := coverage_by_trace(receiver.coverage_spans()))
        and all(i in t and t[i].complete for i in trace_ids)
        and t,
        timeout=15,
    )


# -- Django under ASGI ----------------------------------------------------------------------

#: Two sync views (item 13 is sold out: another branch), an async one, a 404.
DJANGO_PATHS = ["/items/12", "/items/13", "/async-items/14", "/nowhere"]
DJANGO_ENDPOINTS = [
    "GET /items/<int:item_id>", "GET /items/<int:item_id>", "GET /async-items/<int:item_id>",
]
DJANGO_SEEN = {"GET /items/<int:item_id>": 2, "GET /async-items/<int:item_id>": 1, "GET": 1}


def _line_of(path: Path, text: str) -> int:
    [number] = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return number


def test_django_under_asgi_is_measured_as_under_wsgi(services: Path) -> None:
    """uvicorn serving Django's ASGI application: each request exports what the same request
    exports under gunicorn (WSGI), the sync view's work in Django's thread executor
    included, and is counted once under the same endpoint."""
    measured: dict[str, tuple[list[TraceCoverage], dict[str, int]]] = {}
    for kind, target, base in [
        ("gunicorn", "django_wsgi", 0xD1A5610),
        ("uvicorn", "django_asgi", 0xD1A5A60),
    ]:
        trace_ids = [base + n for n in range(len(DJANGO_PATHS))]
        with _receiver() as receiver, _runcov_run(kind, target, receiver, services) as url:
            assert _get(url, DJANGO_PATHS, trace_ids) == [200, 200, 200, 404]
            by_trace = _coverage(receiver, trace_ids[:3])
            seen = _settled_counts(receiver, "runcov.requests.seen", at_least=4)
        measured[kind] = ([by_trace[t] for t in trace_ids[:3]], seen)

    wsgi, wsgi_seen = measured["gunicorn"]
    asgi, asgi_seen = measured["uvicorn"]
    assert [c.endpoint for c in asgi] == DJANGO_ENDPOINTS
    assert [c.status_class for c in asgi] == ["2xx"] * 3
    assert all(c.parent_span_id == CALLER for c in asgi)
    sync_view = _line_of(services / "hooked_servers.py", "JsonResponse(logic.describe(item_id, 1))")
    assert sync_view in asgi[0].lines["hooked_servers.py"]  # run in the executor's thread
    sold_out = _line_of(services / "shop" / "logic.py", 'return {"item": item_id, "stock": 0')
    assert [sold_out in c.lines["shop/logic.py"] for c in asgi] == [False, True, False]
    for under_asgi, under_wsgi in zip(asgi, wsgi):
        assert under_asgi.endpoint == under_wsgi.endpoint
        assert (under_asgi.lines, under_asgi.arcs) == (under_wsgi.lines, under_wsgi.arcs)
    assert asgi_seen == wsgi_seen == DJANGO_SEEN


# -- an application that sets up OpenTelemetry itself -----------------------------------------


#: The endpoint of the item views, in Flask's and Django's route syntax and in FastAPI's.
RULE, ROUTE = "GET /items/<int:item_id>", "GET /items/{item_id}"


@pytest.mark.parametrize(
    ("kind", "target", "endpoint"),
    [
        pytest.param("gunicorn", "flask_with_own_opentelemetry", RULE, id="flask"),
        pytest.param("gunicorn", "django_wsgi_with_own_opentelemetry", RULE, id="django-wsgi"),
        pytest.param("uvicorn", "django_asgi_with_own_opentelemetry", RULE, id="django-asgi"),
        pytest.param("uvicorn", "fastapi_with_own_opentelemetry", ROUTE, id="fastapi"),
        pytest.param(
            "uvicorn", "fastapi_instrumented_with_own_opentelemetry", ROUTE,
            id="fastapi-instrumented",
        ),
    ],
)
def test_a_request_is_measured_and_counted_once_when_the_app_sets_up_opentelemetry(
    sink: HTTPSink, services: Path, kind: str, target: str, endpoint: str
) -> None:
    """The application sets an SDK tracer provider after the hooks went in, and its framework's
    requests get server spans (OpenTelemetry's instrumentation, or FastAPI's own tracing):
    the span processor measures each request, under its server span, and counts it; the
    framework hook steps aside."""
    trace_ids = [0x5E1F0 + n for n in range(4)]
    with _runcov_run(kind, target, sink, services) as url:
        assert _get(url, [f"/items/{n + 12}" for n in range(4)], trace_ids) == [200] * 4
        by_trace = _coverage(sink, trace_ids)
        seen = _settled_counts(sink, "runcov.requests.seen", at_least=4)
        sampled = _counts(sink, "runcov.requests.sampled")
    assert seen == {endpoint: 4}
    assert sampled == {endpoint: 4}
    assert len(sink.coverage_spans()) == 4
    for trace_id in trace_ids:
        assert by_trace[trace_id].endpoint == endpoint
        assert "shop/logic.py" in by_trace[trace_id].lines
        # Under the request's server span (the span processor), not the caller's span.
        assert by_trace[trace_id].parent_span_id not in (0, CALLER)


# -- mounted applications -----------------------------------------------------------------

#: Requests to the mounted service and the endpoint each is measured and counted under: the
#: route's full template. The last one, a path the mounted application does not route, is
#: counted (its coverage is empty: nothing of the source root ran).
MOUNTED = [
    ("/items/3", "GET /items/{item_id}"),
    ("/v1/things/4", "GET /v1/things/{thing_id}"),
    ("/v2/things/4", "GET /v2/things/{thing_id}"),
    ("/api/users/5", "GET /api/users/{user_id}"),
    ("/t/acme/items/6", "GET /t/{tenant}/items/{item_id}"),
    ("/v2/nowhere", "GET /v2/{path}"),
]
#: The requests FastAPI routes all the way (the last is a plain Starlette mount's route).
FASTAPI_ROUTED = [0, 1, 2, 3, 5]


def _fastapi_mounted(services: Path) -> Any:
    """The mounted service of hooked_servers.py, built in this process."""
    sys.path.insert(0, str(services))
    try:
        import hooked_servers

        return hooked_servers.fastapi_mounted()
    finally:
        sys.path.remove(str(services))
        for name in ("hooked_servers", "shop", "shop.logic"):
            sys.modules.pop(name, None)


def _asgi_get(app: Any, paths: list[str], trace_ids: list[int]) -> None:
    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path, trace_id in zip(paths, trace_ids):
                await client.get(path, headers={"traceparent": traceparent(trace_id, CALLER)})

    asyncio.run(drive())


def test_mounted_applications_are_measured_once_under_their_full_route(
    sink: HTTPSink, services: Path
) -> None:
    """FastAPI with a FastAPI app mounted twice, a router included with a prefix and a plain
    Starlette mount: every request is measured and counted once (the outer application's hook
    measures it, the mounted application's steps aside), under its route's full template."""
    paths = [path for path, _ in MOUNTED]
    trace_ids = [0x3047ED0 + n for n in range(len(MOUNTED))]
    with _runcov_run("uvicorn", "fastapi_mounted", sink, services) as url:
        assert _get(url, paths, trace_ids) == [200] * 5 + [404]
        by_trace = _coverage(sink, trace_ids[:5])
        seen = _settled_counts(sink, "runcov.requests.seen", at_least=len(MOUNTED))
        sampled = _counts(sink, "runcov.requests.sampled")
    assert sum(seen.values()) == len(MOUNTED)  # once each
    assert sum(sampled.values()) == 5  # (the 404 ran nothing of the source root)
    assert len(sink.coverage_spans()) == 5
    assert [by_trace[t].endpoint for t in trace_ids[:5]] == [e for _, e in MOUNTED[:5]]
    assert all(by_trace[t].status_class == "2xx" for t in trace_ids[:5])
    assert seen == {endpoint: 1 for _, endpoint in MOUNTED}


def test_mounted_routes_are_named_as_fastapis_own_tracing_names_them(
    services: Path, app_spans: Any
) -> None:
    """The endpoints above are the ``http.route`` of the server spans FastAPI's own tracing
    makes for the same requests (its SDK tracer provider set), so that selectors written for
    either work for both. (FastAPI cannot see into a plain Starlette mount's routing: it names
    that request ``/t/{tenant}/{path}``.)"""
    pytest.importorskip("fastapi.telemetry", reason="a FastAPI without its own tracing")
    trace_ids = [0xFA57A0 + n for n in FASTAPI_ROUTED]
    _asgi_get(_fastapi_mounted(services), [MOUNTED[n][0] for n in FASTAPI_ROUTED], trace_ids)
    routes = {
        span.context.trace_id: f"{span.attributes['http.request.method']} "
        f"{span.attributes['http.route']}"
        for span in app_spans.get_finished_spans()
        if span.kind.name == "SERVER"
    }
    assert [routes[t] for t in trace_ids] == [MOUNTED[n][1] for n in FASTAPI_ROUTED]


def test_the_asgi_middleware_names_mounted_routes_by_their_full_template(
    start_agent: AgentFactory, sink: HTTPSink, services: Path
) -> None:
    """The same names through :class:`RuncovASGIMiddleware` put around the application."""
    agent = start_agent(source=[str(services)])
    trace_ids = [0x3D1A0 + n for n in range(len(MOUNTED))]
    _asgi_get(RuncovASGIMiddleware(_fastapi_mounted(services)), [p for p, _ in MOUNTED], trace_ids)
    by_trace = exported(agent, sink, trace_ids[:5])
    assert [by_trace[t].endpoint for t in trace_ids[:5]] == [e for _, e in MOUNTED[:5]]


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "flush-off"])
def test_what_is_measured_leaves_when_uvicorn_is_stopped_by_sigterm(
    sink: HTTPSink, services: Path, flush: bool
) -> None:
    """uvicorn, stopped by SIGTERM, shuts down gracefully, restores the handler it found and
    raises SIGTERM again: with its default action the process would end without exit hooks,
    and what the agent still held (coverage waiting for its round, metrics between exports)
    would be lost. runcov's handler sends it first; the process still ends by SIGTERM."""
    port = _loopback_port()
    command = [str(BIN / "runcov"), "run", "--source", str(services), "--",
               *_server("uvicorn", "fastapi_mounted", port)]
    env = _env(  # nothing leaves on its own while the test runs
        sink, services, RUNCOV_METRICS_INTERVAL="3600", OTEL_BSP_SCHEDULE_DELAY="3600000",
        OTEL_METRICS_EXPORTER="otlp", RUNCOV_FLUSH_ON_SIGTERM=str(flush).lower(),
    )
    proc = subprocess.Popen(
        command, env=env, cwd=services, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        trace_ids = [0x51C7E40 + n for n in range(3)]
        paths = ["/v1/things/3", "/api/users/5", "/v1/things/8"]
        assert _get(f"http://127.0.0.1:{port}", paths, trace_ids) == [200] * 3
        time.sleep(0.3)
        assert sink.coverage_spans() == [] and sink.metric_requests == []  # all still held
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr is not None:
            proc.stderr.close()
    assert returncode == -signal.SIGTERM, stderr  # ended by the signal, as without runcov
    if flush:
        by_trace = coverage_by_trace(sink.coverage_spans())
        assert sorted(by_trace) == trace_ids
        assert sum(_counts(sink, "runcov.requests.seen").values()) == 3
    else:
        assert sink.coverage_spans() == [] and sink.metric_requests == []
