"""Exceptions thrown into suspended generators and coroutines (``throw()``, a task's
cancellation) on the cores, beyond the corpus cases of ``tests/corpus/throws.py``.

``throw()`` resumes a frame without running its ``RESUME``: the sys.monitoring core promotes
such code on ``PY_THROW`` (a global event, with a callback only while exact scopes are armed),
which a frame whose code was disarmed between two steps of its asyncio task needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
from typing import Any, Awaitable, Callable

import coverage
import pytest

from runcov.testing import capture_coverage
from runcov.tracing import get_core
from tests.corpus import throws
from tests.test_differential import CORPUS_DIR

THROWS = throws.__file__


def _waiter_lines(*texts: str) -> set[int]:
    lines, first = inspect.getsourcelines(throws.waiter)
    return {first + i for i, text in enumerate(lines) if text.strip() in texts}


#: Lines of ``throws.waiter`` that only its cancellation runs.
HANDLER_LINES = _waiter_lines(
    "except asyncio.CancelledError:", 'log.append("cancelled")', "raise", 'log.append("finally")'
)


def _sysmon_core() -> Any:
    core = get_core()
    if core.name != "sysmon":
        pytest.skip("sys.monitoring core not in use")
    return core


async def _cancel_waiter(between: Callable[[], Awaitable[None]]) -> list[str]:
    """Start ``throws.waiter`` as a task, run ``between`` while it waits, cancel it."""
    started, gate = asyncio.Event(), asyncio.Event()
    log: list[str] = []
    task = asyncio.ensure_future(throws.waiter(started, gate, log))
    await started.wait()
    await between()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return log


def _coveragepy_arcs() -> set[tuple[int, int]]:
    """coverage.py's arcs (branch=True) of ``throws.py`` for the same run."""

    async def nothing() -> None:
        await asyncio.sleep(0)

    cov = coverage.Coverage(branch=True, data_file=None, source=[CORPUS_DIR])
    cov.start()
    try:
        log = asyncio.run(_cancel_waiter(nothing))
    finally:
        cov.stop()
    assert log == ["cancelled", "finally"]
    data = cov.get_data()
    try:
        return set(data.arcs(THROWS) or ())
    finally:
        data.close(force=True)


def test_cancelled_task_disarmed_between_its_steps_records_its_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The waiting task's code is disarmed (its promotion taken back) before the cancellation
    resumes it with ``throw()``: the lines of its ``except`` and ``finally`` are recorded all
    the same, with coverage.py's arcs."""
    core = _sysmon_core()
    monkeypatch.setattr(core, "linger", 0.0)
    code = throws.waiter.__code__
    seen: dict[str, Any] = {}

    async def until_disarmed() -> None:
        # (this task's own steps arm the code again: the waiter's carries only the watch then)
        deadline = time.monotonic() + 10
        while id(code) in core._promoted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        seen["promoted"] = id(code) in core._promoted
        seen["registered"] = id(code) in core._codes

    async def main() -> tuple[list[str], Any]:
        async with capture_coverage(source=[CORPUS_DIR]) as cov:
            log = await _cancel_waiter(until_disarmed)
        return log, cov

    log, cov = asyncio.run(main())
    assert log == ["cancelled", "finally"]
    assert seen == {"promoted": False, "registered": True}, "the waiter's code stayed armed"
    assert len(HANDLER_LINES) == 4
    assert cov.lines[THROWS] >= HANDLER_LINES
    ours = {arc for arc in cov.arcs[THROWS] if arc[0] != arc[1]}
    theirs = {arc for arc in _coveragepy_arcs() if arc[0] != arc[1]}
    assert ours == theirs


def test_throw_event_is_set_from_the_start_with_a_callback_only_while_armed() -> None:
    """``PY_THROW`` is in the tool's global events for its lifetime (changing them would
    re-instrument every code object of the process); its callback is registered while exact
    scopes are armed and taken off with the disarm."""
    core = _sysmon_core()
    mon = sys.monitoring  # type: ignore[attr-defined]
    throw_event = mon.events.PY_THROW

    def callback() -> Any:
        registered = mon.register_callback(core.tool_id, throw_event, None)
        mon.register_callback(core.tool_id, throw_event, registered)
        return registered

    def disarmed() -> bool:
        deadline = time.monotonic() + 10
        while core._exact_armed and time.monotonic() < deadline:
            time.sleep(0.005)
        return not core._exact_armed

    assert disarmed()
    assert mon.get_events(core.tool_id) & throw_event
    assert callback() is None
    with capture_coverage(source=[CORPUS_DIR]):
        assert core._exact_armed
        assert callback() is not None
        assert mon.get_events(core.tool_id) & throw_event
    assert disarmed()
    assert callback() is None
    assert mon.get_events(core.tool_id) & throw_event


def _arcs_both_ways(run: Callable[[], object]) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """The arcs of ``throws.py`` (self-arcs aside) that runcov's core (``capture_coverage``)
    and coverage.py (branch=True) record for ``run()``: (runcov's, coverage.py's)."""
    cov = coverage.Coverage(branch=True, data_file=None, source=[CORPUS_DIR])
    cov.start()
    try:
        run()
    finally:
        cov.stop()
    data = cov.get_data()
    try:
        theirs = set(data.arcs(THROWS) or ())
    finally:
        data.close(force=True)
    with capture_coverage(source=[CORPUS_DIR]) as cap:
        run()
    ours = set(cap.arcs.get(THROWS, ()))
    return _without_self_arcs(ours), _without_self_arcs(theirs)


def _without_self_arcs(arcs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {arc for arc in arcs if arc[0] != arc[1]}


def _start_of(func: Callable[..., object], text: str) -> tuple[int, int]:
    """The arc from ``func``'s start to its line ``text``: how coverage.py's tracer on 3.11
    has a throw() at a plain yield enter the handler that catches it."""
    lines, first = inspect.getsourcelines(func)
    (line,) = (first + i for i, source in enumerate(lines) if source.strip() == text)
    return -func.__code__.co_firstlineno, line


def _drive(gen: Any, *thrown: BaseException) -> None:
    """Starts ``gen``, throws each of ``thrown`` in (caught there or not), closes it. This
    module is outside the source roots: no probe runs in the generators' consumer."""
    next(gen)
    for error in thrown:
        with contextlib.suppress(type(error), StopIteration):
            gen.throw(error)
    gen.close()


def test_a_generator_whose_consumer_runs_no_probe_enters_its_handlers_as_for_coveragepy() -> None:
    """Generators of the measured code driven by code outside the roots (a framework's, or
    ``@runcov.critical``'s wrapper, between whose steps the scope is unbound): nothing parks
    a suspended generator's frame, and a throw() or close() resumes it in a handler. The
    handler is entered from the function's start where the exception was thrown in at a
    plain yield or where close() enters a ``yield from``, once per throw(), as coverage.py's
    tracer has it."""

    def run() -> None:
        log: list[str] = []
        _drive(throws.guarded(3), KeyError("caught"), ValueError("through the finally"))
        _drive(throws.cleaned(1))
        _drive(throws.relaying(log))
        _drive(throws.reraising(log), KeyError("re-raised"))
        _drive(throws.looping(log), KeyError("1"), KeyError("2"), KeyError("3"))
        _drive(throws.guarding(log), KeyError("suppressed"))
        assert log == [
            *("finally", "caught", "finally"),
            *("caught", "caught", "caught"),
            *("guard", "after"),
        ]

    ours, theirs = _arcs_both_ways(run)
    if sys.version_info[:2] == (3, 11):
        assert {
            _start_of(throws.guarded, "except KeyError:"),
            _start_of(throws.cleaned, "n = 0"),
            _start_of(throws.relaying, 'log.append("finally")'),
            _start_of(throws.reraising, "except KeyError:"),
            _start_of(throws.looping, "except KeyError:"),
            _start_of(throws.guarding, "with contextlib.suppress(KeyError):"),
        } <= theirs
    assert ours == theirs


def test_throws_one_after_another_enter_the_handlers_as_for_coveragepy() -> None:
    """The same, with the consumer in the measured code (its probes park the suspended
    generators): a close() at a ``yield from``, a handler that re-raises into a ``finally``
    (one entry from the function's start, not two), the same handler caught into again and
    again (each throw() enters it from the start), a ``with`` statement's exit."""
    ours, theirs = _arcs_both_ways(throws.throw_in_turn)
    assert throws.throw_in_turn()[-2:] == ["after", "done"]
    if sys.version_info[:2] == (3, 11):
        assert _start_of(throws.relaying, 'log.append("finally")') in theirs
    assert ours == theirs
