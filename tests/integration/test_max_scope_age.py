"""A sampled request still running after ``max_scope_seconds`` stops being measured: what it
ran until then is exported when its span ends, marked ``runcov.scope.expired``, the expiry is
counted, and the code it armed runs unarmed for everyone else meanwhile."""

from __future__ import annotations

import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from runcov.tracing._scope import _current
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps import jobs
from tests.integration.apps.shop import logic
from tests.integration.conftest import AgentFactory, exported, oracle
from tests.integration.otlp import wait_for

#: The agent's maximum scope age in these tests (seconds).
AGE = 1.0


def armed_for_everyone(core: Any, fn: Any) -> bool:
    """Whether ``fn``'s code makes every thread running it pay for exact scopes (the sysmon
    core's LINE event, 3.11's armed exact probes; False for the per-thread tracer)."""
    if core.name == "sysmon":
        mon = sys.monitoring  # type: ignore[attr-defined]
        return bool(mon.get_local_events(core.tool_id, fn.__code__) & mon.events.LINE)
    if getattr(core, "exact_by_probes", False):
        return bool(core._probes.exact_armed)
    return False


def test_a_request_open_past_the_max_age_is_exported_marked_with_what_ran_before(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    early = oracle(lambda: jobs.settle([1, 2]))
    later = oracle(lambda: jobs.settle([3]))
    agent = start_agent(
        endpoints=["consumer orders*"], metrics_interval=3600, max_scope_seconds=AGE
    )
    assert agent.core.max_scope_age == AGE
    tracer = app_provider.get_tracer("queue")
    span = tracer.start_span("orders process", kind=SpanKind.CONSUMER)
    scope: Any = _current.get()
    try:
        with trace.use_span(span, end_on_exit=False):
            assert jobs.settle([1, 2]) == 24
            armed_before = armed_for_everyone(agent.core, logic.price)
            wait_for(lambda: scope.expired, timeout=30.0)
            # The request runs on, unmeasured, and the code is disarmed for everyone meanwhile.
            logic.check_stock(3)
            logic.price(4, 10)
            wait_for(lambda: not armed_for_everyone(agent.core, logic.price), timeout=30.0)
    finally:
        span.end()
    cut = span.get_span_context().trace_id
    with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER) as each:
        jobs.settle([3])
    following = each.get_span_context().trace_id

    by_trace = exported(agent, sink, [cut, following])
    assert (by_trace[cut].lines, by_trace[cut].arcs) == early
    assert (by_trace[following].lines, by_trace[following].arcs) == later
    marks = {
        s.trace_id: s.attributes.get("runcov.scope.expired") for s in sink.coverage_spans()
    }
    assert marks == {cut: True, following: None}
    if agent.core.name == "sysmon" or getattr(agent.core, "exact_by_probes", False):
        assert armed_before
    points = sink.wait_for(lambda: sink.metric_points().get("runcov.scopes.expired"))
    assert [p[:2] for p in points][-1:] == [({"runcov.endpoint": "consumer orders process"}, 1)]


def test_the_max_age_is_the_agents_while_it_runs(start_agent: AgentFactory) -> None:
    """The default is 60 s; 0 means no limit; stopping the agent leaves the core without one
    (a ``capture_coverage`` block after it is never cut)."""
    import runcov

    agent = start_agent()
    core = agent.core
    assert core.max_scope_age == 60.0
    runcov.stop()
    assert core.max_scope_age == 0.0
    start_agent(max_scope_seconds=0)
    assert core.max_scope_age == 0.0
