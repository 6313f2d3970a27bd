"""Behaviour of the tracing cores beyond line/arc fidelity: choice, hand-off, census, safety."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from runcov.testing import capture_coverage
from runcov.tracing import Core, get_core
from tests.fresh import environ_without, run_python
from tests.sample import work

SAMPLE = str(Path(work.__file__).parent)
WORK = os.path.realpath(work.__file__)


@pytest.fixture
def settrace_tracer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For the tests of the settrace core's tracer: on 3.11, where exact scopes are recorded by
    the probes, a core that traces its threads instead (``RUNCOV_EXACT_PROBES=0``) for the
    test; elsewhere the process's core as it is."""
    core = get_core()
    if core.name != "settrace" or not getattr(core, "exact_by_probes", False):
        yield
        return
    from runcov.tracing import reset_core, settrace

    monkeypatch.setattr(settrace, "_EXACT_PROBES", False)
    reset_core()
    try:
        yield
    finally:
        reset_core()  # the next test's core records by the probes again


def _line_of(text: str) -> int:
    for number, line in enumerate(Path(WORK).read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(text)


def test_core_choice_matches_python_version() -> None:
    core = get_core()
    expected = "sysmon" if sys.version_info >= (3, 12) else "settrace"
    if os.environ.get("RUNCOV_CORE"):
        expected = os.environ["RUNCOV_CORE"]
    assert core.name == expected


def test_sync_capture_records_only_the_taken_branch() -> None:
    with capture_coverage(source=[SAMPLE]) as cov:
        assert work.classify(0) == "zero"
    lines = cov.lines[WORK]
    assert _line_of('return "zero"') in lines
    assert _line_of('return "negative"') not in lines
    assert _line_of('return "positive"') not in lines
    first = work.classify.__code__.co_firstlineno
    assert (-first, first + 1) in cov.arcs[WORK]
    assert (_line_of('return "zero"'), -first) in cov.arcs[WORK]


def test_frames_running_when_the_scope_opens_are_not_measured() -> None:
    """A scope opened from inside measured code measures what that code calls, not the rest
    of the frame that opened it (it was running before the scope began)."""
    work.measures_from_inside(capture_coverage(source=[SAMPLE]))  # the code has run once
    cov = work.measures_from_inside(capture_coverage(source=[SAMPLE]))
    first = work.measures_from_inside.__code__.co_firstlineno
    opened_in = set(range(first, first + 6))
    assert not (cov.lines[WORK] & opened_in)
    assert not {arc for arc in cov.arcs[WORK] if set(arc) & (opened_in | {-first})}
    entry = work.classify.__code__.co_firstlineno
    assert (-entry, entry + 1) in cov.arcs[WORK]


def test_module_bodies_are_measured_when_imported_and_never_toggled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module imported inside a scope has its body's lines measured; a module body is
    armed only for that one run, never with the arm/disarm cycles of later scopes."""
    core = get_core()
    if core.name != "sysmon":
        pytest.skip("sys.monitoring core not in use")
    import importlib

    for name in ("runcov_body_inside", "runcov_body_outside"):
        (tmp_path / f"{name}.py").write_text(
            "import sys\n"
            "BODY = sys._getframe().f_code\n"
            "if len(BODY.co_name) > 100:\n"
            "    X = 1\n"
            "else:\n"
            "    X = 2\n"
            "def f():\n"
            "    return X\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(core, "_linger_scale", 0.0)  # each scope's close disarms at once
    root = [str(tmp_path)]
    outside = importlib.import_module("runcov_body_outside")  # before any scope: not armed
    with capture_coverage(source=root) as cov:
        inside = importlib.import_module("runcov_body_inside")
        inside.f()
    path = os.path.realpath(inside.__file__)
    assert cov.lines[path] == {1, 2, 3, 6, 7, 8}
    assert (-1, 1) in cov.arcs[path] and (3, 6) in cov.arcs[path]
    tool = core.tool_id  # type: ignore[attr-defined]
    mon = sys.monitoring  # type: ignore[attr-defined]
    with capture_coverage(source=root) as again:
        inside.f()
        outside.f()
        assert mon.get_local_events(tool, inside.BODY) == 0
        assert mon.get_local_events(tool, outside.BODY) == 0
        assert mon.get_local_events(tool, inside.f.__code__) != 0
    assert again.lines[path] == {8}
    sys.modules.pop("runcov_body_inside", None)
    sys.modules.pop("runcov_body_outside", None)


def test_code_outside_the_roots_is_not_recorded(tmp_path: Path) -> None:
    with capture_coverage(source=[str(tmp_path)]) as cov:
        work.classify(5)
    assert cov.lines == {}
    assert cov.arcs == {}


def test_thread_pool_work_counts_toward_the_submitting_scope() -> None:
    body = _line_of("total += i")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with capture_coverage(source=[SAMPLE]) as cov:
            assert pool.submit(work.blocking, 3).result() == 3
        # Work submitted outside any scope is not recorded anywhere.
        with capture_coverage(source=[SAMPLE]) as other:
            work.classify(1)
            done = threading.Event()
            threading.Thread(target=lambda: (work.blocking(2), done.set())).start()
            done.wait(5)
    assert body in cov.lines[WORK]
    assert body not in other.lines[WORK]


def test_asyncio_to_thread_and_run_in_executor_count_toward_the_task() -> None:
    body = _line_of("total += i")

    async def main() -> tuple[capture_coverage, capture_coverage]:
        async with capture_coverage(source=[SAMPLE]) as a:
            await work.handler(3)
        async with capture_coverage(source=[SAMPLE]) as b:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, work.blocking, 2)
        return a, b

    a, b = asyncio.run(main())
    assert body in a.lines[WORK]
    assert _line_of('return "positive"') in a.lines[WORK]
    assert body in b.lines[WORK]
    assert _line_of('return "positive"') not in b.lines[WORK]


def test_interleaved_tasks_get_their_own_sets() -> None:
    async def one(n: int) -> capture_coverage:
        async with capture_coverage(source=[SAMPLE]) as cov:
            await work.handler(n, delay=0.001)
        return cov

    async def main() -> list[capture_coverage]:
        return await asyncio.gather(*(one(n) for n in (-1, 0, 2) * 20))

    results = asyncio.run(main())
    for n, cov in zip((-1, 0, 2) * 20, results):
        lines = cov.lines[WORK]
        assert (_line_of('return "negative"') in lines) == (n < 0)
        assert (_line_of('return "zero"') in lines) == (n == 0)
        assert (_line_of("total += i") in lines) == (n > 0)


def test_an_asyncio_scope_stays_armed_between_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-step arming keeps a task's events armed from one step to its next (on a linger
    budget of its own) instead of toggling every code object at each await, even when
    lingering after a scope closes has stopped paying (low sampling rates): one arm, one
    disarm per scope."""
    core = get_core()
    if core.name != "sysmon":
        pytest.skip("sys.monitoring core not in use")
    monkeypatch.setattr(core, "_linger_scale", 0.0)  # closes disarm at once
    monkeypatch.setattr(core, "_step_scale", 1.0)  # between steps: the whole budget
    # A costly toggle (1 ms): a budget worth lingering on, whatever this machine's speed.
    monkeypatch.setattr(core, "_toggle_cost", 1e-3)
    with capture_coverage(source=[SAMPLE]):
        pass  # ends what an earlier scope left lingering: the events start disarmed
    applied: list[bool] = []
    real_apply = core._apply  # type: ignore[attr-defined]

    def apply(toggle: bool, **kwargs: bool) -> None:
        applied.append(core._exact_armed)  # type: ignore[attr-defined]
        real_apply(toggle, **kwargs)

    monkeypatch.setattr(core, "_apply", apply)
    monkeypatch.setattr(core, "linger", 5.0)  # the budget, not the clock, ends a linger here

    async def main() -> capture_coverage:
        async with capture_coverage(source=[SAMPLE]) as cov:
            for _ in range(5):
                await work.handler(0, delay=0.001)
        return cov

    cov = asyncio.run(main())
    assert applied == [True, False]
    assert _line_of('return "zero"') in cov.lines[WORK]
    assert _line_of('return "negative"') not in cov.lines[WORK]


def test_unsampled_work_spends_the_linger_budget_and_disarms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the last scope closes the code stays armed (ski rental) until unsampled work has
    paid, in filtered events, about what a disarm and re-arm would cost: then it disarms."""
    core = get_core()
    if core.name != "sysmon":
        pytest.skip("sys.monitoring core not in use")
    monkeypatch.setattr(core, "_linger_scale", 1.0)
    monkeypatch.setattr(core, "_toggle_cost", 1e-5)  # a budget of ~70-190 filtered events
    monkeypatch.setattr(core, "linger", 30.0)  # the budget, not the clock, ends the linger
    with capture_coverage(source=[SAMPLE]):
        work.classify(1)
    assert core._lingering and core._exact_armed  # type: ignore[attr-defined]
    work.classify(1)  # a few filtered events: still lingering
    assert core._lingering and core._exact_armed  # type: ignore[attr-defined]
    for n in range(300):
        work.classify(n)
    assert not core._lingering and not core._exact_armed  # type: ignore[attr-defined]
    with capture_coverage(source=[SAMPLE]) as cov:  # and arms again for the next scope
        work.classify(-1)
    assert _line_of('return "negative"') in cov.lines[WORK]


def test_the_step_gate_is_in_only_while_scopes_opened_in_tasks_are_open() -> None:
    """asyncio's Handle._run runs every step of every task: runcov wraps it only while a scope
    opened in a task is open, so a loop with no measured request runs it unwrapped."""
    import asyncio.events

    original = asyncio.events.Handle.__dict__["_run"]
    seen: list[bool] = []

    async def measured(n: int) -> capture_coverage:
        async with capture_coverage(source=[SAMPLE]) as cov:
            seen.append(asyncio.events.Handle.__dict__["_run"] is not original)
            await work.handler(n, delay=0.001)
            seen.append(asyncio.events.Handle.__dict__["_run"] is not original)
        return cov

    async def main() -> list[capture_coverage]:
        return await asyncio.gather(*(measured(n) for n in (-1, 0, 2)))

    results = asyncio.run(main())
    assert seen and all(seen)
    assert asyncio.events.Handle.__dict__["_run"] is original
    assert _line_of('return "negative"') in results[0].lines[WORK]
    assert _line_of('return "negative"') not in results[1].lines[WORK]
    assert _line_of("total += i") in results[2].lines[WORK]


def test_a_scope_opened_before_the_step_gate_was_in_is_inactive_between_its_steps() -> None:
    """The step that puts the gate in runs unwrapped: its scope is deactivated right after
    that step, so other tasks that run before the scope's next step run disarmed."""
    from runcov.tracing import _scope

    assert _scope._step_gate.users == 0  # no scope opened in a task is open
    core = get_core()
    seen: list[bool] = []
    scopes: list[Any] = []

    async def measured() -> None:
        async with capture_coverage(source=[SAMPLE]):
            scopes.append(core.current_scope())
            await asyncio.sleep(0.01)
            work.classify(1)

    async def other() -> None:
        await asyncio.sleep(0.001)
        seen.append(scopes[0].counted)

    async def main() -> None:
        await asyncio.gather(measured(), other())

    asyncio.run(main())
    assert seen == [False]


def test_the_step_gate_never_undoes_another_librarys_patch() -> None:
    import asyncio.events

    original = asyncio.events.Handle.__dict__["_run"]
    calls: list[int] = []

    async def main() -> None:
        async with capture_coverage(source=[SAMPLE]):
            gated = asyncio.events.Handle._run

            def theirs(self: Any) -> None:  # another library wraps what it finds
                calls.append(1)
                return gated(self)

            asyncio.events.Handle._run = theirs  # type: ignore[method-assign]
            await asyncio.sleep(0)

    try:
        asyncio.run(main())
        assert asyncio.events.Handle.__dict__["_run"].__name__ == "theirs"
        assert calls
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]


def test_census_records_each_line_once_for_the_first_request() -> None:
    core = get_core()
    core.new_epoch()
    try:
        _census_sequence(core)
    finally:
        core.disable_census()


def _census_sequence(core: Core) -> None:
    with capture_coverage(source=[SAMPLE], mode="census") as first:
        work.blocking(3)
    with capture_coverage(source=[SAMPLE], mode="census") as second:
        work.blocking(3)
        work.classify(-1)
    body = _line_of("total += i")
    assert body in first.lines[WORK]
    assert first.arcs == {}
    assert body not in second.lines.get(WORK, set())
    assert _line_of('return "negative"') in second.lines[WORK]
    core.new_epoch()
    with capture_coverage(source=[SAMPLE], mode="census") as third:
        work.blocking(3)
    assert body in third.lines[WORK]


def _coveragepy_lines(run: Any) -> set[int]:
    """Lines of ``work`` that coverage.py sees ``run()`` execute (the oracle).

    When the suite itself runs under coverage.py (pytest-cov), a second coverage.py inside it
    would replace the outer one's tracer: runcov's exact scope, which the differential tests
    hold equal to coverage.py, is the oracle then.
    """
    if sys.gettrace() is not None:
        with capture_coverage(source=[SAMPLE]) as exact:
            run()
        return exact.lines.get(WORK, set())
    import coverage

    cov = coverage.Coverage(data_file=None, source=[SAMPLE])
    cov.start()
    try:
        run()
    finally:
        cov.stop()
    return set(cov.get_data().lines(WORK) or ())


def test_census_attributes_first_hits_outside_scopes_to_their_owner() -> None:
    """Census without a scope per request: each first hit goes to whoever ``owner()`` names
    when it happens (the agent: the current trace), and waits there until claimed."""
    import contextvars

    core = get_core()
    owner: contextvars.ContextVar[object] = contextvars.ContextVar("request", default=None)
    if not core.attributes_census:
        # settrace cannot disable a line once hit: census needs its scope per request there.
        assert core.set_census_owner(owner.get) is False
        assert core.take_census("a") is None
        return
    core.add_roots([SAMPLE])
    assert core.set_census_owner(owner.get) is True
    core.new_epoch()
    core.enable_census()  # type: ignore[attr-defined]
    try:

        def request(name: object, run: Any) -> None:
            token = owner.set(name)
            try:
                run()
            finally:
                owner.reset(token)

        def first() -> None:
            work.classify(-1)
            work.blocking(3)

        def second() -> None:
            work.classify(-1)
            work.classify(0)

        request("a", first)
        thread = threading.Thread(target=request, args=("b", second))
        thread.start()
        thread.join()
        unattributed = core.census_unattributed  # type: ignore[attr-defined]
        work.classify(5)  # no owner: its one new line is hit, attributed to nobody
        assert core.census_unattributed == unattributed + 1  # type: ignore[attr-defined]

        a, b = core.take_census("a"), core.take_census("b")
        assert a is not None and b is not None
        expected_a = _coveragepy_lines(first)
        assert a.lines == {WORK: expected_a}
        assert b.lines == {WORK: _coveragepy_lines(second) - expected_a}
        assert a.arcs == {} and b.arcs == {}
        assert core.take_census("a") is None  # claimed once
        assert core.census_pending == {}

        core.new_epoch()
        request("c", second)
        again = core.take_census("c")
        assert again is not None and again.lines == {WORK: _coveragepy_lines(second)}
    finally:
        core.set_census_owner(None)
        core.disable_census()


def test_scope_closed_from_another_context_does_not_raise() -> None:
    core = get_core()
    core.add_roots([SAMPLE])
    scope = core.open_scope()
    work.classify(3)
    result: dict[str, object] = {}

    def close_elsewhere() -> None:
        result["data"] = scope.close()

    thread = threading.Thread(target=close_elsewhere)
    thread.start()
    thread.join()
    # The opener's context still points at the (closed) scope: closing again here unbinds it.
    again = scope.close()
    assert again is result["data"]
    from runcov.tracing._scope import _current

    _current.set(None)
    if sys.gettrace() is not None and core.name == "settrace":
        work.classify(1)  # the tracer notices the closed scope and removes itself
    assert sys.gettrace() is None or core.name != "settrace"


@pytest.mark.usefixtures("settrace_tracer")
def test_settrace_scope_whose_tracer_was_removed_reports_itself_not_traced() -> None:
    """Something else removing the tracer mid-scope (``sys.settrace(None)`` in the app) leaves
    the request partly unmeasured: the scope says so instead of passing for a whole one."""
    core = get_core()
    if core.name != "settrace":
        pytest.skip("settrace core not in use")
    whole = core.open_scope(roots=[SAMPLE])
    work.classify(1)
    whole.close()
    assert whole.traced is True
    cut = core.open_scope(roots=[SAMPLE])
    work.classify(1)
    sys.settrace(None)
    work.classify(-1)
    data = cut.close()
    assert cut.traced is False
    assert data.lines  # what was measured is still handed over
    assert sys.gettrace() is None


@pytest.mark.usefixtures("settrace_tracer")
def test_python_code_run_as_a_scope_opens_never_removes_the_tracer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a scope opens, before it is bound, the thread may run Python code at any
    allocation: a garbage-collection callback (hypothesis registers one), a finalizer. The
    tracer sees no scope there; it must not take itself off a thread that is opening one (the
    request would be measured empty)."""
    core = get_core()
    if core.name != "settrace":
        pytest.skip("settrace core not in use")
    ran: list[str] = []

    def collector_callback() -> None:  # what a gc.callbacks entry runs
        ran.append("gc")

    class ScopesCollectingGarbage(list):  # type: ignore[type-arg]
        def append(self, scope: Any) -> None:
            collector_callback()  # a collection triggered by this allocation
            super().append(scope)

    tls = core._tls  # type: ignore[attr-defined]
    monkeypatch.setattr(tls, "open", ScopesCollectingGarbage(tls.open))
    with capture_coverage(source=[SAMPLE]) as cov:
        work.classify(1)
    assert ran == ["gc"]
    assert cov.traced
    assert _line_of('return "positive"') in cov.lines.get(WORK, set())


@pytest.mark.usefixtures("settrace_tracer")
def test_settrace_core_never_replaces_a_foreign_tracer() -> None:
    if get_core().name != "settrace":
        pytest.skip("settrace core not in use")

    def foreign(frame: object, event: str, arg: object) -> None:
        return None

    sys.settrace(foreign)
    try:
        with capture_coverage(source=[SAMPLE]) as cov:
            work.classify(1)
        assert sys.gettrace() is foreign
    finally:
        sys.settrace(None)
    assert cov.traced is False
    assert cov.lines == {}


def test_sysmon_core_uses_tool_3_or_4_and_leaves_coverage_tool_alone() -> None:
    core = get_core()
    if core.name != "sysmon":
        pytest.skip("sys.monitoring core not in use")
    assert core.tool_id in (3, 4)  # type: ignore[attr-defined]
    assert sys.monitoring.get_tool(core.tool_id) == "runcov"  # type: ignore[attr-defined]


def test_modules_with_raising_attributes_and_hidden_functions_are_measured() -> None:
    from tests.sample import hostile

    path = os.path.realpath(hostile.__file__)
    with capture_coverage(source=[str(Path(path).parent)]) as cov:
        assert hostile.uses_proxy(True) == "yes"
        assert hostile.REGISTRY["inner"](0) == 0
    assert cov.traced
    inner_first = hostile.REGISTRY["inner"].__code__.co_firstlineno
    assert (-inner_first, inner_first + 1) in cov.arcs[path]
    text = Path(path).read_text().splitlines()
    expected = {
        number
        for number, line in enumerate(text, start=1)
        if line.strip() in ("if flag:", 'return "yes"', "if x:", "return 0")
    }
    assert cov.lines[path] == expected


@contextlib.contextmanager
def _module_from(directory: Path, name: str, text: str) -> Iterator[Any]:
    """Import ``text`` as module ``name`` from a file in ``directory``; forget it afterwards."""
    import importlib.util

    source = directory / f"{name}.py"
    source.write_text(text)
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_code_that_ran_before_its_root_was_added_is_measured(tmp_path: Path) -> None:
    """Code first run outside every root (its PY_START disabled) is found when its root comes."""
    text = "def pick(x):\n    if x:\n        return 1\n    return 2\n"
    with _module_from(tmp_path, "late_root_mod", text) as module:
        assert module.pick(1) == 1  # runs while tmp_path is no root: passed over
        with capture_coverage(source=[str(tmp_path)]) as cov:
            assert module.pick(0) == 2
        path = os.path.realpath(module.__file__)
        assert cov.lines == {path: {2, 4}}
        assert cov.arcs[path] == {(-1, 2), (2, 4), (4, -1)}


def test_data_is_what_ran_until_the_scope_closed(tmp_path: Path) -> None:
    """A frame that started in a scope and outlives it adds nothing to the scope's data, even
    though the data is built later (on the agent's exporter thread)."""
    text = (
        "def work(scope):\n"
        "    a = 1\n"
        "    data = scope.close()\n"
        "    b = a + 1\n"
        "    c = b + 1\n"
        "    return data, c\n"
    )
    with _module_from(tmp_path, "outlive_mod", text) as module:
        core = get_core()
        # An enclosing scope keeps the thread traced after the inner one closes, so the frame
        # of ``work`` goes on producing line events.
        outer = core.open_scope(roots=[str(tmp_path)])
        try:
            inner = core.open_scope(roots=[str(tmp_path)])
            data, _ = module.work(inner)
        finally:
            outer.close()
        path = os.path.realpath(module.__file__)
        assert data.lines == {path: {2, 3}}
        assert data.arcs == {path: {(-1, 2), (2, 3)}}


def test_a_one_line_generator_expression_started_with_its_code_armed(tmp_path: Path) -> None:
    """A generator expression on one line runs all of it on the line it was created on: on
    CPython 3.13, started with its code already armed (another request of the process keeps
    it armed), it gets no LINE event at all. Its line, entry and exit arcs are recorded as
    coverage.py records them, in every scope, not only in the one that armed it."""
    text = (
        "def fetch(n):\n"
        "    return list(range(n))\n"
        "\n"
        "\n"
        "def total(n):\n"
        "    s = sum(raw for raw in fetch(n))\n"
        "    return s\n"
    )
    with _module_from(tmp_path, "one_line_genexpr_mod", text) as module:
        path = os.path.realpath(module.__file__)
        if sys.gettrace() is None:
            import coverage

            cov = coverage.Coverage(branch=True, data_file=None, source=[str(tmp_path)])
            cov.start()
            try:
                module.total(3)
            finally:
                cov.stop()
            expected = set(cov.get_data().arcs(path) or ())
        else:  # under pytest-cov: the scope that arms the code mid-frame is the reference
            with capture_coverage(source=[str(tmp_path)]) as first:
                module.total(3)
            expected = first.arcs[path]
        # (A loop that stays on its line: the self-arc sys.monitoring does not report, README.)
        expected = {(a, b) for a, b in expected if a != b}
        assert {(-6, 6), (6, -6)} <= expected
        core = get_core()
        holder = core.open_scope(roots=[str(tmp_path)])  # keeps the code armed throughout
        try:
            module.total(3)
            for _ in range(3):
                with capture_coverage(source=[str(tmp_path)]) as cap:
                    assert module.total(3) == 3
                assert {(a, b) for a, b in cap.arcs[path] if a != b} == expected
                assert cap.lines[path] == {2, 6, 7}
        finally:
            holder.close()


def test_a_failure_while_closing_never_loses_the_data(tmp_path: Path) -> None:
    """Unbinding the scope or telling the core may fail (a bug, an exotic context): the data
    recorded so far is returned all the same, and nothing is raised."""
    text = "def work():\n    a = 1\n    return a + 1\n"
    with _module_from(tmp_path, "close_fail_mod", text) as module:
        core = get_core()
        scope: Any = core.open_scope(roots=[str(tmp_path)])
        closer = scope._closer
        calls = []

        def failing_closer(s: Any) -> None:
            calls.append(s)
            closer(s)  # the core's bookkeeping is done, then the failure
            raise RuntimeError("bookkeeping failed")

        scope._closer = failing_closer
        try:
            module.work()
        finally:
            data = scope.close()
        assert calls == [scope]
        path = os.path.realpath(module.__file__)
        assert data.lines == {path: {2, 3}}
        assert data.arcs == {path: {(-1, 2), (2, 3), (3, -1)}}


def _run_script(tmp_path: Path, name: str, source: str, *args: str) -> Any:
    """Run ``source`` as ``tmp_path/name`` in a fresh interpreter, ``tmp_path`` importable,
    with this leg's choice of callbacks (``RUNCOV_ACCEL``) and no other runcov or OpenTelemetry
    setting; the test fails if it fails (or takes more than a minute)."""
    script = tmp_path / name
    script.write_text(source)
    env = environ_without(("RUNCOV_", "OTEL_"), keep=("RUNCOV_ACCEL",))
    env["PYTHONPATH"] = str(tmp_path)
    return run_python(str(script), *args, env=env, timeout=60)


def _core_in_use(name: str) -> Any:
    """The process's core when it is ``name`` (the test is skipped otherwise)."""
    core = get_core()
    if core.name != name:
        pytest.skip(f"{name} core not in use")
    return core


def test_sysmon_core_records_with_its_c_callbacks_unless_told_not_to() -> None:
    """The C recording callbacks are built with runcov and used; ``RUNCOV_ACCEL=0`` keeps the
    Python ones (the suite runs once each way, against the same coverage.py oracle)."""
    core = _core_in_use("sysmon")
    expected = os.environ.get("RUNCOV_ACCEL", "").strip() != "0"
    assert core.accelerated is expected
    mon = sys.monitoring  # type: ignore[attr-defined]
    line_callback = mon.register_callback(core.tool_id, mon.events.LINE, None)
    mon.register_callback(core.tool_id, mon.events.LINE, line_callback)
    assert (type(line_callback).__name__ == "builtin_function_or_method") is expected


def test_exact_arcs_are_the_same_while_census_sends_other_events_to_python() -> None:
    """With census on, events outside any scope go to the Python callbacks (first hits) while
    an exact scope's events are recorded by the C ones: the exact sets do not change, and the
    census still sees the unscoped first hits."""
    core = _core_in_use("sysmon")

    def run() -> None:
        work.blocking(4)
        work.classify(-2)
        work.classify(7)

    with capture_coverage(source=[SAMPLE]) as alone:
        run()
    core.new_epoch()
    try:
        core.enable_census()
        with capture_coverage(source=[SAMPLE]) as beside_census:
            run()
        assert beside_census.lines == alone.lines
        assert beside_census.arcs == alone.arcs
        work.classify(0)  # outside any scope: a census first hit
        assert _line_of('return "zero"') in core.census_lines()[WORK]
        assert _line_of('return "negative"') not in core.census_lines().get(WORK, set())
    finally:
        core.disable_census()


def test_census_takes_the_line_event_off_code_it_has_hit_all_of(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Census keeps a code object's local LINE event only while some line of it is unhit in
    the epoch (code that carries one runs slower even with every location disabled): once all
    are hit it carries nothing, or, while an exact scope needs the event, from the disarm on.
    An exact scope still measures it, and a new epoch puts the event back and finds its lines
    again."""
    core = _core_in_use("sysmon")
    mon, ev, tool = sys.monitoring, sys.monitoring.events, core.tool_id
    code = work.classify.__code__
    monkeypatch.setattr(core, "_linger_scale", 0.0)  # a close disarms at once
    core.add_roots([SAMPLE])
    with capture_coverage(source=[SAMPLE]):
        pass  # ends what an earlier scope left lingering
    core.new_epoch()
    try:
        core.enable_census()
        work.classify(5)
        assert mon.get_local_events(tool, code) == ev.LINE  # two of its returns not hit yet
        work.classify(-5)
        assert mon.get_local_events(tool, code) == ev.LINE
        with capture_coverage(source=[SAMPLE]) as exact:
            # the last line, hit outside any scope while this one keeps the events on
            outside = threading.Thread(target=work.classify, args=(0,))
            outside.start()
            outside.join()
            assert mon.get_local_events(tool, code) & ev.LINE
            work.classify(0)
        assert exact.lines[WORK] == {_line_of("if n < 0"), _line_of("elif n == 0")} | {
            _line_of('return "zero"')
        }
        assert _line_of('return "zero"') in core.census_lines()[WORK]
        assert mon.get_local_events(tool, code) == 0  # taken off at the disarm
        with capture_coverage(source=[SAMPLE]) as again:
            work.classify(-1)
        assert again.lines[WORK] == {_line_of("if n < 0"), _line_of('return "negative"')}
        assert mon.get_local_events(tool, code) == 0

        core.new_epoch()
        assert mon.get_local_events(tool, code) == ev.LINE
        work.classify(0)
        assert core.census_lines()[WORK] >= {_line_of("elif n == 0"), _line_of('return "zero"')}
        assert _line_of('return "negative"') not in core.census_lines()[WORK]
        work.classify(-1)
        work.classify(1)
        assert mon.get_local_events(tool, code) == 0  # all of it again: off at once
    finally:
        core.disable_census()
    assert mon.get_local_events(tool, code) == 0


_UNTOUCHED = """
import os, sys
import runcov
from runcov.testing import capture_coverage
from runcov.tracing import get_core

root, rate = sys.argv[1], float(sys.argv[2])
sys.path.insert(0, root)
core = get_core()
if rate >= 0:
    runcov.start(source=[root], sample_rate=rate, exporter_endpoint="http://127.0.0.1:9",
                 metrics_interval=0)
else:
    core.add_roots([root])
import untouched_mod

code = untouched_mod.pick.__code__
untouched_mod.pick(1)
seen = id(code) in core._codes
print("instrumented at start", seen or sys.monitoring.get_local_events(core.tool_id, code) != 0)
with capture_coverage(source=[root]) as cov:
    untouched_mod.pick(0)
print("registered after a scope", id(code) in core._codes)
print("lines", sorted(cov.lines[os.path.realpath(untouched_mod.__file__)]))
"""


@pytest.mark.parametrize(
    ("rate", "at_start"), [(-1.0, False), (0.0, False), (0.01, True)], ids=["core", "0%", "1%"]
)
def test_code_is_left_alone_until_exact_scopes_are_expected(
    tmp_path: Path, rate: float, at_start: bool
) -> None:
    """A process that never opens an exact scope (an agent at a rate of 0) carries no
    monitoring event on its code: the core watches code for its first call once exact scopes
    are expected (the agent, sampling above 0, says so at start) or the first one opens. The
    first scope measures the same either way."""
    _core_in_use("sysmon")
    (tmp_path / "untouched_mod.py").write_text(
        "def pick(n):\n    if n:\n        return 1\n    return 0\n"
    )
    done = _run_script(tmp_path, "untouched.py", _UNTOUCHED, str(tmp_path), str(rate))
    assert done.stdout.splitlines() == [
        f"instrumented at start {at_start}",
        "registered after a scope True",
        "lines [2, 4]",
    ]


def test_c_callbacks_never_raise_on_unexpected_arguments() -> None:
    core = _core_in_use("sysmon")
    recorder = core._recorder
    if recorder is None:
        pytest.skip("C callbacks not in use")
    code = work.classify.__code__
    with capture_coverage(source=[SAMPLE]) as cov:
        assert recorder.line() is None
        assert recorder.line(object(), 3) is None
        assert recorder.line(code, "not a line") is None
        assert recorder.exit(code) is None
        assert recorder.exit(object(), 0, None) is None
        assert work.classify(1) == "positive"
    with capture_coverage(source=[SAMPLE]) as plain:
        work.classify(1)
    assert cov.lines == plain.lines
    assert cov.arcs == plain.arcs


@pytest.mark.usefixtures("settrace_tracer")
def test_settrace_core_traces_with_its_c_trace_function_unless_told_not_to() -> None:
    """With the C extension the settrace core installs a C-level trace function (no copy of
    each frame's locals around every event); ``RUNCOV_ACCEL=0`` keeps ``sys.settrace``."""
    core = _core_in_use("settrace")
    expected = os.environ.get("RUNCOV_ACCEL", "").strip() != "0"
    assert core.accelerated is expected
    with capture_coverage(source=[SAMPLE]) as cov:
        installed = sys.gettrace()
        work.classify(1)
    assert (type(installed).__name__ == "Dispatcher") is expected
    assert _line_of('return "positive"') in cov.lines[WORK]


@pytest.mark.usefixtures("settrace_tracer")
def test_a_tracer_installed_over_runcovs_mid_scope_keeps_working() -> None:
    """A debugger or profiler that calls ``sys.settrace`` inside a measured request replaces
    runcov's tracer; the frames runcov was tracing keep their local tracers, which the new
    tracer's trampoline then calls: they must neither fail nor take the new tracer down."""
    core = _core_in_use("settrace")
    seen: list[str] = []

    def foreign(frame: Any, event: str, arg: Any) -> Any:
        seen.append(event)
        return foreign

    scope = core.open_scope(roots=[SAMPLE])
    try:
        assert work.replaces_tracer(foreign, 3) == 3
        assert sys.gettrace() is foreign
        work.classify(1)  # a new frame: only the other tracer sees it
        data = scope.close()
        assert sys.gettrace() is foreign
    finally:
        sys.settrace(None)
    assert "call" in seen
    assert scope.traced is False  # part of the request ran under the other tracer
    assert _line_of("sys.settrace(tracer)") in data.lines[WORK]
    # the old frame's local tracer went on under the other tracer
    assert _line_of("total += i - i + 1") in data.lines[WORK]
    assert _line_of('return "positive"') not in data.lines[WORK]


def test_measured_requests_leave_no_memory_behind() -> None:
    """Thousands of measured requests (functions, generators, exact and census scopes) leave
    the process's Python heap where it was: the C and Python recorders keep nothing of a
    request once its scope is closed and its data read."""
    import gc
    import tracemalloc

    core = get_core()

    def requests(n: int) -> None:
        for i in range(n):
            for mode in ("exact", "census"):
                with capture_coverage(source=[SAMPLE], mode=mode) as cov:
                    work.classify(i % 3 - 1)
                    work.blocking(4)
                    sum(work.squares(3))
                assert cov.lines
            core.new_epoch()

    try:
        requests(300)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        requests(3000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        core.disable_census()  # census scopes turned it on for the process
    # Only what runcov's code, the measured code and this test allocated: a thread left
    # behind by an earlier test (an exporter finishing a send) must not count.
    import runcov

    mine = [
        tracemalloc.Filter(True, os.path.join(os.path.dirname(runcov.__file__), "*")),
        tracemalloc.Filter(True, os.path.join(SAMPLE, "*")),
        tracemalloc.Filter(True, __file__),
    ]
    after, before = after.filter_traces(mine), before.filter_traces(mine)
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, growth


# -- finding the code under the roots (on 3.12: local PY_START, no global one) ---------------


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 12) or get_core().name != "sysmon",
    reason="3.12's superinstructions: formed once at compile time, undone by instrumentation",
)
def test_code_outside_the_roots_keeps_its_superinstructions(tmp_path: Path) -> None:
    """On 3.12 CPython undoes the superinstructions of every code object it instruments, for
    good: a global PY_START would cost the framework's and the standard library's code its
    fused instructions. Code outside the roots that runs while runcov is started keeps them.

    Runs in a fresh interpreter: a tracer of the test run's own (pytest-cov: settrace is built
    on the same instrumentation in 3.12) would undo them itself."""

    script = (
        "import dis, sys\n"
        "from runcov.testing import capture_coverage\n"
        "from runcov.tracing import get_core\n"
        f"root = {str(tmp_path)!r}\n"
        "get_core().add_roots([root])\n"
        "namespace = {}\n"
        "source = 'def outside(a, b):\\n    c = a + b\\n    d = c * a\\n    return c, d\\n'\n"
        "exec(compile(source, '/nonexistent/outside_roots.py', 'exec'), namespace)\n"
        "outside = namespace['outside']\n"
        "def fused():\n"
        "    ops = dis.get_instructions(outside, adaptive=True)\n"
        "    return [i.opname for i in ops if '__' in i.opname]\n"
        "before = fused()\n"
        "for _ in range(10):\n"
        "    outside(2, 3)\n"
        "with capture_coverage(source=[root]):\n"
        "    outside(4, 5)\n"
        "print(before, fused())\n"
    )
    env = environ_without(("COV_CORE_", "COVERAGE_"))
    out = run_python("-c", script, env=env, timeout=60).stdout
    before, after = out.strip().splitlines()[-1].split("] [")
    assert "LOAD_FAST__LOAD_FAST" in before, "the compiler formed no superinstruction here"
    assert before + "]" == "[" + after


def test_a_module_imported_while_a_scope_is_open_is_measured(tmp_path: Path) -> None:
    """Code under the roots first loaded inside a request (a lazy import) is measured in it:
    the module's body and the functions it calls."""
    (tmp_path / "lazy_mod.py").write_text(
        "SIZE = 3\n"
        "def grow(x):\n"
        "    if x < SIZE:\n"
        "        return x + 1\n"
        "    return x\n"
        "START = grow(0)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        get_core().add_roots([str(tmp_path)])  # the root is known before the import
        with capture_coverage(source=[str(tmp_path)]) as cov:
            import lazy_mod

            lazy_mod.grow(7)
        path = os.path.realpath(str(tmp_path / "lazy_mod.py"))
        assert cov.lines[path] == {1, 2, 3, 4, 5, 6}
        assert {(-2, 3), (3, 4), (3, 5), (4, -2), (5, -2)} <= cov.arcs[path]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lazy_mod", None)


def test_a_module_loaded_without_the_import_system_is_measured(tmp_path: Path) -> None:
    """A module whose code is compiled and run by other means (a loader of its own, as test
    runners that rewrite modules have) and put in ``sys.modules`` is found when a scope opens."""
    import types

    source = tmp_path / "handmade_mod.py"
    source.write_text("def pick(x):\n    if x:\n        return 1\n    return 2\n")
    get_core().add_roots([str(tmp_path)])
    module = types.ModuleType("handmade_mod")
    module.__file__ = str(source)
    exec(compile(source.read_text(), str(source), "exec"), module.__dict__)
    sys.modules["handmade_mod"] = module
    try:
        with capture_coverage(source=[str(tmp_path)]) as cov:
            assert module.pick(0) == 2
        path = os.path.realpath(str(source))
        assert cov.lines == {path: {2, 4}}
        assert cov.arcs[path] == {(-1, 2), (2, 4), (4, -1)}
    finally:
        del sys.modules["handmade_mod"]


def test_a_script_run_as_main_is_measured(tmp_path: Path) -> None:
    """A script run as ``__main__`` after the core started (``python app.py`` under zero-code
    activation) is compiled by the interpreter, not loaded by the import system: its code is
    found on the stack and in its namespace when a scope opens."""

    script = tmp_path / "app.py"
    script.write_text(
        "import json, os, sys\n"
        "from runcov.testing import capture_coverage\n"
        "def handle(x):\n"
        "    def inner(y):\n"
        "        return y * 2\n"
        "    if x > 1:\n"
        "        return inner(x)\n"
        "    return 0\n"
        "with capture_coverage(source=[os.path.dirname(os.path.abspath(__file__))]) as cov:\n"
        "    handle(5)\n"
        "print(json.dumps({p: sorted(v) for p, v in cov.lines.items()}))\n"
    )
    starter = (
        "import runpy, sys\n"
        "from runcov.tracing import get_core\n"
        f"get_core().add_roots([{str(tmp_path)!r}])\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    out = run_python("-c", starter, timeout=60).stdout
    import json

    lines = json.loads(out.strip().splitlines()[-1])
    assert lines == {os.path.realpath(str(script)): [4, 5, 6, 7]}


@pytest.mark.skipif(get_core().name != "sysmon", reason="sys.monitoring core only")
def test_only_the_code_a_scope_runs_carries_line_events() -> None:
    """While a scope is open, code that has run but is not called in it only carries the cheap
    watch on its entry (PY_START, PY_RESUME); the code the scope calls carries LINE and
    PY_RETURN from its first call on, in that very frame. Nothing is left armed after."""
    core: Any = get_core()
    mon, ev, tool = sys.monitoring, sys.monitoring.events, core.tool_id
    core.add_roots([SAMPLE])
    core.expect_exact_scopes()  # code under the roots is watched for its first call
    work.classify(1)
    list(work.squares(2))  # both have run: registered
    with capture_coverage(source=[SAMPLE]) as cov:
        assert work.classify(0) == "zero"
        called = mon.get_local_events(tool, work.classify.__code__)
        other = mon.get_local_events(tool, work.squares.__code__)
    assert called == ev.LINE | ev.PY_RETURN
    assert other == ev.PY_START | ev.PY_RESUME
    assert _line_of('return "zero"') in cov.lines[WORK]
    first = work.squares.__code__.co_firstlineno
    assert not any(first <= line < first + 3 for line in cov.lines[WORK])


def test_a_root_added_while_a_scope_runs_loses_none_of_its_lines(tmp_path: Path) -> None:
    """Adding a root re-applies the events of all registered code: code promoted in an open
    scope keeps its line events, so a frame of it that is running goes on being measured."""
    text = "def work(callback):\n    a = 1\n    callback()\n    b = a + 1\n    return b\n"
    other = tmp_path / "other"
    other.mkdir()
    with _module_from(tmp_path, "mid_root_mod", text) as module:
        with capture_coverage(source=[str(tmp_path)]) as cov:
            module.work(lambda: get_core().add_roots([str(other)]))
        path = os.path.realpath(module.__file__)
        assert cov.lines[path] == {2, 3, 4, 5}
        assert cov.arcs[path] == {(-1, 2), (2, 3), (3, 4), (4, 5), (5, -1)}


@pytest.mark.skipif(get_core().name != "sysmon", reason="sys.monitoring core only")
def test_code_running_when_its_root_is_added_carries_no_watch(tmp_path: Path) -> None:
    """Code found running on a thread when its root is added is registered (it ran) and carries
    what all registered code carries now (nothing once no scope is armed), not the PY_START
    that watches code for its first call: its later calls cost nothing more."""
    text = "def serve(started, stop):\n    started.set()\n    stop.wait(30)\n"
    with _module_from(tmp_path, "running_mod", text) as module:
        core: Any = get_core()
        core.expect_exact_scopes()  # roots added from now on are looked at at once
        started, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=module.serve, args=(started, stop))
        thread.start()
        try:
            assert started.wait(30)
            core.add_roots([str(tmp_path)])
            events = sys.monitoring.get_local_events(core.tool_id, module.serve.__code__)
            now = core._local_events()
        finally:
            stop.set()
            thread.join()
        assert id(module.serve.__code__) in core._codes
        assert events == now


@pytest.mark.skipif(get_core().name != "sysmon", reason="sys.monitoring core only")
def test_arming_toggles_only_the_code_that_ran_since_the_last_disarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disarm takes the exact-mode events off the code the scope ran and leaves the watch on
    the rest; a call outside any scope takes a watch off, and marks that code as called by
    unsampled work, so later disarms take its watch off at once. The next arm toggles only the
    code that carries nothing then: code not called between two scopes is not toggled at all."""
    text = (
        "def a():\n    return 1\n\n"
        "def b():\n    return 2\n\n"
        "def c(x):\n    if x:\n        return 3\n    return 4\n"
    )
    core: Any = get_core()
    mon, ev, tool = sys.monitoring, sys.monitoring.events, core.tool_id
    monkeypatch.setattr(core, "_linger_scale", 0.0)  # a close disarms at once
    with capture_coverage(source=[SAMPLE]):
        pass  # ends what an earlier scope left lingering
    with _module_from(tmp_path, "toggled_mod", text) as module:
        core.add_roots([str(tmp_path)])
        module.a(), module.b(), module.c(1)  # all three registered
        names = {id(f.__code__): f.__name__ for f in (module.a, module.b, module.c)}

        def events() -> dict[str, int]:
            return {f.__name__: mon.get_local_events(tool, f.__code__)
                    for f in (module.a, module.b, module.c)}

        assert events() == {"a": 0, "b": 0, "c": 0}
        with capture_coverage(source=[str(tmp_path)]):
            assert events() == {"a": ev.PY_START | ev.PY_RESUME,
                                "b": ev.PY_START | ev.PY_RESUME,
                                "c": ev.PY_START | ev.PY_RESUME}
            module.a()
        watch = ev.PY_START | ev.PY_RESUME
        assert events() == {"a": 0, "b": watch, "c": watch}
        module.b()  # outside any scope: its watch goes
        assert events() == {"a": 0, "b": 0, "c": watch}

        toggled: list[str] = []

        def recording(tool_id: int, code: Any, event_set: int) -> None:
            if id(code) in names:
                toggled.append(names[id(code)])
            mon.set_local_events(tool_id, code, event_set)

        # Every set_local_events of the core goes through ``recording``: the arm and disarm
        # loop's and, where the C callbacks are built, their promotions.
        in_c = core._recorder is not None
        monkeypatch.setattr(core, "_mon", SimpleNamespace(**{
            **{n: getattr(mon, n) for n in dir(mon) if not n.startswith("_")},
            "set_local_events": recording,
        }))
        monkeypatch.setattr(core, "_disarms", 0)  # the next disarm is no probe

        def attach(set_local: Any) -> None:
            core._recorder.attach_watch(core._lock, core._promoted, core._watching, core._bare,
                                        core._hot, set_local, tool, core._EXACT_LOCAL)

        if in_c:
            attach(recording)
        try:
            with capture_coverage(source=[str(tmp_path)]) as cov:
                assert module.c(0) == 4
        finally:
            if in_c:
                attach(mon.set_local_events)
        assert sorted(toggled[:2]) == ["a", "b"]  # the arm: not c, which kept its watch
        # (The promotion of c, in C.) The disarm: the promoted code, and b (unsampled work
        # called it); a keeps its watch.
        assert toggled[2:] == (["c", "c", "b"] if in_c else ["c", "b"])
        assert events() == {"a": watch, "b": 0, "c": 0}
        # A probing disarm leaves every watch on and forgets which code unsampled work called:
        # b, no longer called, is not toggled again.
        from runcov.tracing import sysmon

        monkeypatch.setattr(core, "_disarms", sysmon._PROBE_EVERY - 1)
        with capture_coverage(source=[str(tmp_path)]):
            pass
        assert events() == {"a": watch, "b": watch, "c": watch}
        assert id(module.b.__code__) not in core._hot
        path = os.path.realpath(module.__file__)
        assert cov.lines[path] == {8, 10}
        assert cov.arcs[path] == {(-7, 8), (8, 10), (10, -7)}


@pytest.mark.skipif(get_core().name != "sysmon", reason="sys.monitoring core only")
def test_calls_of_watched_code_are_answered_in_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C callback answers every call of registered code while census is off, without
    calling into Python: in an exact scope it promotes the code (in that very frame), outside
    any scope while armed it returns, and outside any scope once disarmed it takes the watch
    off and marks the code as called by unsampled work. Only a first call (registration)
    goes to Python, or a call while another thread holds the core's lock."""
    core: Any = get_core()
    if core._recorder is None:
        pytest.skip("C extension not built (or RUNCOV_ACCEL=0)")
    mon, ev, tool = sys.monitoring, sys.monitoring.events, core.tool_id
    watch = ev.PY_START | ev.PY_RESUME
    text = (
        "def pick(x):\n    if x:\n        return 1\n    return 2\n\n"
        "def other():\n    return 3\n\n"
        "def third():\n    return 4\n"
    )
    monkeypatch.setattr(core, "_linger_scale", 0.0)  # a close disarms at once
    with capture_coverage(source=[SAMPLE]):
        pass  # ends what an earlier scope left lingering
    with _module_from(tmp_path, "watched_mod", text) as module:
        core.add_roots([str(tmp_path)])
        module.pick(1), module.other(), module.third()  # registered
        fallback = core._recorder.watch_fallback
        seen: list[str] = []

        def counting(code: Any, offset: int) -> Any:
            seen.append(code.co_name)
            return fallback(code, offset)

        monkeypatch.setattr(core._recorder, "watch_fallback", counting)
        with capture_coverage(source=[str(tmp_path)]) as cov:
            assert mon.get_local_events(tool, module.pick.__code__) == watch
            assert module.pick(0) == 2  # in the scope: promoted in C
            assert id(module.pick.__code__) in core._promoted
            assert id(module.pick.__code__) not in core._watching
            assert mon.get_local_events(tool, module.pick.__code__) == ev.LINE | ev.PY_RETURN
            assert core._recorder.promote_cost > 0.0  # timed, for the linger budget
            thread = threading.Thread(target=module.other)  # outside any scope: returns in C
            thread.start()
            thread.join()
            assert mon.get_local_events(tool, module.other.__code__) == watch
        assert seen == []
        assert core._recorder.promote_cost == 0.0  # taken by the core when the scope closed
        assert mon.get_local_events(tool, module.other.__code__) == watch  # left on
        module.other()  # disarmed, outside any scope: C takes the watch off
        assert seen == []
        assert mon.get_local_events(tool, module.other.__code__) == 0
        key = id(module.other.__code__)
        assert key in core._bare and key in core._hot and key not in core._watching
        assert core._recorder.unwatch_cost > 0.0
        # Another thread holds the core's lock: the callback does not wait for it in C, the
        # Python callback does (after the holder lets go).
        assert mon.get_local_events(tool, module.third.__code__) == watch
        held, release = threading.Event(), threading.Event()

        def holder() -> None:
            with core._lock:
                held.set()
                release.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(10)
        threading.Timer(0.05, release.set).start()
        module.third()
        thread.join()
        assert seen == ["third"]
        assert mon.get_local_events(tool, module.third.__code__) == 0
        path = os.path.realpath(module.__file__)
        assert cov.lines[path] == {2, 4}
        assert cov.arcs[path] == {(-1, 2), (2, 4), (4, -1)}


_THREADING_UNDER_ROOTS = """
import sys, threading
from runcov.testing import capture_coverage
import work_mod

with capture_coverage(source=[threading.__file__, sys.argv[1]]) as cap:
    work_mod.work(3)
for _ in range(20):  # scopes that end while others linger: the disarming thread starts
    with capture_coverage(source=[threading.__file__, sys.argv[1]]):
        work_mod.work(2)
        threading.Event().set()
print([sorted(v) for k, v in cap.lines.items() if k.endswith("work_mod.py")])
"""


def test_threading_module_under_the_roots_does_not_hang(tmp_path: Path) -> None:
    """Where the threading module's own code is under the roots (a service started from
    ``/``, whose default root is the working directory), a scope's close that starts the
    agent's disarming thread does not wait on the new thread's first call while holding what
    that call waits for."""
    (tmp_path / "work_mod.py").write_text("def work(n):\n    return n * 2\n")
    done = _run_script(tmp_path, "threads_under_roots.py", _THREADING_UNDER_ROOTS, str(tmp_path))
    assert done.stdout.splitlines()[-1] == "[[2]]"


_FOREIGN_UNDER_A_ROOT = """
import json, os, sys
import packaging.version
from runcov.config import split_list
from runcov.testing import capture_coverage
import own_mod

def run():
    json.dumps({"a": [1, 2]})
    split_list("a,b")
    packaging.version.Version("1.2")
    own_mod.work(1)

for roots in (
    ["/"],
    [os.path.dirname(packaging.version.__file__)],
    [os.path.dirname(json.__file__)],
):
    with capture_coverage(source=roots) as cap:
        run()
    print(sorted(os.path.basename(p) for p, lines in cap.lines.items() if lines))
"""


def test_runcov_the_standard_library_and_installed_packages_are_not_a_services_code(
    tmp_path: Path,
) -> None:
    """A root that holds them (``/``, a project directory with its virtual environment) does
    not measure runcov, the standard library or installed packages, only the code beside
    them; a root named inside one of them (a service installed into site-packages) measures
    the code under it."""
    (tmp_path / "own_mod.py").write_text("def work(n):\n    return n * 2\n")
    out = _run_script(tmp_path, "foreign.py", _FOREIGN_UNDER_A_ROOT).stdout.splitlines()
    assert out[0] == "['foreign.py', 'own_mod.py']"  # the script's run() and its module
    assert out[1] == "['version.py']"
    assert "encoder.py" in out[2] and "own_mod.py" not in out[2] and "version.py" not in out[2]
