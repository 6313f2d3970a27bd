"""``@runcov.critical`` and ``runcov.watch``: jobs measured like requests."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest
import wrapt

import runcov
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps import jobs
from tests.integration.conftest import APPS, AgentFactory, oracle, reported
from tests.integration.otlp import coverage_by_trace


def _coverage(agent: runcov.Agent, sink: HTTPSink, count: int) -> Any:
    assert agent.flush(10.0)
    return sink.wait_for(
        lambda: (t := coverage_by_trace(sink.coverage_spans())) and len(t) >= count and t
    )


def test_sync_and_async_critical_functions_are_measured_as_jobs(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    settle = runcov.critical(jobs.settle)
    restock = runcov.critical(name="stock.restock")(jobs.restock)
    assert asyncio.iscoroutinefunction(restock)
    assert settle([1, 2, 3]) == 38
    assert asyncio.run(restock(13)) == -1
    with pytest.raises(ValueError, match="job failed"):
        runcov.critical(jobs.failing)()
    by_endpoint = {t.endpoint: t for t in _coverage(agent, sink, 3).values()}
    assert set(by_endpoint) == {
        "job tests.integration.apps.jobs.settle",
        "job stock.restock",
        "job tests.integration.apps.jobs.failing",
    }
    lines, arcs = oracle(lambda: jobs.settle([1, 2, 3]))
    assert (by_endpoint["job tests.integration.apps.jobs.settle"].lines,
            by_endpoint["job tests.integration.apps.jobs.settle"].arcs) == (lines, arcs)

    async def measure() -> Any:
        async with capture_coverage(source=[str(APPS)]) as cap:
            await jobs.restock(13)
        return reported(cap)

    restocked = by_endpoint["job stock.restock"]
    assert (restocked.lines, restocked.arcs) == asyncio.run(measure())
    assert restocked.lines["jobs.py"] == {20, 21, 22, 23, 24}
    assert restocked.status_class == "ok"
    assert by_endpoint["job tests.integration.apps.jobs.failing"].status_class == "error"


def test_a_job_inside_a_span_joins_its_trace(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any
) -> None:
    agent = start_agent()
    settle = runcov.critical(jobs.settle)
    with app_provider.get_tracer("test").start_as_current_span("batch") as span:
        settle([4])
    ctx = span.get_span_context()
    (got,) = _coverage(agent, sink, 1).items()
    assert got[0] == ctx.trace_id
    assert got[1].parent_span_id == ctx.span_id


def test_job_selectors_pick_jobs_by_name(start_agent: AgentFactory, sink: HTTPSink) -> None:
    agent = start_agent(endpoints=["job billing.*"])
    runcov.critical("billing.settle")(jobs.settle)([1])
    runcov.critical(name="stock.settle")(jobs.settle)([2])
    by_trace = _coverage(agent, sink, 1)
    assert [t.endpoint for t in by_trace.values()] == ["job billing.settle"]


def test_watch_patches_a_module_when_it_is_imported(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    assert "tests.integration.apps.nightly" not in sys.modules
    runcov.watch("tests.integration.apps.nightly:report")
    runcov.watch("tests.integration.apps.nightly:report")  # twice: still measured once
    runcov.watch("tests.integration.apps.nightly:Exporter.run", name="exports.run")
    from tests.integration.apps import nightly

    assert nightly.report(9) == 100
    assert nightly.Exporter().run(4) == 6
    by_endpoint = {t.endpoint: t for t in _coverage(agent, sink, 2).values()}
    assert set(by_endpoint) == {"job tests.integration.apps.nightly.report", "job exports.run"}
    assert by_endpoint["job exports.run"].lines == {"nightly.py": {20}}
    # Watched twice, wrapped once.
    assert isinstance(nightly.report, wrapt.FunctionWrapper)
    assert type(nightly.report.__wrapped__) is types.FunctionType


def test_watch_rejects_a_target_without_a_function() -> None:
    with pytest.raises(runcov.ConfigError, match="watch='nightly'"):
        runcov.watch("nightly")


def test_critical_functions_run_untouched_without_an_agent() -> None:
    assert runcov.critical(jobs.settle)([1]) == 12
    assert asyncio.run(runcov.critical(jobs.restock)(2)) == 98


def test_critical_is_the_decorator_whichever_name_is_used_first() -> None:
    """``runcov.watch`` first (as a service does before its imports), then
    ``@runcov.critical``: each name is its function in a fresh interpreter."""
    import subprocess

    script = (
        "import runcov\n"
        "runcov.watch\n"
        "assert callable(runcov.critical), runcov.critical\n"
        "assert runcov.critical.__name__ == 'critical'\n"
        "import runcov.agent\n"
        "assert runcov.critical.__name__ == 'critical' and runcov.watch.__name__ == 'watch'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
