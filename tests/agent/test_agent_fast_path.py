"""The agent's fast "not sampled" path agrees with the full sampling rule."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry.trace import TraceState

import runcov
from runcov.agent import Agent
from runcov.sampling import randomness, threshold
from tests.fresh import environ_without, run_python


@pytest.fixture
def agent(tmp_path: object) -> Iterator[Agent]:
    started = runcov.start(
        source=[str(tmp_path)],
        endpoints=["GET /items/*", "POST /checkout@0.2"],
        sample_rate=0.01,
        saturation=False,
        max_per_second=0,
        metrics_interval=0,
        exporter_endpoint="http://127.0.0.1:9",
    )
    yield started
    runcov.stop(timeout=1.0)


@pytest.mark.parametrize(
    ("method", "route", "rate"), [("GET", "/items/{id}", 0.01), ("POST", "/checkout", 0.2)]
)
def test_begin_samples_exactly_the_traces_the_rule_picks(
    agent: Agent, method: str, route: str, rate: float
) -> None:
    rng = random.Random(7)
    picked = 0
    for _ in range(20_000):
        trace_id = rng.getrandbits(128)
        ticket = agent.begin(method, route, trace_id)
        expected = randomness(trace_id) >= threshold(rate)
        assert (ticket is not None) == expected, hex(trace_id)
        if ticket is not None:
            picked += 1
            agent.cancel(ticket)
    assert 0.5 * rate * 20_000 < picked < 1.5 * rate * 20_000


def test_a_propagated_decision_bypasses_the_fast_path(agent: Agent) -> None:
    # Randomness 0 would be rejected by any rate below 1, but an upstream threshold th=0
    # ("keep everything") in the ot tracestate entry is honoured.
    state = TraceState([("ot", "th:0")])
    ticket = agent.begin("GET", "/items/{id}", 0x1000000000000000, state)
    assert ticket is not None
    agent.cancel(ticket)


@pytest.mark.parametrize(
    ("entries", "sampled"),
    [((), False), ((("vendor", "x"),), False), ((("ot", "th:0"),), True)],
)
def test_the_span_processor_fast_path_reads_the_trace_state(
    agent: Agent, entries: tuple[tuple[str, str], ...], sampled: bool
) -> None:
    """The processor's inline "cannot sample" test: randomness 0 is rejected unless the
    parent's tracestate carries an ``ot`` entry that decides otherwise."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    provider = TracerProvider()
    assert agent.attach(provider)
    parent = SpanContext(
        0x1000000000000000,
        0x42,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState(list(entries)),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = provider.get_tracer("t").start_span(
        "GET /items/{id}",
        context=context,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "/items/{id}"},
    )
    try:
        assert (span.get_span_context().span_id in agent.processor._in_flight) is sampled
    finally:
        span.end()
    assert agent.processor._in_flight == {}


_AT_RATE_0 = """
import sys, time
import runcov
from opentelemetry.trace import TraceState

agent = runcov.start(source=[sys.argv[1]], endpoints=["*"], sample_rate=0, saturation=False,
                     max_per_second=0, metrics_interval=0, exporter_endpoint="http://127.0.0.1:9")
drops = []
agent.metrics.dropped = lambda endpoint, reason, **kw: drops.append(reason)
upstream = TraceState([("ot", "th:0")])  # sampled upstream: honoured at any local rate
print("prepared at start", agent.core.exact_prepared)
first = agent.begin("GET", "/items/{id}", 0x1000000000000000, upstream)
print("first measured", first is not None, drops)
deadline = time.monotonic() + 60
while not agent.core.exact_prepared and time.monotonic() < deadline:
    time.sleep(0.01)
second = agent.begin("GET", "/items/{id}", 0x1000000000000000, upstream)
print("then measured", second is not None, drops)
agent.cancel(second)
runcov.stop(timeout=1.0)
"""


def test_a_request_sampled_upstream_never_waits_for_the_preparation(tmp_path: object) -> None:
    """An agent at a rate of 0 leaves the code alone. The first request that a decision
    propagated from upstream samples does not pay for preparing exact scopes (probing the
    code on 3.11, watching it on 3.12+): that starts on a thread of its own, and the request
    is counted as dropped (``preparing``); the next ones are measured."""
    script = tmp_path / "at_rate_0.py"
    script.write_text(_AT_RATE_0)
    done = run_python(
        str(script), str(tmp_path), env=environ_without(("RUNCOV_", "OTEL_"))
    )
    out = done.stdout.splitlines()
    if out[0] == "prepared at start True":  # nothing to prepare (3.11 without the extension)
        assert out[1:] == ["first measured True []", "then measured True []"]
        return
    assert out == [
        "prepared at start False",
        "first measured False ['preparing']",
        "then measured True ['preparing']",
    ]
