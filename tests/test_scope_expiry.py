"""Exact scopes older than the core's maximum age stop measuring and keep nothing armed.

A request whose scope never closes (a websocket, a stuck handler, a leaked span) would keep the
code it ran armed for every thread for as long as it lives. Past the maximum age its scope
expires: what it recorded until then is its result, it records nothing more (nor does work it
handed to other threads or tasks), and the code is disarmed unless other scopes need it; those
keep measuring exactly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from runcov.testing import capture_coverage
from runcov.tracing import get_core
from tests.sample import work
from tests.test_fork_coexist import fork_and_run

SAMPLE = str(Path(work.__file__).parent)
#: How long a wait may block before the test gives up (a hang guard, not a timing check).
WAIT = 30.0
#: The maximum age the tests give scopes (seconds).
AGE = 0.3


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.005)


@pytest.fixture
def max_age(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """Set the core's maximum scope age for the test (set back after it); on the sysmon core,
    the last scope's end disarms at once (no linger)."""
    core = get_core()
    if core.name == "sysmon":
        monkeypatch.setattr(core, "_linger_scale", 0.0)
    before = core.max_scope_age
    yield lambda seconds: core.set_max_scope_age(seconds)
    core.set_max_scope_age(before)


def armed_for_everyone(fn: Callable[..., Any]) -> Optional[bool]:
    """Whether ``fn``'s code makes every thread that runs it pay for exact scopes now: on
    the sysmon core, it carries the ``LINE`` event; with 3.11's exact probes, they are armed.
    None where arming is per thread (the settrace tracer)."""
    core = get_core()
    if core.name == "sysmon":
        mon = sys.monitoring  # type: ignore[attr-defined]
        return bool(mon.get_local_events(core.tool_id, fn.__code__) & mon.events.LINE)
    if getattr(core, "exact_by_probes", False):
        return bool(core._probes.exact_armed)  # type: ignore[attr-defined]
    return None


def alone(run: Callable[[], Any]) -> tuple[dict[str, set[int]], dict[str, set[Any]]]:
    """What a scope records of ``run()`` with nothing else going on (non-empty files)."""
    with capture_coverage(source=[SAMPLE]) as cov:
        run()
    return (
        {p: set(v) for p, v in cov.lines.items() if v},
        {p: set(v) for p, v in cov.arcs.items() if v},
    )


def recorded(cov: capture_coverage) -> tuple[dict[str, set[int]], dict[str, set[Any]]]:
    return (
        {p: set(v) for p, v in cov.lines.items() if v},
        {p: set(v) for p, v in cov.arcs.items() if v},
    )


def runcov_traces_this_thread() -> bool:
    core = get_core()
    return core.name == "settrace" and not getattr(core, "exact_by_probes", False)


def test_an_old_scope_stops_measuring_and_disarms_the_code(
    max_age: Callable[[float], None],
) -> None:
    """Past the maximum age the scope keeps what ran before the cut and nothing after, not in
    its thread, not in work it hands to a pool; the code it armed is disarmed for the other
    threads that run it (or, for the tracer, the thread's tracer leaves)."""
    max_age(AGE)
    before = alone(lambda: work.classify(0))
    other_thread: list[Optional[bool]] = []
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        capture_coverage(source=[SAMPLE]) as cov,
    ):
        work.classify(0)
        scope: Any = cov._scope
        armed_before = armed_for_everyone(work.classify)
        wait_until(lambda: scope.expired, "the scope expires")
        work.classify(-1)  # after the cut: not its
        assert pool.submit(work.blocking, 4).result() == 6  # handed off after the cut
        tracer_after = sys.gettrace()
        # Another thread running the same code now pays nothing for this scope.
        wait_until(lambda: not armed_for_everyone(work.classify), "the code is disarmed")
        runner = threading.Thread(
            target=lambda: other_thread.append(
                (work.classify(3), armed_for_everyone(work.classify))[1]
            )
        )
        runner.start()
        runner.join(WAIT)
    assert recorded(cov) == before
    if runcov_traces_this_thread():
        assert armed_before is None
        assert tracer_after is None  # the tracer left at the thread's next call
    else:
        assert armed_before is True
        assert other_thread == [False]
    assert scope.holds == 0


def test_other_scopes_keep_measuring_exactly_when_one_expires(
    max_age: Callable[[float], None],
) -> None:
    """A scope open across another's expiry keeps the code armed and gets exactly its own
    lines and arcs; the expired one only what it ran before the cut. Then all is disarmed."""
    max_age(AGE)
    want_expired = alone(lambda: work.classify(0))
    want_other = alone(lambda: (work.blocking(2), work.classify(5), work.blocking(3)))
    opened, cut, after, finished = (threading.Event() for _ in range(4))
    box: dict[str, Any] = {}

    def long_request() -> None:
        with capture_coverage(source=[SAMPLE]) as cov:
            box["scope"] = cov._scope
            work.classify(0)
            opened.set()
            cut.wait(WAIT)
            work.classify(-1)
            work.blocking(5)
            assert list(work.squares(3)) == [0, 1, 4]  # code only this one runs
            after.set()
            finished.wait(WAIT)
        box["expired"] = cov

    thread = threading.Thread(target=long_request)
    thread.start()
    try:
        assert opened.wait(WAIT)
        max_age(0)  # the next scope has no maximum age: it outlives the first one's
        with capture_coverage(source=[SAMPLE]) as other:
            work.blocking(2)
            wait_until(lambda: box["scope"].expired, "the first scope expires")
            cut.set()
            assert after.wait(WAIT)
            work.classify(5)
            work.blocking(3)
            still_armed = armed_for_everyone(work.classify)
            # The expired scope's work promoted nothing (sysmon: code is armed per code object)
            squares_armed = armed_for_everyone(work.squares)
    finally:
        cut.set()
        finished.set()
        thread.join(WAIT)
    assert recorded(box["expired"]) == want_expired
    assert recorded(other) == want_other
    assert still_armed in (True, None)
    if get_core().name == "sysmon":
        assert squares_armed is False
    wait_until(lambda: not armed_for_everyone(work.classify), "the code is disarmed")


def test_an_expired_asyncio_scope_records_nothing_more_in_its_steps_or_threads(
    max_age: Callable[[float], None],
) -> None:
    """A scope opened in a task expires between its steps: the task's later steps and the
    work it hands to threads record nothing, and the step gate is taken out."""
    from runcov.tracing._scope import _step_gate

    max_age(AGE)
    want = alone(lambda: work.classify(0))

    async def request() -> tuple[capture_coverage, int]:
        async with capture_coverage(source=[SAMPLE]) as cov:
            work.classify(0)
            scope: Any = cov._scope
            deadline = time.monotonic() + WAIT
            while not scope.expired and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            users = _step_gate.users
            work.classify(-1)
            assert await asyncio.to_thread(work.blocking, 4) == 6
            await asyncio.sleep(0)
            work.classify(7)
        return cov, users

    cov, gate_users = asyncio.run(request())
    assert recorded(cov) == want
    assert gate_users == 0


def test_no_maximum_age_means_no_expiry(max_age: Callable[[float], None]) -> None:
    max_age(0)
    want = alone(lambda: (work.classify(0), work.classify(-1)))
    with capture_coverage(source=[SAMPLE]) as cov:
        work.classify(0)
        scope: Any = cov._scope
        time.sleep(2 * AGE)
        work.classify(-1)
    assert not scope.expired
    assert recorded(cov) == want


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_closes_an_inherited_scope_and_cuts_its_own(
    max_age: Callable[[float], None],
) -> None:
    """The child closes the scope it inherited at once (the parent's expiry is not the
    child's), and its own scopes expire on a thread of its own."""
    max_age(AGE)
    want = alone(lambda: work.classify(0))

    def child() -> tuple[float, Any]:
        started = time.monotonic()
        parent.__exit__(None, None, None)
        took = time.monotonic() - started
        with capture_coverage(source=[SAMPLE]) as own:
            work.classify(0)
            scope: Any = own._scope
            wait_until(lambda: scope.expired, "the child's scope expires")
            work.classify(-1)
        return took, recorded(own)

    with capture_coverage(source=[SAMPLE]) as parent:
        work.classify(0)
        took, got = fork_and_run(child)
        scope: Any = parent._scope
        wait_until(lambda: scope.expired, "the parent's scope expires")
        work.classify(-1)
    assert took < 0.5, took
    assert got == want
    assert recorded(parent) == want


@pytest.mark.parametrize("seconds", [1e10, sys.float_info.max])
def test_a_maximum_age_too_far_off_for_a_timeout_keeps_the_thread_running(
    max_age: Callable[[float], None], seconds: float
) -> None:
    """``max_scope_seconds`` takes any finite number of seconds: one beyond what a lock can
    wait for (about 9.2e9 s) must not end the expiry's thread with an OverflowError, and a
    shorter age set later still cuts scopes."""
    expiry: Any = get_core()._expiry
    errors: list[Any] = []
    hook = threading.excepthook
    threading.excepthook = errors.append
    try:
        max_age(seconds)
        with capture_coverage(source=[SAMPLE]) as cov:  # (a deadline far off is slept on)
            far: Any = cov._scope
            work.classify(0)
            time.sleep(0.1)
        time.sleep(0.1)  # (no scope open: the thread sleeps one maximum age)
        assert not far.expired
        assert expiry._thread is not None and expiry._thread.is_alive()
        max_age(AGE)
        with capture_coverage(source=[SAMPLE]) as cut:
            scope: Any = cut._scope
            wait_until(lambda: scope.expired, "a scope expires at the shorter age")
    finally:
        threading.excepthook = hook
    assert [e.exc_type for e in errors] == []


def test_a_close_during_the_expiry_gets_what_was_recorded_before_it(
    max_age: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The opener closes its scope while the expiry's thread is still taking its records:
    the close waits for them and returns them."""
    from runcov.tracing._scope import ScopeState

    taking = threading.Event()
    take = ScopeState._take_records

    def slow_on_the_expiry_thread(self: Any) -> Any:
        if threading.current_thread().name == "runcov-expiry":
            taking.set()
            time.sleep(0.3)
        return take(self)

    monkeypatch.setattr(ScopeState, "_take_records", slow_on_the_expiry_thread)
    max_age(AGE)
    before = alone(lambda: work.classify(0))
    with capture_coverage(source=[SAMPLE]) as cov:
        work.classify(0)
        scope: Any = cov._scope
        assert taking.wait(WAIT)
        assert scope.expired and scope.result is None
    assert recorded(cov) == before
