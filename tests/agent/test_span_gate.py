"""The span processor's per-request path in C (``SpanGate``) decides and counts exactly as the
processor's Python methods do, and calls them for every case it does not decide itself."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

import runcov
from runcov.agent import Agent
from runcov.middleware import _Claim, _claim, _claimed
from runcov.otel.processor import RuncovSpanProcessor

#: Trace ids whose randomness (low 56 bits) is below / above every threshold used here.
LOW = 0x5EED0000000000000000000000000001
HIGH = 0x5EED00000000000000FFFFFFFFFFFFFF


@dataclass
class Case:
    name: str
    kind: SpanKind
    attributes: dict[str, Any]
    trace_id: int = LOW
    later: dict[str, Any] = field(default_factory=dict)  # set after the span started
    state: tuple[tuple[str, str], ...] = ()
    #: Whether the processor's Python on_start / on_end must run (else the gate decides).
    python_start: bool = False
    python_end: bool = False


CASES = [
    Case("stable", SpanKind.SERVER, {"http.request.method": "GET", "http.route": "/items/{id}"}),
    Case("old", SpanKind.SERVER, {"http.method": "GET", "http.route": "/items/{id}"}),
    Case("no route", SpanKind.SERVER, {"http.request.method": "GET"}),
    Case("other route", SpanKind.SERVER, {"http.request.method": "POST", "http.route": "/cart"}),
    Case(
        "django",
        SpanKind.SERVER,
        {"http.request.method": "GET"},
        later={"http.route": "items/<id>"},
        python_end=True,
    ),
    Case("client", SpanKind.CLIENT, {"http.request.method": "GET", "http.route": "/x"}),
    Case("internal", SpanKind.INTERNAL, {}),
    Case("consumer", SpanKind.CONSUMER, {"messaging.system": "kafka"}, python_end=True),
    Case("grpc", SpanKind.SERVER, {"rpc.system": "grpc"}, python_end=True),
    Case("int method", SpanKind.SERVER, {"http.request.method": 5}, python_end=True),
    Case(
        "empty method",
        SpanKind.SERVER,
        {"http.request.method": "", "http.method": "GET", "http.route": "/items/{id}"},
        python_end=True,
    ),
    Case(
        "sampled",
        SpanKind.SERVER,
        {"http.request.method": "GET", "http.route": "/items/{id}"},
        trace_id=HIGH,
        python_start=True,
        python_end=True,
    ),
    Case(
        "propagated",
        SpanKind.SERVER,
        {"http.request.method": "GET", "http.route": "/items/{id}"},
        state=(("ot", "th:0"),),
        python_start=True,
        python_end=True,
    ),
    Case(
        "vendor state",
        SpanKind.SERVER,
        {"http.request.method": "GET", "http.route": "/items/{id}"},
        state=(("vendor", "x"),),
    ),
    # Websocket spans (no method): OpenTelemetry's ASGI instrumentation's, FastAPI's own (the
    # route set after the start), one sampled.
    Case("websocket", SpanKind.SERVER, {"url.scheme": "ws", "http.route": "/ws/{room}"},
         python_end=True),
    Case(
        "websocket late route",
        SpanKind.SERVER,
        {"url.scheme": "ws", "network.protocol.name": "websocket"},
        later={"http.route": "/ws/{room}"},
        python_end=True,
    ),
    Case(
        "websocket sampled",
        SpanKind.SERVER,
        {"http.scheme": "wss", "http.route": "/ws/{room}"},
        trace_id=HIGH,
        python_start=True,
        python_end=True,
    ),
]


@pytest.fixture
def python_calls(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[tuple[str, str]]]:
    """Which spans reached the processor's Python methods, per processor (by id)."""
    calls: dict[int, list[tuple[str, str]]] = {}
    on_start, on_end = RuncovSpanProcessor.on_start, RuncovSpanProcessor.on_end

    def counted_start(
        self: RuncovSpanProcessor, span: Any, parent_context: Optional[Context] = None
    ) -> None:
        calls.setdefault(id(self), []).append(("start", span.name))
        on_start(self, span, parent_context)

    def counted_end(self: RuncovSpanProcessor, span: Any) -> None:
        calls.setdefault(id(self), []).append(("end", span.name))
        on_end(self, span)

    monkeypatch.setattr(RuncovSpanProcessor, "on_start", counted_start)
    monkeypatch.setattr(RuncovSpanProcessor, "on_end", counted_end)
    return calls


@pytest.fixture
def agent(tmp_path: object) -> Iterator[Agent]:
    started = runcov.start(
        source=[str(tmp_path)],
        endpoints=["GET /items/*", "POST /cart", "consumer *", "WEBSOCKET /ws/*"],
        sample_rate=0.01,
        saturation=False,
        max_per_second=0,
        metrics_interval=3600,
        exporter_endpoint="http://127.0.0.1:9",
    )
    yield started
    runcov.stop(timeout=1.0)


def _run(agent: Agent, processor: RuncovSpanProcessor, calls: list[Any]) -> dict[Any, int]:
    """Feeds every case's span through ``processor``; the requests it counted as seen."""
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    before = dict(getattr(agent._tally_local, "counts", {}))
    for case in CASES:
        parent = SpanContext(
            case.trace_id,
            0x42,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState(list(case.state)),
        )
        context = set_span_in_context(NonRecordingSpan(parent))
        span = tracer.start_span(
            case.name, kind=case.kind, attributes=case.attributes, context=context
        )
        for key, value in case.later.items():
            span.set_attribute(key, value)
        span.end()
    calls.append("--")
    after = agent._tally_local.counts
    return {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}


def _recording(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    begin, finish = agent.begin, agent.finish

    def recording_begin(method: Any, route: Any, trace_id: int, *args: Any, **kw: Any) -> Any:
        ticket = begin(method, route, trace_id, *args, **kw)
        calls.append(("begin", method, route, trace_id, ticket is not None))
        return ticket

    def recording_finish(ticket: Any, **kw: Any) -> None:
        details = sorted((k, v) for k, v in kw.items() if k != "parent_span_id")  # random
        calls.append(("finish", ticket.trace_id, details))
        finish(ticket, **kw)

    monkeypatch.setattr(agent, "begin", recording_begin)
    monkeypatch.setattr(agent, "finish", recording_finish)
    return calls


def _gate_on() -> bool:
    return os.environ.get("RUNCOV_ACCEL", "").strip() != "0"


def test_the_gate_is_used_unless_told_not_to(agent: Agent) -> None:
    expected = _gate_on()
    processor = RuncovSpanProcessor(agent)
    assert (type(processor.on_start).__name__ == "builtin_function_or_method") is expected
    assert (type(processor.on_end).__name__ == "builtin_function_or_method") is expected
    python = RuncovSpanProcessor(agent, accel=None)
    assert type(python.on_start).__name__ == "method"


def test_a_subclass_that_overrides_the_methods_sees_every_span(agent: Agent) -> None:
    class Seeing(RuncovSpanProcessor):
        def __init__(self, agent: Agent) -> None:
            self.names: list[str] = []
            super().__init__(agent)

        def on_end(self, span: Any) -> None:
            self.names.append(span.name)
            super().on_end(span)

    seeing = Seeing(agent)
    assert "on_end" not in seeing.__dict__ and "on_start" not in seeing.__dict__
    _run(agent, seeing, [])
    assert seeing.names == [case.name for case in CASES]


def test_gate_decides_and_counts_as_the_python_methods_do(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, python_calls: dict[int, list[Any]]
) -> None:
    if not _gate_on():
        pytest.skip("the gate is turned off (RUNCOV_ACCEL=0)")
    calls = _recording(agent, monkeypatch)
    # A first pass in Python meets every endpoint once: a thread's first request of an
    # endpoint is always counted in Python (a new key in its tally).
    _run(agent, RuncovSpanProcessor(agent, accel=None), calls)
    calls.clear()

    python = RuncovSpanProcessor(agent, accel=None)
    seen_python = _run(agent, python, calls)
    gated = RuncovSpanProcessor(agent)
    seen_gated = _run(agent, gated, calls)

    # The same requests counted, the same requests begun (and sampled), the same finished.
    assert seen_gated == seen_python
    assert seen_python[("GET", "/items/{id}")] == 6
    assert seen_python[("GET", None)] == 1
    assert seen_python[("WEBSOCKET", "/ws/{room}")] == 3
    first, second = calls[: calls.index("--")], calls[calls.index("--") + 1 : -1]
    assert second == first
    # sampled, propagated, websocket sampled
    assert [c[4] for c in first if c[0] == "begin"] == [True, True, True]
    assert len([c for c in first if c[0] == "finish"]) == 3
    # The gate called the Python methods for exactly the cases it leaves to them.
    assert [c for c in python_calls[id(python)] if c[0] == "start"] == [
        ("start", case.name) for case in CASES
    ]
    assert python_calls.get(id(gated), []) == [
        (part, case.name)
        for case in CASES
        for part, needed in (("start", case.python_start), ("end", case.python_end))
        if needed
    ]


def test_a_stopped_agent_is_decided_in_c_as_in_python(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, python_calls: dict[int, list[Any]]
) -> None:
    calls = _recording(agent, monkeypatch)
    _run(agent, RuncovSpanProcessor(agent, accel=None), calls)  # meets every endpoint
    agent.stop(timeout=1.0)
    calls.clear()
    python = RuncovSpanProcessor(agent, accel=None)
    gated = RuncovSpanProcessor(agent)
    assert _run(agent, python, calls) == {} == _run(agent, gated, calls)
    assert calls == ["--", "--"]
    if _gate_on():
        # Nothing reached Python but the ends of spans that are not plain HTTP requests.
        assert python_calls[id(gated)] == [
            ("end", name)
            for name in (
                "django", "consumer", "grpc", "int method", "empty method", "websocket",
                "websocket late route", "websocket sampled",
            )
        ]


@pytest.mark.parametrize("accel", [True, None], ids=["c", "python"])
def test_the_server_span_of_a_claimed_request_is_left_to_the_layer_that_claimed_it(
    agent: Agent,
    monkeypatch: pytest.MonkeyPatch,
    python_calls: dict[int, list[Any]],
    accel: Any,
) -> None:
    """A runcov middleware or hook outside OpenTelemetry's instrumentation claims the request
    (``runcov.middleware._claimed``); the server span started inside it is neither decided,
    measured nor counted by the span processor, wherever it ends. A claim accounts for that one
    span, of its own agent, while its layer runs: everything else is processed as usual."""
    if accel is True and not _gate_on():
        pytest.skip("the gate is turned off (RUNCOV_ACCEL=0)")
    calls = _recording(agent, monkeypatch)
    _run(agent, RuncovSpanProcessor(agent, accel=None), calls)  # meets every endpoint
    calls.clear()
    processor = RuncovSpanProcessor(agent, accel=accel)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    server = {"http.request.method": "GET", "http.route": "/items/{id}"}
    before = dict(agent._tally_local.counts)

    def start(name: str, trace_id: int, kind: SpanKind = SpanKind.SERVER) -> Any:
        parent = SpanContext(trace_id, 0x42, is_remote=True, trace_flags=TraceFlags(1))
        attributes = server if kind == SpanKind.SERVER else {"messaging.system": "kafka"}
        context = set_span_in_context(NonRecordingSpan(parent))
        return tracer.start_span(name, kind=kind, attributes=attributes, context=context)

    # Sampled, started and ended in the claimed request.
    claim, token = _claim(agent)
    start("claimed sampled", HIGH).end()
    # A consumer span in the claimed request is work of its own; a second server span under
    # the same claim (an in-process call to another service) is a request of its own.
    start("consumer in claim", HIGH, SpanKind.CONSUMER).end()
    start("second server span", HIGH).end()
    claim.release(token)

    # Unsampled, ended after the layer returned (OpenTelemetry's WSGI middleware ends its span
    # when the server closes the response).
    claim, token = _claim(agent)
    late = start("claimed unsampled", LOW)
    leaked = contextvars.copy_context()  # (a task the request started, outliving it)
    claim.release(token)
    late.end()
    # The claim's context outlived the request: the claim did not.
    leaked.run(lambda: start("leaked claim", HIGH).end())
    # Another agent's claim (a middleware given its own agent).
    other = _Claim(cast(Agent, object()))
    token = _claimed.set(other)
    start("other agent", HIGH).end()
    _claimed.reset(token)
    start("unclaimed", LOW).end()

    after = agent._tally_local.counts
    seen = {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}
    # second server span, leaked claim, other agent, unclaimed; the consumer.
    assert seen == {("GET", "/items/{id}"): 4, ("consumer", "consumer in claim"): 1}
    begun = [c[4] for c in calls if c[0] == "begin"]
    assert len(begun) == 4 and all(begun)  # the consumer, second, leaked, other agent
    assert len([c for c in calls if c[0] == "finish"]) == 4
    assert processor._in_flight == {}
    names = {name for _, name in python_calls.get(id(processor), [])}
    if accel is True:  # decided in C, at the start and at the end
        assert not names & {"claimed sampled", "claimed unsampled", "unclaimed"}
