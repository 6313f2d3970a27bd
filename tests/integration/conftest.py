"""Fixtures: an OTLP receiver, the application's SDK tracer provider, a runcov agent, an oracle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import runcov
from runcov.agent import Agent
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import GRPCSink, HTTPSink
from tests.integration.otlp import TraceCoverage, coverage_by_trace

#: The source root of the in-process test services.
APPS = Path(__file__).resolve().parent / "apps"


def relative(data: dict[str, Any], root: Path = APPS) -> dict[str, Any]:
    """Re-key absolute paths as ``/``-separated paths relative to ``root`` (as runcov sends)."""
    base = os.path.realpath(root)
    out = {}
    for path, value in data.items():
        rel = os.path.relpath(os.path.realpath(path), base)
        if not rel.startswith(".."):
            out[rel.replace(os.sep, "/")] = set(value)
    return out


def nonempty(data: dict[str, set[Any]]) -> dict[str, set[Any]]:
    """Drop files with nothing recorded."""
    return {k: v for k, v in data.items() if v}


Sets = dict[str, set[Any]]


def reported(cap: Any, root: Path = APPS) -> tuple[Sets, Sets]:
    """The lines and arcs ``capture_coverage`` measured, as coverage.py reports them (its own
    ``translate_lines``/``translate_arcs``: statements' first lines, jumps out of ``with``
    blocks), which is what the agent exports; relative paths, empty files dropped."""
    from coverage.parser import PythonParser

    lines: Sets = {}
    arcs: Sets = {}
    for path in set(cap.lines) | set(cap.arcs):
        parser = PythonParser(filename=path)
        parser.parse_source()
        parser.arcs()  # the analysis that finds the with statements' exits
        lines[path] = parser.translate_lines(cap.lines.get(path, ()))
        arcs[path] = parser.translate_arcs(cap.arcs.get(path, ()))
    return nonempty(relative(lines, root)), nonempty(relative(arcs, root))


def oracle(run: Callable[[], Any], root: Path = APPS) -> tuple[Sets, Sets]:
    """Lines and arcs (relative paths) that ``run()`` executes under ``root``, measured by
    ``runcov.testing.capture_coverage`` and reported as coverage.py does (:func:`reported`); a
    runcov agent does not sample inside it."""
    with capture_coverage(source=[str(root)]) as cap:
        run()
    assert cap.traced
    return reported(cap, root)


def traceparent(trace_id: int, span_id: int = 0x1234567890ABCDEF) -> str:
    """A sampled W3C ``traceparent`` header for ``trace_id``."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``RUNCOV_*``/``OTEL_*`` setting of the machine may change what a test sees."""
    for name in list(os.environ):
        if name.startswith(("RUNCOV_", "OTEL_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def app_provider() -> TracerProvider:
    """The application's global SDK tracer provider (the global can be set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(provider, TracerProvider)
    return provider


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    """A real OTLP/HTTP receiver on loopback."""
    with HTTPSink() as s:
        yield s


@pytest.fixture
def grpc_sink() -> Iterator[GRPCSink]:
    """A real OTLP/gRPC receiver on loopback."""
    with GRPCSink() as s:
        yield s


AgentFactory = Callable[..., Agent]


@pytest.fixture
def start_agent(sink: HTTPSink, app_provider: TracerProvider) -> Iterator[AgentFactory]:
    """Start runcov measuring ``APPS``, exporting to ``sink``, every request sampled.

    Keyword arguments override the defaults; the agent is stopped after the test.
    """

    def start(**overrides: Any) -> Agent:
        options: dict[str, Any] = {
            "source": [str(APPS)],
            "exporter_endpoint": sink.endpoint,
            "sample_rate": 1.0,
            "max_per_second": 0,
            "saturation": False,
            "metrics_interval": 0,
            "service_name": "shop",
            "service_version": "1.0.0",
        }
        options.update(overrides)
        return runcov.start(**options)

    yield start
    runcov.stop(timeout=5.0)


def exported(agent: Agent, sink: Any, trace_ids: list[int]) -> dict[int, TraceCoverage]:
    """Flush the agent and wait until every trace in ``trace_ids`` arrived complete."""
    assert agent.flush(10.0)

    def arrived() -> dict[int, TraceCoverage] | None:
        by_trace = coverage_by_trace(sink.coverage_spans())
        if all(t in by_trace and by_trace[t].complete for t in trace_ids):
            return by_trace
        return None

    try:
        return sink.wait_for(arrived, timeout=30.0)  # type: ignore[no-any-return]
    except AssertionError as exc:
        # Say where the missing coverage went: the exporter's counters tell an empty scope
        # (nothing recorded) from a drop or an export failure.
        raise AssertionError(f"{exc}; exporter counters: {agent.exporter.counters()}") from exc


@pytest.fixture(params=["old", "stable"])
def semconv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Instrumentations created in the test use the old (``http.method``) or the stable
    (``http.request.method``, ``OTEL_SEMCONV_STABILITY_OPT_IN=http``) HTTP conventions."""
    from opentelemetry.instrumentation import _semconv

    stability = _semconv._OpenTelemetrySemanticConventionStability
    monkeypatch.setattr(stability, "_initialized", False)
    monkeypatch.setattr(stability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})
    if request.param == "stable":
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    stability._initialize()
    return str(request.param)


@pytest.fixture(scope="session")
def _app_span_exporter(app_provider: TracerProvider) -> Any:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    app_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def app_spans(_app_span_exporter: Any) -> Any:
    """The application's own finished spans during the test (an in-memory exporter)."""
    _app_span_exporter.clear()
    return _app_span_exporter


@pytest.fixture
def fresh_core_after() -> Iterator[None]:
    """Census mode arms first-hit recording process-wide: hand later tests a fresh core."""
    yield
    runcov.stop()
    from runcov.tracing import reset_core

    reset_core()
