"""Ground truth and exported requests for tests that measure functions of their own file.

``InFile(path)`` compares what coverage.py (branch mode) and runcov's core measure in one test
file, restricted to given functions' lines and arcs as the agent reports them (coverage.py's
own translation of lines and arcs to statements); :func:`exported` collects the requests an
agent exported to an in-test OTLP receiver.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import coverage
from coverage.parser import PythonParser

from runcov.agent import Agent
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.otlp import TraceCoverage, coverage_by_trace

Arc = tuple[int, int]
Measured = tuple[set[int], set[Arc], set[int]]


def span(func: Any) -> tuple[int, int]:
    """The first and last line of ``func``'s code (the function a decorator such as
    ``contextlib.contextmanager`` wraps)."""
    code = getattr(func, "__wrapped__", func).__code__
    return code.co_firstlineno, max(line for *_, line in code.co_lines() if line)


def lines_of(*functions: Any) -> set[int]:
    """Every line from each function's first to its last."""
    return {line for f in functions for line in range(span(f)[0], span(f)[1] + 1)}


class InFile:
    """What is measured in the file ``path`` (a test module measuring its own functions)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)

    def coverage_py(self, run: Callable[[], Any], *functions: Any) -> Measured:
        """What coverage.py measures in the file while ``run()`` runs: the lines and arcs of
        ``functions``' code, and every line measured."""
        cov = coverage.Coverage(
            branch=True, data_file=None, include=[self.path], config_file=False
        )
        cov.start()
        try:
            run()
        finally:
            cov.stop()
        data = cov.get_data()
        (path,) = (p for p in data.measured_files() if os.path.realpath(p) == self.path)
        lines, arcs = data.lines(path) or (), data.arcs(path) or ()
        data.close(force=True)
        return self.theirs(lines, arcs, functions)

    def captured(self, run: Callable[[], Any], *functions: Any) -> Measured:
        """:meth:`coverage_py` measured by ``runcov.testing.capture_coverage`` (runcov's own
        core around the whole of ``run()``, no agent running)."""
        with capture_coverage(source=[self.path]) as cap:
            run()
        return self.theirs(
            cap.lines.get(self.path, ()), cap.arcs.get(self.path, ()), functions
        )

    def reference(self, run: Callable[[], Any], *functions: Any) -> Measured:
        """:meth:`coverage_py` for a run that throws into, or closes, a suspended generator,
        checked against what runcov's own core measures of the unmarked generator
        (:meth:`captured`): where such a throw lands, both record the arcs coverage.py's
        tracer records (the handler entered from the function's start after a throw at a
        plain ``yield``, no exit arc from a yield the exception leaves by). What a marked
        function must keep is what the core measures of its body."""
        lines, arcs, ran = self.coverage_py(run, *functions)
        same_lines, same_arcs, _ = self.captured(run, *functions)
        assert (same_lines, same_arcs) == (lines, arcs)
        return lines, arcs, ran

    def theirs(
        self, lines: Iterable[int], arcs: Iterable[Arc], functions: tuple[Any, ...]
    ) -> Measured:
        """The lines and arcs of ``functions`` among those measured, as coverage.py reports
        them; and every line measured."""
        parser = PythonParser(filename=self.path)
        parser.parse_source()
        parser.arcs()  # (the analysis that finds the with statements' exits)
        lines = set(parser.translate_lines(lines))
        arcs = set(parser.translate_arcs(arcs))
        ranges = [span(f) for f in functions]

        def inside(line: int) -> bool:
            return any(first <= abs(line) <= last for first, last in ranges)

        return (
            {line for line in lines if inside(line)},
            {arc for arc in arcs if inside(arc[0]) and inside(arc[1])},
            lines,
        )


def exported(agent: Agent, sink: HTTPSink, endpoint: str, count: int = 1) -> list[TraceCoverage]:
    """The requests of ``endpoint`` exported (at least ``count`` of them, complete)."""
    assert agent.flush(10.0)

    def arrived() -> list[TraceCoverage] | None:
        runs = coverage_by_trace(sink.coverage_spans()).values()
        mine = [t for t in runs if t.endpoint == endpoint and t.complete]
        return mine if len(mine) >= count else None

    return sink.wait_for(arrived, timeout=10.0)  # type: ignore[no-any-return]
