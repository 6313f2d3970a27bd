"""The tracing core measures the corpus exactly as coverage.py (branch mode) does."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from dataclasses import dataclass
from types import CodeType
from typing import Any, Callable

import coverage
import pytest
from coverage.python import PythonFileReporter
from coverage.results import Analysis, analysis_from_file_reporter

from runcov.testing import capture_coverage
from tests.corpus.cases import CASES, Case

CORPUS_DIR = os.path.realpath(os.path.join(os.path.dirname(__file__), "corpus"))

Lines = dict[str, set[int]]
Arcs = dict[str, set[tuple[int, int]]]

#: Cases where runcov cannot equal coverage.py, with the reason. Keyed by case id; each value is
#: ``(python versions it applies to, reason)``. Documented in the README.
IMPOSSIBLE: dict[str, tuple[tuple[tuple[int, int], ...], str]] = {}
#: Modules whose cases must also record coverage.py's raw arcs, not only its possible ones:
#: where an exception thrown into a suspended generator or coroutine enters and leaves the
#: frame is outside the possible arcs (an exit arc from a yield, an arc from the function's
#: start into a handler), so only the raw arcs show it; and where a coroutine resumes after an
#: ``await`` is too (an entry arc into the line it awaited at, which coverage.py does not
#: record for a resumption). Self-arcs ``(n, n)`` aside: a loop
#: that stays on one line (the loop around an ``await``'s ``SEND``) is a line event for a
#: settrace tracer at each jump back, and none for ``sys.monitoring`` on 3.12 (a known
#: difference, see the README).
RAW_ARCS_MODULES = frozenset({"throws", "asyncs"})


@dataclass
class Measured:
    """One measured run: what the entry calls returned (or raised), and the lines and arcs."""

    outcomes: list[tuple[str, str]]
    lines: Lines
    arcs: Arcs


def _call_all(fn: Callable[..., Any], inputs: tuple[tuple[Any, ...], ...]) -> list[tuple[str, str]]:
    outcomes = []
    for args in inputs:
        try:
            outcomes.append(("returned", repr(fn(*args))))
        except Exception as exc:
            outcomes.append(("raised", type(exc).__name__))
    return outcomes


async def _await_all(
    fn: Callable[..., Any], inputs: tuple[tuple[Any, ...], ...]
) -> list[tuple[str, str]]:
    outcomes = []
    for args in inputs:
        try:
            outcomes.append(("returned", repr(await fn(*args))))
        except Exception as exc:
            outcomes.append(("raised", type(exc).__name__))
    return outcomes


def _in_corpus(path: str) -> bool:
    return os.path.realpath(path).startswith(CORPUS_DIR + os.sep)


def measure_coveragepy(case: Case) -> tuple[Measured, coverage.Coverage]:
    """Run ``case`` under coverage.py (branch=True, in-process), around the calls only."""
    fn = case.load()
    is_async = case.is_async
    cov = coverage.Coverage(branch=True, data_file=None, source=[CORPUS_DIR])
    cov.start()
    try:
        if is_async:
            outcomes = asyncio.run(_await_all(fn, case.inputs))
        else:
            outcomes = _call_all(fn, case.inputs)
    finally:
        cov.stop()
    data = cov.get_data()
    lines: Lines = {}
    arcs: Arcs = {}
    for path in data.measured_files():
        if not _in_corpus(path):
            continue
        file_arcs = set(data.arcs(path) or ())
        if file_arcs:
            arcs[path] = file_arcs
            lines[path] = set(data.lines(path) or ())
    return Measured(outcomes, lines, arcs), cov


def measure_runcov(case: Case) -> Measured:
    """Run ``case`` inside ``runcov.testing.capture_coverage``, around the calls only."""
    fn = case.load()
    if case.is_async:

        async def main() -> tuple[list[tuple[str, str]], Any]:
            async with capture_coverage(source=[CORPUS_DIR]) as cov:
                outcomes = await _await_all(fn, case.inputs)
            return outcomes, cov

        outcomes, cov = asyncio.run(main())
    else:
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            outcomes = _call_all(fn, case.inputs)
    lines = {p: set(v) for p, v in cov.lines.items() if v}
    arcs = {p: set(v) for p, v in cov.arcs.items() if v}
    return Measured(outcomes, lines, arcs)


def analyse(cov: coverage.Coverage, arcs: Arcs, path: str) -> Analysis:
    """coverage.py's own analysis of ``arcs`` for ``path`` (same static analysis for both)."""
    data = coverage.CoverageData(no_disk=True)
    try:
        data.add_arcs({p: a for p, a in arcs.items() if a})
        reporter = PythonFileReporter(path, cov)
        return analysis_from_file_reporter(data, cov.config.precision, reporter, path)
    finally:
        data.close(force=True)


def _rel(path: str) -> str:
    return os.path.relpath(path, CORPUS_DIR)


def _diff(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Readable per-file differences between two {path: set} mappings."""
    out = []
    for path in sorted(set(ours) | set(theirs)):
        mine = ours.get(path, set())
        ref = theirs.get(path, set())
        if mine != ref:
            out.append(
                f"{name} {_rel(path)}: only coverage.py {sorted(ref - mine)}, "
                f"only runcov {sorted(mine - ref)}"
            )
    return out


def compare(case: Case) -> list[str]:
    """All differences between runcov and coverage.py for ``case`` (empty when equal)."""
    reference, cov = measure_coveragepy(case)
    try:
        ours = measure_runcov(case)
        return _compare(reference, ours, cov, case)
    finally:
        cov.get_data().close(force=True)


def _compare(reference: Measured, ours: Measured, cov: coverage.Coverage, case: Case) -> list[str]:
    problems = []
    if ours.outcomes != reference.outcomes:
        problems.append(f"outcomes differ: {reference.outcomes} vs {ours.outcomes}")
    assert reference.lines, f"coverage.py measured nothing for {case.id}"

    problems += _diff("lines", ours.lines, reference.lines)
    files = sorted(set(reference.arcs) | set(ours.arcs) | set(ours.lines))
    for path in files:
        if not _in_corpus(path):
            problems.append(f"runcov measured a file outside the source root: {path}")
            continue
        ref_an = cov._analyze(path)
        our_an = analyse(cov, ours.arcs, path)
        assert ref_an.statements == our_an.statements  # same static analysis on both sides
        if ref_an.missing != our_an.missing:
            problems += _diff("missing lines", {path: our_an.missing}, {path: ref_an.missing})
        ref_mba = {k: set(v) for k, v in ref_an.missing_branch_arcs().items() if v}
        our_mba = {k: set(v) for k, v in our_an.missing_branch_arcs().items() if v}
        if ref_mba != our_mba:
            problems.append(
                f"missing branch arcs {_rel(path)}: coverage.py {sorted(ref_mba.items())}, "
                f"runcov {sorted(our_mba.items())}"
            )
        ref_partial = {k for k in ref_mba if k not in ref_an.missing}
        our_partial = {k for k in our_mba if k not in our_an.missing}
        if ref_partial != our_partial:
            problems += _diff("partial branches", {path: our_partial}, {path: ref_partial})
        possible = ref_an.arc_possibilities_set
        ref_arcs = reference.arcs.get(path, set()) & possible
        our_arcs = ours.arcs.get(path, set()) & possible
        problems += _diff("possible arcs", {path: our_arcs}, {path: ref_arcs})
        if case.module in RAW_ARCS_MODULES:
            problems += _diff(
                "raw arcs",
                {path: _without_self_arcs(ours.arcs.get(path, set()))},
                {path: _without_self_arcs(reference.arcs.get(path, set()))},
            )
    return problems


def _without_self_arcs(arcs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {arc for arc in arcs if arc[0] != arc[1]}


def _params() -> list[Any]:
    params = []
    version = sys.version_info[:2]
    for case in CASES:
        marks = []
        known = IMPOSSIBLE.get(case.id)
        if known and version in known[0]:
            marks.append(pytest.mark.xfail(strict=True, reason=known[1]))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.fixture(autouse=True)
def _no_tracer_around() -> Any:
    """Each case starts and ends with no settrace tracer installed (coverage.py nor runcov)."""
    if sys.gettrace() is not None:
        pytest.skip("an external settrace tracer (e.g. pytest-cov on 3.11) owns this thread")
    yield
    assert sys.gettrace() is None


@pytest.mark.parametrize("case", _params())
def test_same_as_coveragepy(case: Case) -> None:
    """Lines, missing lines, missing and partial branches, and possible arcs all match."""
    problems = compare(case)
    assert not problems, "\n".join(problems)


def test_corpus_covers_every_sample_module() -> None:
    """Every sample module in the corpus has at least one case."""
    modules = {
        name[:-3]
        for name in os.listdir(CORPUS_DIR)
        if name.endswith(".py") and name not in ("__init__.py", "cases.py")
    }
    assert modules == {case.module for case in CASES}


def test_every_corpus_function_runs_in_some_case() -> None:
    """Every function, method, lambda and generator expression in the corpus runs in a case."""
    cov = coverage.Coverage(branch=True, data_file=None, source=[CORPUS_DIR])
    entries: set[tuple[str, int]] = set()
    for case in CASES:
        fn = case.load()
        is_async = case.is_async
        cov.start()
        try:
            if is_async:
                asyncio.run(_await_all(fn, case.inputs))
            else:
                _call_all(fn, case.inputs)
        finally:
            cov.stop()
    data = cov.get_data()
    for path in data.measured_files():
        entries.update((path, -a) for a, _ in data.arcs(path) or () if a < 0)
    data.close(force=True)
    never = []
    for module in sorted({case.module for case in CASES}):
        path = os.path.join(CORPUS_DIR, module + ".py")
        with open(path, encoding="utf-8") as f:
            top = compile(f.read(), path, "exec")
        for code in _functions(top):
            if (path, code.co_firstlineno) not in entries:
                never.append(f"{module}.py:{code.co_firstlineno} {code.co_name}")
    assert not never, "corpus code no case runs: " + ", ".join(never)


def _functions(code: CodeType) -> list[CodeType]:
    """Function-like code objects nested in ``code`` (not module or class bodies)."""
    found = []
    for const in code.co_consts:
        if isinstance(const, CodeType):
            if const.co_flags & inspect.CO_NEWLOCALS:
                found.append(const)
            found.extend(_functions(const))
    return found


def test_comparison_reports_a_dropped_branch_arc() -> None:
    """The comparison itself is sharp: removing one executed branch arc is reported."""
    case = next(c for c in CASES if c.id == "branches.classify[negative]")
    reference, cov = measure_coveragepy(case)
    try:
        ours = measure_runcov(case)
        assert not _compare(reference, ours, cov, case)
        (path,) = ours.arcs
        analysis = cov._analyze(path)
        branch_lines = {
            a for a, _ in analysis.arc_possibilities if analysis.exit_counts.get(a, 0) > 1
        }
        dropped = next(arc for arc in sorted(ours.arcs[path]) if arc[0] in branch_lines)
        ours.arcs[path].discard(dropped)
        problems = _compare(reference, ours, cov, case)
    finally:
        cov.get_data().close(force=True)
    assert any("missing branch arcs" in p for p in problems)
    assert any(str(dropped) in p and p.startswith("possible arcs") for p in problems)
