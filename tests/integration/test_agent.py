"""The agent's life cycle and its promise never to break the service it runs in."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider

import runcov
from runcov.agent import Agent, current_agent
from runcov.config import load_config
from runcov.sampling import randomness, threshold
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.flask_app import create_app
from tests.integration.conftest import APPS, AgentFactory, exported, traceparent
from tests.integration.otlp import coverage_by_trace


def test_public_api() -> None:
    assert set(runcov.__all__) == {
        "start", "stop", "critical", "watch", "Agent", "Config", "RuncovError",
        "ConfigError", "__version__",
    }
    for name in runcov.__all__:
        assert getattr(runcov, name) is not None
    assert issubclass(runcov.ConfigError, runcov.RuncovError)


def test_one_agent_per_process(start_agent: AgentFactory) -> None:
    agent = start_agent()
    assert current_agent() is agent
    assert runcov.start() is agent  # no arguments: the running agent
    with pytest.raises(runcov.RuncovError, match="already running"):
        runcov.start(source=[str(APPS)], sample_rate=0.5)
    runcov.stop()
    assert current_agent() is None
    again = start_agent(sample_rate=0.5)
    assert again is not agent and again.running


def test_bad_configuration_fails_loudly_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOV_SAMPLE_RATE", "abc")
    with pytest.raises(runcov.ConfigError, match="RUNCOV_SAMPLE_RATE='abc'"):
        runcov.start(source=[str(APPS)])
    assert current_agent() is None


def test_disabled_agent_measures_nothing(start_agent: AgentFactory, sink: HTTPSink,
                                         app_provider: Any) -> None:
    agent = start_agent(enabled=False)
    assert not agent.running
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    assert app.test_client().get("/items/1").status_code == 200
    assert agent.flush(1.0)
    assert sink.raw == []


class _BrokenCore:
    """A tracing core that fails in every way it can."""

    name = "broken"

    def add_roots(self, roots: Any) -> None:
        pass

    def current_scope(self) -> None:
        return None

    def open_scope(self, **kwargs: Any) -> Any:
        raise RuntimeError("tracing exploded")


def test_tracing_errors_never_reach_the_application(sink: HTTPSink) -> None:
    config = load_config(source=[str(APPS)], sample_rate=1.0, max_per_second=0,
                         exporter_endpoint=sink.endpoint, metrics_interval=0)
    agent = Agent(config, core=_BrokenCore())
    agent._start()
    try:
        provider = TracerProvider()
        assert agent.attach(provider)
        app = create_app()
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        client = app.test_client()
        assert [client.get(f"/items/{i}").status_code for i in range(5)] == [200] * 5
        assert agent.internal_errors == 5
    finally:
        agent.stop()


def test_sampling_is_consistent_with_the_trace_id(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """At rate r exactly the traces whose randomness clears r's threshold are measured, so
    every service sampling at r picks the same traces."""
    agent = start_agent(sample_rate=0.3)
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    trace_ids = [(0x9E3779B97F4A7C15 * (i + 1)) % (1 << 128) for i in range(60)]
    for trace_id in trace_ids:
        client.get("/items/2", headers={"traceparent": traceparent(trace_id)})
    expected = {t for t in trace_ids if randomness(t) >= threshold(0.3)}
    assert 0 < len(expected) < len(trace_ids)
    by_trace = exported(agent, sink, sorted(expected))
    assert set(by_trace) == expected


def test_rate_cap_limits_sampled_requests(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    agent = start_agent(max_per_second=3, metrics_interval=60)
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    for i in range(40):
        client.get("/health", headers={"traceparent": traceparent(0xCA900 + i)})
    assert agent.flush(10.0)
    measured = coverage_by_trace(sink.coverage_spans())
    # A token bucket holding 3 tokens, refilled at 3/s while 40 requests run: most are capped.
    assert 3 <= len(measured) < 40
    points = sink.wait_for(lambda: sink.metric_points().get("runcov.requests.dropped"))
    capped = sum(v for a, v, _ in points if a["runcov.reason"] == "rate_cap")
    assert capped == 40 - len(measured)


def test_capped_requests_are_counted_off_the_request_path(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the rate cap turns away adds nothing to the metrics on its own path (under a
    cap most requests the rate picks are turned away); the export worker adds the counts of
    every thread, ended ones included, once per round: each request counted once."""
    import threading

    agent = start_agent(max_per_second=1, metrics_interval=3600)
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    on_request_path: list[str] = []
    real_dropped = agent.metrics.dropped

    def dropped(endpoint: str, reason: str, **kw: Any) -> None:
        if threading.current_thread().name != "runcov-exporter":
            on_request_path.append(reason)
        real_dropped(endpoint, reason, **kw)

    monkeypatch.setattr(agent.metrics, "dropped", dropped)

    def send(first: int) -> None:
        client = app.test_client()
        for i in range(30):
            client.get("/health", headers={"traceparent": traceparent(0xCA9000 + first + i)})

    ended = threading.Thread(target=send, args=(0,))
    ended.start()
    ended.join()
    workers = [threading.Thread(target=send, args=(100 * (k + 1),)) for k in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert agent.flush(10.0)
    measured = coverage_by_trace(sink.coverage_spans())
    assert 1 <= len(measured) < 20
    assert "rate_cap" not in on_request_path
    points = sink.wait_for(lambda: sink.metric_points().get("runcov.requests.dropped"))
    capped = sum(v for a, v, _ in points if a["runcov.reason"] == "rate_cap")
    assert capped == 4 * 30 - len(measured)


def test_requests_seen_are_counted_exactly_per_selected_endpoint(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """Every finished request of a selected endpoint counts once in ``runcov.requests.seen``,
    measured or not, whichever thread served it (threads that ended included); requests of
    endpoints no selector matches are not counted."""
    agent = start_agent(
        sample_rate=0.0, endpoints=["GET /items/*", "POST /orders"], metrics_interval=3600
    )
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)

    def send(n_items: int, n_orders: int, n_health: int) -> None:
        client = app.test_client()
        for i in range(n_items):
            client.get(f"/items/{i}")
        for _ in range(n_orders):
            client.post("/orders", json={"item": 1})
        for _ in range(n_health):
            client.get("/health")

    import threading

    first = threading.Thread(target=send, args=(7, 2, 3))
    first.start()
    first.join()  # ended before the metrics are collected: its counts must survive
    workers = [threading.Thread(target=send, args=(5, 1, 1)) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    send(1, 0, 4)
    assert agent.metrics.flush(10.0)
    points = sink.wait_for(lambda: sink.metric_points().get("runcov.requests.seen"))
    latest = {a["runcov.endpoint"]: v for a, v, _ in points}
    assert latest == {"GET /items/<int:item_id>": 7 + 15 + 1, "POST /orders": 2 + 3}
    # Made-up methods cannot grow the counts without bound.
    for i in range(5000):
        agent.seen(f"M{i}", "/made-up")
    assert 4096 <= len(agent._tally_local.tally.counts) <= 4097


def test_request_path_overhead_reaches_the_metrics_once_per_export_round(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time spent on request paths is summed per thread without a lock and handed to the
    ``runcov.overhead`` counter by the export worker: every second counted once, threads that
    ended included."""
    agent = start_agent(sample_rate=1.0, metrics_interval=3600)
    assert agent.exporter.on_round == agent._on_round
    told: list[float] = []
    monkeypatch.setattr(agent.metrics, "overhead", told.append)
    monkeypatch.setattr(agent.exporter, "on_round", None)  # this test plays the worker
    import threading

    ended = threading.Thread(target=agent._spend, args=(0.5,))
    ended.start()
    ended.join()
    agent._spend(0.25)
    agent._report_overhead()
    agent._spend(0.125)
    agent._report_overhead()
    agent._report_overhead()  # nothing new: nothing told
    assert told == [0.75, 0.125]
    # Real requests add their begin/finish time; the next report tells exactly that.
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    for i in range(5):
        client.get("/items/2", headers={"traceparent": traceparent(0x0E4D00 + i)})
    spent = agent._retired.spent + sum(tally.spent for _, tally in agent._tallies)
    assert spent > 0.875
    agent._report_overhead()
    assert told[2:] == [pytest.approx(spent - 0.875)]


@pytest.mark.usefixtures("fresh_core_after")
def test_census_mode_sends_first_hits_only(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    agent = start_agent(endpoints=["GET /items/*#census", "*"])
    agent.core.new_epoch()  # first hits count from here, whatever ran earlier in the process
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    for i, url in enumerate(["/items/3", "/items/3", "/items/13"]):
        client.get(url, headers={"traceparent": traceparent(0xCE450 + i)})
    by_trace = exported(agent, sink, [0xCE450, 0xCE452])
    # The second identical request ran nothing new in this process: it has nothing to send,
    # and is not even handed to the exporter.
    assert 0xCE451 not in by_trace
    assert agent.exporter.counters()["submitted"] == 2
    first, sold_out = by_trace[0xCE450], by_trace[0xCE452]
    assert first.mode == sold_out.mode == "census"
    assert not any(first.arcs.values()) and not any(sold_out.arcs.values())
    # Item 13 is sold out: only the lines of that branch were hit for the first time.
    assert sold_out.lines == {"shop/logic.py": {25, 33, 34}}
    assert first.lines["shop/logic.py"] >= {12, 13, 14, 15, 24, 26, 31, 32, 35}


@pytest.mark.usefixtures("fresh_core_after")
def test_census_by_span_covers_unsampled_traffic_without_a_scope(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """Where the core attributes first hits (sys.monitoring), census needs no scope per
    request: every request of the process counts, whatever the census rate, and each line goes
    to the trace that ran it first, as measured by the oracle."""
    from tests.integration.conftest import oracle

    # Census at a rate that samples none of these traces: it does not matter.
    agent = start_agent(endpoints=["GET /items/*#census@0.001"])
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    if not agent.core.attributes_census:
        assert agent.census_by_span is False  # settrace: a census scope per sampled request
        return
    assert agent.census_by_span is True
    ids = [0xCB00 + i for i in range(3)]
    assert all(randomness(t, None) < threshold(0.001) for t in ids)
    first_lines, _ = oracle(lambda: client.get("/items/3"))
    both_lines, _ = oracle(lambda: (client.get("/items/3"), client.get("/items/13")))
    agent.core.new_epoch()
    for trace_id, url in zip(ids, ["/items/3", "/items/3", "/items/13"]):
        client.get(url, headers={"traceparent": traceparent(trace_id)})
    from tests.integration.apps.shop import logic

    unattributed = agent.core.census_unattributed
    logic.health()  # outside any span: first hits of nobody, never sent
    assert agent.core.census_unattributed > unattributed
    by_trace = exported(agent, sink, [ids[0], ids[2]])
    assert ids[1] not in by_trace  # it ran nothing for the first time
    assert agent.exporter.counters()["submitted"] == 2
    assert agent.processor._in_flight == {}  # no ticket, no scope
    first, later = by_trace[ids[0]], by_trace[ids[2]]
    assert first.mode == later.mode == "census"
    assert first.endpoint == later.endpoint == "GET /items/<int:item_id>"
    assert first.lines == first_lines
    expected_later = {
        path: lines - first_lines.get(path, set()) for path, lines in both_lines.items()
    }
    assert later.lines == {path: lines for path, lines in expected_later.items() if lines}
    assert not any(first.arcs.values()) and not any(later.arcs.values())
    # Stopping the agent ends the census it turned on.
    runcov.stop()
    assert agent.core.census_owner is None
    assert agent.core.census_lines() == {}
    client.get("/items/3", headers={"traceparent": traceparent(0xCB10)})
    assert agent.core.census_pending == {} and agent.core.census_lines() == {}


@pytest.mark.usefixtures("fresh_core_after")
def test_census_by_span_forgets_unclaimed_hits_at_each_epoch_and_counts_them(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First hits that no request span claims (work in an internal span, or outside any
    trace) wait until their epoch ends; then they are forgotten, counted as dropped, and the
    next epoch records every line again."""
    import runcov.agent as agent_module
    from tests.integration.apps.shop import logic

    agent = start_agent(endpoints=["*#census"])
    if not agent.census_by_span:
        assert agent.core.name == "settrace"
        return
    agent.core.new_epoch()
    dropped: list[tuple[str, str, int]] = []
    monkeypatch.setattr(
        agent.metrics, "dropped", lambda e, r, count=1, **ids: dropped.append((e, r, count))
    )
    with app_provider.get_tracer("jobs").start_as_current_span("nightly") as job:
        logic.check_stock(3)  # an internal span: no request span will claim these
    logic.health()  # outside any trace
    assert job.get_span_context().trace_id in agent.core.census_pending
    agent._census_round()  # the epoch is not over: nothing happens
    assert dropped == [] and agent.core.census_pending
    monkeypatch.setattr(agent_module, "CENSUS_EPOCH_SECONDS", 0.0)
    agent._census_round()
    assert dropped == [("", "census_unclaimed", 2)]
    assert agent.core.census_pending == {} and agent.core.census_unattributed == 0
    # A new epoch: the same lines are first hits again, now claimed by a request.
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    app.test_client().get("/items/3", headers={"traceparent": traceparent(0xE90C)})
    by_trace = exported(agent, sink, [0xE90C])
    first = logic.check_stock.__code__.co_firstlineno
    assert {first + 2, first + 4} <= by_trace[0xE90C].lines["shop/logic.py"]


def test_consumer_spans_are_endpoints_named_after_the_span(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    from opentelemetry.trace import SpanKind

    from tests.integration.apps import jobs

    agent = start_agent(endpoints=["consumer orders*"], metrics_interval=60)
    tracer = app_provider.get_tracer("queue")
    with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER) as span:
        jobs.settle([1, 2])
    with tracer.start_as_current_span("refunds process", kind=SpanKind.CONSUMER):
        jobs.settle([3])
    ctx = span.get_span_context()
    by_trace = exported(agent, sink, [ctx.trace_id])
    assert [c.endpoint for c in by_trace.values()] == ["consumer orders process"]
    assert by_trace[ctx.trace_id].parent_span_id == ctx.span_id
    assert by_trace[ctx.trace_id].status_class == "ok"
    # The sampled counter carries the request's trace as an exemplar.
    points = sink.wait_for(lambda: sink.metric_points().get("runcov.requests.sampled"))
    exemplars = [e for _, _, ex in points for e in ex]
    assert any(int.from_bytes(e.trace_id, "big") == ctx.trace_id for e in exemplars)


def test_fast_threshold_follows_saturation(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an endpoint stops finding new arcs its rate decays to a tenth of its selector's,
    and the span processor's fast threshold follows it down (at the export worker's round): a
    request takes the full decision only if the endpoint's current rate could sample it, and
    the requests sampled are exactly those that rate picks. A request of an endpoint not seen
    before puts the threshold back at the highest rate at once."""
    from runcov.sampling import MAX_BOOST

    agent = start_agent(sample_rate=0.05, saturation=True, metrics_interval=3600)
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    highest = agent._span_threshold
    assert highest == threshold(0.05 * MAX_BOOST)
    endpoint = "GET /health"

    def health(trace_id: int) -> None:
        headers = {"traceparent": traceparent(trace_id)}
        assert client.get("/health", headers=headers).status_code == 200

    rng = random.Random(7)
    # Quiet sampled requests until the endpoint's rate is at its floor (0.05 / 10).
    for n in range(20_000):
        if agent._sampler.effective_rate(endpoint, 0.05) <= 0.005 + 1e-12:
            break
        health(rng.getrandbits(128))
        if n % 50 == 49:
            assert agent.flush(10.0)  # the worker observes the sampled requests
    else:
        raise AssertionError("the endpoint's rate never decayed")
    assert agent.flush(10.0)  # a round of the worker: the threshold follows
    lowered = agent._span_threshold
    assert lowered == threshold(0.005) > highest

    decided: list[int] = []
    real_decide = agent._sampler.decide

    def decide(trace_id: int, *args: Any) -> Any:
        decided.append(trace_id)
        return real_decide(trace_id, *args)

    monkeypatch.setattr(agent._sampler, "decide", decide)
    ids = [rng.getrandbits(128) for _ in range(3000)]
    first = len(sink.coverage_spans())
    for t in ids:
        health(t)
    assert agent.flush(10.0)
    picked = [t for t in ids if randomness(t) >= lowered]
    assert decided == picked  # the full decision only where the rate could sample
    assert 0 < len(picked) < 60
    by_trace = coverage_by_trace(sink.coverage_spans()[first:])
    assert set(by_trace) == set(picked)
    # A request without a route (decided before its route is known, kept at its end only if
    # its final endpoint's rate picks it) does not stop the threshold from following; as a
    # request this thread had not seen, it puts it back up before the next request.
    candidates = (rng.getrandbits(128) for _ in range(10_000))
    stray = next(t for t in candidates if randomness(t) >= lowered)
    before = len(decided)
    headers = {"traceparent": traceparent(stray)}
    assert client.get("/no/such/page", headers=headers).status_code == 404
    assert decided[before:] == [stray]
    assert agent._span_threshold == highest and not agent._keep_highest
    assert client.get("/items/1").status_code == 200
    assert agent._span_threshold == highest
    assert agent.flush(10.0)  # and it stays there while that endpoint has not been sampled
    assert agent._span_threshold == highest


def test_a_span_ended_on_another_thread_leaves_its_thread_sampling(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """A consumer's span started on one thread and ended by an acknowledgement on another
    closes its scope there; the thread it started on goes on sampling its next messages
    instead of taking them for work nested in a measured one."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    from tests.integration.apps import jobs

    agent = start_agent(endpoints=["consumer orders*"], metrics_interval=60)
    tracer = app_provider.get_tracer("queue")
    span = tracer.start_span("orders process", kind=SpanKind.CONSUMER)
    with trace.use_span(span, end_on_exit=False):
        jobs.settle([1, 2])
    with ThreadPoolExecutor(1) as acker:
        acker.submit(span.end).result()
    assert agent.core.current_scope() is None
    later = []
    for n in range(3):
        with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER) as each:
            jobs.settle([n])
        later.append(each.get_span_context().trace_id)
    first = span.get_span_context().trace_id
    by_trace = exported(agent, sink, [first, *later])
    assert all(by_trace[t].endpoint == "consumer orders process" for t in [first, *later])


def test_client_chosen_methods_name_no_endpoint_of_their_own() -> None:
    """A method is whatever a client sends: past the known ones it counts as ``_OTHER``, so
    endpoints, their counts and their metric series do not grow with what clients invent."""
    from opentelemetry.trace import SpanKind

    from runcov.middleware import known_method
    from runcov.otel.processor import request_identity

    assert [known_method(m) for m in ("GET", "PATCH", "ECRYVR", "get", None)] == [
        "GET", "PATCH", "_OTHER", "_OTHER", None,
    ]
    assert request_identity(SpanKind.SERVER, "x", {"http.method": "ECRYVR"}) == ("_OTHER", None)
    assert request_identity(SpanKind.SERVER, "x", {"http.request.method": "POST",
                                                   "http.route": "/a"}) == ("POST", "/a")


def test_nothing_is_measured_while_the_export_queue_is_full(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """A receiver too slow to keep up (or an export worker stuck on one) fills the bounded
    queue: requests sampled meanwhile are dropped (``queue_full``) before they are measured,
    so the service does not pay for coverage that cannot leave."""
    from opentelemetry.trace import SpanKind

    from tests.integration.apps import jobs

    agent = start_agent(endpoints=["consumer orders*"], metrics_interval=60)
    drops: list[tuple[str, str]] = []
    agent.metrics.dropped = lambda endpoint, reason, **_: drops.append((endpoint, reason))
    opened: list[Any] = []
    open_scope = agent.core.open_scope
    agent.core.open_scope = lambda *a, **k: opened.append(1) or open_scope(*a, **k)
    tracer = app_provider.get_tracer("queue")
    agent.exporter.is_full = lambda: True
    with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER):
        jobs.settle([1, 2])
    assert (opened, drops) == ([], [("consumer orders process", "queue_full")])
    del agent.exporter.is_full  # room again
    with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER) as span:
        jobs.settle([1, 2])
    assert opened == [1]
    trace_id = span.get_span_context().trace_id
    assert trace_id in exported(agent, sink, [trace_id])


def test_stopping_with_the_receiver_hanging_waits_one_budget(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    """Coverage and metrics share the stop's time budget: with the receiver hanging, a
    process exits after ``timeout`` seconds, not after one per signal."""
    import time

    from opentelemetry.trace import SpanKind

    from tests.integration.apps import jobs

    agent = start_agent(endpoints=["consumer orders*"], metrics_interval=60)
    tracer = app_provider.get_tracer("queue")
    with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER):
        jobs.settle([1, 2])
    sink.behaviour = "hang"
    started = time.monotonic()
    agent.stop(timeout=3.0)
    # (each part alone takes its whole budget against a hanging receiver: 6 s in all before)
    assert time.monotonic() - started < 5.0
    sink.release()  # the export worker's hung send ends, and with it the worker
    worker = agent.exporter._worker
    if worker is not None:
        worker.join(15)


def test_the_known_methods_follow_opentelemetry_s_setting() -> None:
    """``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` replaces the known methods, as it does for
    OpenTelemetry's instrumentations (a service with a ``PURGE`` endpoint names it)."""
    import os

    from tests.fresh import run_python

    env = dict(os.environ, OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS="GET, PURGE")
    script = (
        "from runcov.middleware import known_method as k; print(k('PURGE'), k('GET'), k('POST'))"
    )
    assert run_python("-c", script, env=env).stdout.split() == ["PURGE", "GET", "_OTHER"]
