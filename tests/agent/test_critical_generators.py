"""``@runcov.critical`` on generator and async generator functions: each generator's run is one
request, from its first resumption to its end, measuring its body across all its resumptions
(``send``, ``throw``, ``close`` and their async forms included) and nothing its consumer runs
between two of them.

The ground truth is coverage.py (branch mode) running the same undecorated generator, driven
the same way, restricted to the generator's own lines; the consumers live in this file too, so
coverage.py sees their lines where the agent must not. Where a throw() or close() lands in a
suspended generator, runcov's own core must measure the undecorated one as coverage.py does
too (see ``InFile.reference`` in ``tests/agent/measured.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import random
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer
from typing import Any, Callable

import pytest

import runcov
from runcov.agent import Agent
from runcov.testing import capture_coverage
from runcov.tracing._scope import _current
from tests.agent import otlp_sink
from tests.agent.measured import InFile, exported, lines_of, span
from tests.agent.otlp_sink import HTTPSink
from tests.integration.otlp import wait_for

HERE = os.path.realpath(__file__)
FILE = os.path.basename(HERE)
Arc = tuple[int, int]

# -- the generators ------------------------------------------------------------------------


def orders(count: int) -> Iterator[int]:
    """Numbers, odd ones negated."""
    for number in range(count):
        if number % 2:
            yield -number
        else:
            yield number


def tally(closed: list[int]) -> Iterator[int]:
    """Sums what is sent; a ValueError thrown in starts again from 0; closing notes the sum."""
    total = 0
    try:
        while True:
            try:
                value = yield total
            except ValueError:
                total = 0
            else:
                total += value
    finally:
        closed.append(total)


def batch(size: int) -> Iterator[int]:
    """``size`` items; returns how many were taken."""
    taken = 0
    for number in range(size):
        yield number
        taken += 1
    return taken


def session(log: list[str]) -> Iterator[int]:
    """A transaction for ``contextlib.contextmanager``."""
    log.append("open")
    try:
        yield len(log)
    except LookupError:
        log.append("rolled back")
        raise
    else:
        log.append("committed")
    finally:
        log.append("closed")


def rows(closed: list[int]) -> Iterator[int]:
    """Rows of a cursor, closed however the reading ends."""
    number = -1
    try:
        for number in range(10):
            yield number
    finally:
        closed.append(number)


async def feed(count: int) -> AsyncIterator[int]:
    """:func:`orders`, waiting before each."""
    for number in range(count):
        await asyncio.sleep(0)
        if number % 2:
            yield -number
        else:
            yield number


async def ticker(closed: list[int]) -> AsyncIterator[int]:
    """Counts its resumptions; a KeyError thrown in starts again; closing notes the count."""
    count = 0
    try:
        while True:
            try:
                yield count
            except KeyError:
                count = 0
                await asyncio.sleep(0)
            else:
                count += 1
    finally:
        await asyncio.sleep(0)
        closed.append(count)


async def asession(log: list[str]) -> AsyncIterator[int]:
    """:func:`session` for ``contextlib.asynccontextmanager``."""
    await asyncio.sleep(0)
    log.append("open")
    try:
        yield len(log)
    except LookupError:
        log.append("rolled back")
        raise
    else:
        log.append("committed")
    finally:
        await asyncio.sleep(0)
        log.append("closed")


# -- their consumers -----------------------------------------------------------------------


def note(value: int) -> int:
    """What a consumer does between two resumptions: its own work, not the generator's."""
    if value < 0:
        return -value
    return value


def consume(make: Callable[[int], Iterator[int]]) -> int:
    total = 0
    for item in make(4):
        total += note(item)
    return total


def drive_tally(
    make: Callable[[list[int]], Any], between: Callable[[], Any] = lambda: None
) -> tuple[list[int], list[int]]:
    closed: list[int] = []
    gen = make(closed)
    seen = [next(gen)]
    between()
    seen.append(gen.send(5))
    note(-1)
    seen.append(gen.send(7))
    between()
    seen.append(gen.throw(ValueError("start again")))
    seen.append(gen.send(2))
    note(-2)
    between()
    gen.close()
    return seen, closed


def relay(make: Callable[[int], Iterator[int]]) -> Iterator[int]:
    """A consumer that delegates to ``make(3)`` and yields what it returned."""
    taken = yield from make(3)
    yield note(taken)


def relay_and_throw(make: Callable[[int], Iterator[int]]) -> KeyError:
    gen = relay(make)
    next(gen)
    error = KeyError("stop")
    try:
        gen.throw(error)
    except KeyError as exc:
        return exc
    raise AssertionError("the KeyError did not come back")


def commit(make_cm: Callable[[list[str]], Any]) -> list[str]:
    log: list[str] = []
    with make_cm(log) as opened:
        note(opened)
    return log


def roll_back(make_cm: Callable[[list[str]], Any]) -> list[str]:
    log: list[str] = []
    error = KeyError("missing")
    try:
        with make_cm(log):
            note(-1)
            raise error
    except KeyError as exc:
        assert exc is error
    return log


async def acommit(make_cm: Callable[[list[str]], Any]) -> list[str]:
    log: list[str] = []
    async with make_cm(log) as opened:
        note(opened)
    return log


async def aroll_back(make_cm: Callable[[list[str]], Any]) -> list[str]:
    log: list[str] = []
    error = KeyError("missing")
    try:
        async with make_cm(log):
            note(-1)
            raise error
    except KeyError as exc:
        assert exc is error
    return log


async def busy(done: asyncio.Event) -> None:
    """Another task running code of this file while the consumer's task waits."""
    while not done.is_set():
        note(-3)
        await asyncio.sleep(0)


async def consume_async(make: Callable[[int], AsyncIterator[int]]) -> int:
    done = asyncio.Event()
    other = asyncio.ensure_future(busy(done))
    total = 0
    async for item in make(4):
        total += note(item)
        await asyncio.sleep(0)
    done.set()
    await other
    return total


async def drive_ticker(
    make: Callable[[list[int]], Any], between: Callable[[], Any] = lambda: None
) -> tuple[list[int], list[int]]:
    closed: list[int] = []
    gen = make(closed)
    seen = [await gen.__anext__(), await gen.asend(None)]
    note(-1)
    await asyncio.sleep(0)
    between()
    seen.append(await gen.athrow(KeyError("start again")))
    seen.append(await gen.__anext__())
    await asyncio.sleep(0)
    between()
    await gen.aclose()
    return seen, closed


def read_two(make: Callable[[list[int]], Iterator[int]], closed: list[int]) -> Iterator[int]:
    gen = make(closed)
    next(gen)
    note(next(gen))
    return gen


def abandon(make: Callable[[list[int]], Iterator[int]], closed: list[int]) -> None:
    read_two(make, closed)  # dropped unfinished


def across_threads(make: Callable[[int], Iterator[int]]) -> list[int]:
    gen = make(3)
    seen = [next(gen)]

    def step() -> None:
        seen.append(note(next(gen, 99)))

    for _ in range(3):
        worker = threading.Thread(target=step)
        worker.start()
        worker.join()
    return seen


# -- ground truth and what was exported ----------------------------------------------------


_HERE = InFile(HERE)
coverage_py, captured, reference = _HERE.coverage_py, _HERE.captured, _HERE.reference


def job(func: Any) -> str:
    """The endpoint of ``func`` marked critical under its own name."""
    return f"job {func.__module__}.{func.__qualname__}"


def active(core: Any) -> int:
    """Activations of exact scopes the core counts now (what keeps code armed)."""
    if core.name == "sysmon":
        return int(core._active)
    if getattr(core, "exact_by_probes", False):
        return int(core._probes.exact_armed)
    return sum(not scope.closed for scope in core._tls.open)


def linger_out(core: Any) -> None:
    """What the sys.monitoring core does once no scope was active for its linger: disarm (a
    throw() or close() then resumes a generator with no event to arm its code again)."""
    if core.name == "sysmon":
        core._linger_ran_out()


def _server_in_range(address: Any, handler: Any) -> ThreadingHTTPServer:
    ports = list(range(32100, 33000))
    random.shuffle(ports)
    for port in ports:
        try:
            return ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            continue
    raise OSError("no free loopback port in 32100-32999")


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPSink]:
    """A real OTLP/HTTP receiver on a loopback port of 32100-32999."""
    monkeypatch.setattr(otlp_sink, "ThreadingHTTPServer", _server_in_range)
    with HTTPSink() as s:
        yield s


@pytest.fixture
def start_agent(sink: HTTPSink) -> Iterator[Callable[..., Agent]]:
    """Start runcov measuring this file, exporting to ``sink``, every request sampled."""

    def start(**overrides: Any) -> Agent:
        options: dict[str, Any] = {
            "source": [HERE],
            "exporter_endpoint": sink.endpoint,
            "sample_rate": 1.0,
            "max_per_second": 0,
            "saturation": False,
            "metrics_interval": 0,
            "service_name": "jobs",
        }
        options.update(overrides)
        return runcov.start(**options)

    yield start
    runcov.stop(timeout=5.0)


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Exceptions raised where nobody could catch them (a finalizer's), during the test."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


# -- tests ---------------------------------------------------------------------------------


def test_a_generator_consumed_by_a_for_loop_is_one_request_of_its_body(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, ran = coverage_py(lambda: consume(orders), orders)
    agent = start_agent()
    measured = runcov.critical(orders)
    assert inspect.isgeneratorfunction(measured)
    assert inspect.isgenerator(measured(0))
    assert consume(measured) == 6
    (run,) = exported(agent, sink, job(orders))
    assert run.status_class == "ok"
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}
    # The consumer's loop and what it calls between two resumptions ran, outside the request.
    consumer = lines_of(consume, note)
    assert ran & consumer
    assert not run.lines[FILE] & consumer


def test_send_throw_and_close_run_inside_the_request_and_nothing_between_them(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, ran = reference(lambda: drive_tally(tally), tally)
    agent = start_agent()
    bound: list[Any] = []

    def between() -> None:
        bound.append(_current.get())  # (the consumer's context: no scope bound)
        linger_out(agent.core)  # (suspended a long time: a throw or close comes later)

    assert drive_tally(runcov.critical(tally), between) == ([0, 5, 12, 0, 2], [2])
    assert bound == [None, None, None]
    (run,) = exported(agent, sink, job(tally))
    assert run.status_class == "ok"
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}
    consumer = lines_of(drive_tally, note)
    assert ran & consumer
    assert not run.lines[FILE] & consumer


def test_yield_from_delegates_sends_throws_and_the_return_value(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, _ = coverage_py(lambda: list(relay(batch)), batch)
    thrown_body, thrown_arcs, _ = reference(lambda: relay_and_throw(batch), batch)
    agent = start_agent()
    measured = runcov.critical(batch)
    assert list(relay(measured)) == [0, 1, 2, 3]
    error = relay_and_throw(measured)
    assert error.args == ("stop",)
    runs = {r.status_class: r for r in exported(agent, sink, job(batch), 2)}
    assert (runs["ok"].lines, runs["ok"].arcs) == ({FILE: body}, {FILE: arcs})
    assert (runs["error"].lines, runs["error"].arcs) == ({FILE: thrown_body}, {FILE: thrown_arcs})


def test_an_async_generator_consumed_by_async_for_is_one_request_of_its_body(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, ran = coverage_py(lambda: asyncio.run(consume_async(feed)), feed)
    agent = start_agent()
    measured = runcov.critical(feed)
    assert inspect.isasyncgenfunction(measured)
    assert inspect.isasyncgen(measured(0))
    assert asyncio.run(consume_async(measured)) == 6
    (run,) = exported(agent, sink, job(feed))
    assert run.status_class == "ok"
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}
    # Neither the consumer's code nor another task's, run while the generator waited.
    others = lines_of(consume_async, note, busy)
    assert ran & lines_of(busy) and ran & lines_of(note)
    assert not run.lines[FILE] & others


def test_asend_athrow_and_aclose_run_inside_the_request(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, _ = reference(lambda: asyncio.run(drive_ticker(ticker)), ticker)
    agent = start_agent()
    bound: list[Any] = []

    def between() -> None:
        bound.append(_current.get())
        linger_out(agent.core)

    assert asyncio.run(drive_ticker(runcov.critical(ticker), between)) == ([0, 1, 0, 1], [1])
    assert bound == [None, None]
    (run,) = exported(agent, sink, job(ticker))
    assert run.status_class == "ok"
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}


@pytest.mark.parametrize("order", ["contextmanager over critical", "critical over contextmanager"])
def test_contextmanager_and_critical_stack_either_way(
    start_agent: Callable[..., Agent], sink: HTTPSink, order: str
) -> None:
    make_cm = contextlib.contextmanager(session)
    committed = coverage_py(lambda: commit(make_cm), session)
    rolled_back = reference(lambda: roll_back(make_cm), session)
    amake_cm = contextlib.asynccontextmanager(asession)
    acommitted = coverage_py(lambda: asyncio.run(acommit(amake_cm)), asession)
    arolled_back = reference(lambda: asyncio.run(aroll_back(amake_cm)), asession)
    agent = start_agent()
    if order == "contextmanager over critical":
        measured = contextlib.contextmanager(runcov.critical(session))
        ameasured = contextlib.asynccontextmanager(runcov.critical(asession))
    else:
        measured = runcov.critical(contextlib.contextmanager(session))
        ameasured = runcov.critical(contextlib.asynccontextmanager(asession))
    assert commit(measured) == ["open", "committed", "closed"]
    assert roll_back(measured) == ["open", "rolled back", "closed"]
    assert asyncio.run(acommit(ameasured)) == ["open", "committed", "closed"]
    assert asyncio.run(aroll_back(ameasured)) == ["open", "rolled back", "closed"]
    for func, ok, error in (
        (session, committed, rolled_back),
        (asession, acommitted, arolled_back),
    ):
        runs = {r.status_class: r for r in exported(agent, sink, job(func), 2)}
        assert (runs["ok"].lines, runs["ok"].arcs) == ({FILE: ok[0]}, {FILE: ok[1]})
        assert (runs["error"].lines, runs["error"].arcs) == ({FILE: error[0]}, {FILE: error[1]})
        assert not runs["ok"].lines[FILE] & lines_of(commit, acommit, note)


def test_an_abandoned_generator_ends_its_request_when_it_is_finalized(
    start_agent: Callable[..., Agent], sink: HTTPSink, unraisable: list[Any]
) -> None:
    # Its finalizer closes it: the reference is the same generator closed there.
    body, arcs, _ = reference(lambda: read_two(rows, []).close(), rows)
    agent = start_agent()
    closed: list[int] = []
    abandon(runcov.critical(rows), closed)
    assert closed == [1]  # finalized as soon as it was dropped, its finally in the request
    # Dropped in a reference cycle: the garbage collector finalizes it.
    cycle: list[Any] = [read_two(runcov.critical(rows), closed)]
    cycle.append(cycle)
    del cycle
    gc.collect()
    assert closed == [1, 1]
    for run in exported(agent, sink, job(rows), 2):
        assert run.status_class == "ok"
        assert run.lines == {FILE: body}
        assert run.arcs == {FILE: arcs}
    assert max(body) == span(rows)[1]
    assert agent._in_flight == 0
    assert active(agent.core) == 0
    assert unraisable == []


async def leave(make: Callable[[list[int]], Any], closed: list[int], how: str) -> Any:
    """Read two items of ``make(closed)``, then leave it to the event loop: ``dropped``,
    dropped in a reference ``cycle``, or ``kept`` past the loop's end (the loop finalizes it
    then); ``closed`` (the reference) closes it instead."""
    gen = make(closed)
    await gen.__anext__()
    note(await gen.__anext__())
    if how == "closed":
        await gen.aclose()
    elif how == "cycle":
        cycle = [gen, gen]
        cycle[1] = cycle
        del cycle
    elif how == "kept":
        return gen
    del gen
    gc.collect()
    for _ in range(100):  # (the loop closes it in a task of its own)
        if closed:
            break
        await asyncio.sleep(0)
    return None


@pytest.mark.parametrize("how", ["dropped", "cycle", "kept"])
def test_an_async_generator_left_to_the_event_loop_ends_its_request(
    start_agent: Callable[..., Agent], sink: HTTPSink, unraisable: list[Any], how: str
) -> None:
    problems: list[dict[str, Any]] = []

    async def main(make: Any, closed: list[int], how: str) -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        return await leave(make, closed, how)

    def run(make: Any, how: str) -> list[int]:
        closed: list[int] = []
        asyncio.run(main(make, closed, how))  # (what it returns goes only after the loop)
        return closed

    body, arcs, _ = reference(lambda: run(ticker, "closed"), ticker)
    agent = start_agent()
    assert run(runcov.critical(ticker), how) == [1]
    (run_,) = exported(agent, sink, job(ticker))
    assert run_.status_class == "ok"
    assert run_.lines == {FILE: body}
    assert run_.arcs == {FILE: arcs}
    assert problems == [] and unraisable == []
    assert agent._in_flight == 0
    assert active(agent.core) == 0


def test_a_generator_kept_unfinished_is_cut_at_the_maximum_scope_age(
    start_agent: Callable[..., Agent], sink: HTTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start(make: Any) -> Any:
        gen = make([])
        assert next(gen) == 0
        return gen

    kept: list[Any] = []
    before, before_arcs, _ = coverage_py(lambda: kept.append(start(rows)), rows)
    kept.clear()  # (finished outside the measurement)
    agent = start_agent(max_scope_seconds=0.2)
    tickets: list[Any] = []
    begin = agent.begin

    def recording_begin(*args: Any, **kwargs: Any) -> Any:
        tickets.append(begin(*args, **kwargs))
        return tickets[-1]

    monkeypatch.setattr(agent, "begin", recording_begin)
    gen = start(runcov.critical(rows))
    (ticket,) = tickets
    wait_for(lambda: ticket.scope.expired, timeout=30.0)
    assert active(agent.core) == 0
    assert next(gen) == 1  # runs on, unmeasured
    gen.close()
    (run,) = exported(agent, sink, job(rows))
    assert run.lines == {FILE: before}
    assert run.arcs == {FILE: before_arcs}
    (span_,) = [s for s in sink.coverage_spans() if s.attributes["runcov.endpoint"] == job(rows)]
    assert span_.attributes["runcov.scope.expired"] is True


def test_a_generator_resumed_in_other_threads_is_measured_there(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    body, arcs, _ = coverage_py(lambda: across_threads(orders), orders)
    agent = start_agent()
    assert across_threads(runcov.critical(orders)) == [0, 1, 2, 99]
    (run,) = exported(agent, sink, job(orders))
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}
    assert active(agent.core) == 0
    probes = getattr(agent.core, "_exact", None)
    if probes is not None:  # 3.11's exact probes: what the generator left on this thread
        with capture_coverage(source=[os.path.dirname(HERE)]):
            pass  # (a scope closing on this thread forgets the entries of closed ones)
        assert probes.depth() == 0


def test_a_suspended_generator_keeps_no_code_armed(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    """Between two resumptions the run's scope is not active: a generator kept suspended (a
    consumer waiting on its queue) keeps nothing armed for the requests that run meanwhile,
    and its request, resumed by send, throw and close, is still exactly coverage.py's."""
    body, arcs, _ = reference(lambda: drive_tally(tally), tally)
    agent = start_agent()
    between: list[int] = []

    def suspended() -> None:
        between.append(active(agent.core))
        linger_out(agent.core)  # (what a long wait would do: disarm)

    assert drive_tally(runcov.critical(tally), suspended) == ([0, 5, 12, 0, 2], [2])
    assert between == [0, 0, 0]
    (run,) = exported(agent, sink, job(tally))
    assert run.lines == {FILE: body}
    assert run.arcs == {FILE: arcs}
    assert active(agent.core) == 0
