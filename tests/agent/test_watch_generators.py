"""``runcov.watch`` over context managers and functions returning generators: it measures what
``@runcov.critical`` measures.

Over a ``@contextlib.contextmanager`` (or ``asynccontextmanager``) function the request is its
generator's run (the ``with`` statement's setup and teardown), not the call that only builds
the context manager. A plain function returning a generator it built (a generator expression,
or the call of a generator function) is one request from its call to the generator's end,
measuring the call and the generator's resumptions, not its consumer's code in between.

The ground truth is coverage.py (branch mode) running the same unwatched functions, driven the
same way, restricted to the watched code; the consumers live in this file too, so coverage.py
sees their lines where the agent must not. Where a ``with`` body raises into the suspended
generator, runcov's own core must measure the unwatched one as coverage.py does too (see
``InFile.reference`` in ``tests/agent/measured.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable

import pytest

import runcov
from runcov import _critical
from runcov.agent import Agent
from tests.agent.measured import InFile, exported, lines_of, span
from tests.agent.otlp_sink import HTTPSink

HERE = os.path.realpath(__file__)
FILE = os.path.basename(HERE)
MODULE = __name__
Arc = tuple[int, int]

# -- what is watched -----------------------------------------------------------------------


@contextlib.contextmanager
def session(log: list[str]) -> Iterator[int]:
    """A transaction."""
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


@contextlib.asynccontextmanager
async def asession(log: list[str]) -> AsyncIterator[int]:
    """:func:`session`, waiting as it opens and closes."""
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


class Store:
    @contextlib.contextmanager
    def transaction(self, log: list[str]) -> Iterator[int]:
        """:func:`session` as a method."""
        log.append("open")
        try:
            yield len(log)
        finally:
            log.append("closed")

    @staticmethod
    @contextlib.contextmanager
    def opened(log: list[str]) -> Iterator[int]:
        """:func:`session` as a static method."""
        log.append("open")
        try:
            yield len(log)
        finally:
            log.append("closed")


def fetch(count: int) -> Iterator[int]:
    """Raw rows."""
    for number in range(count):
        yield number * 3


def parse(raw: int) -> int:
    if raw % 2:
        return -raw
    return raw


def parsed(count: int) -> Iterator[int]:
    """A plain function returning a generator expression."""
    if count < 0:
        raise ValueError("a count")
    return (
        parse(raw)
        for raw in fetch(count)
    )


def _stream(count: int) -> Iterator[int]:
    taken = 0
    try:
        for item in fetch(count):
            yield parse(item)
            taken += 1
    finally:
        assert taken >= 0


def stream(count: int) -> Iterator[int]:
    """A plain function returning its generator function's generator."""
    checked = max(count, 0)
    return _stream(checked)


async def _afeed(count: int) -> AsyncIterator[int]:
    for item in fetch(count):
        await asyncio.sleep(0)
        yield parse(item)


def afeed(count: int) -> AsyncIterator[int]:
    """A plain function returning its async generator function's async generator."""
    checked = max(count, 0)
    return _afeed(checked)


def resume(gen: Any) -> Any:
    """A plain function returning a generator (async generator) already started, not one it
    made."""
    if gen is None:
        raise ValueError("a generator")
    return gen


# -- their consumers -----------------------------------------------------------------------


def note(value: int) -> int:
    """What a consumer does between two resumptions: its own work, not the watched code's."""
    if value < 0:
        return -value
    return value


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


def consume(make: Callable[[int], Iterator[int]]) -> int:
    rows = make(4)
    note(-1)  # (between the call and the first resumption)
    total = 0
    for item in rows:
        total += note(item)
    return total


def take_two(make: Callable[[int], Any]) -> int:
    rows = make(10)
    total = note(next(rows)) + note(next(rows))
    rows.close()
    return total


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


# -- ground truth and what was exported ----------------------------------------------------


_HERE = InFile(HERE)
coverage_py, reference = _HERE.coverage_py, _HERE.reference


def job(attr: str) -> str:
    """The endpoint of ``runcov.watch("<this module>:<attr>")``."""
    return f"job {MODULE}.{attr}"


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    """A real OTLP/HTTP receiver on a loopback port."""
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
def watch(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """``runcov.watch("<this module>:<attr>")``, undone after the test; returns what the
    module's attribute (or class attribute) is then."""
    monkeypatch.setattr(_critical, "_watched", set())
    module = sys.modules[MODULE]

    def watch_(attr: str) -> Any:
        owner_name, _, name = attr.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        monkeypatch.setattr(owner, name, vars(owner)[name])  # (restored after the test)
        runcov.watch(f"{MODULE}:{attr}")
        return vars(owner)[name]

    return watch_


# -- tests ---------------------------------------------------------------------------------


def test_watch_over_a_contextmanager_measures_the_with_statements_setup_and_teardown(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    body, arcs, ran = coverage_py(lambda: commit(session), session)
    error_body, error_arcs, _ = reference(lambda: roll_back(session), session)
    agent = start_agent()
    watch("session")
    assert commit(session) == ["open", "committed", "closed"]
    assert roll_back(session) == ["open", "rolled back", "closed"]
    runs = {r.status_class: r for r in exported(agent, sink, job("session"), 2)}
    assert (runs["ok"].lines, runs["ok"].arcs) == ({FILE: body}, {FILE: arcs})
    assert (runs["error"].lines, runs["error"].arcs) == ({FILE: error_body}, {FILE: error_arcs})
    # The with statement's body ran, outside the request.
    consumer = lines_of(commit, roll_back, note)
    assert ran & consumer
    assert not (runs["ok"].lines[FILE] | runs["error"].lines[FILE]) & consumer


def test_watch_over_an_asynccontextmanager_measures_the_with_statements_setup_and_teardown(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    body, arcs, ran = coverage_py(lambda: asyncio.run(acommit(asession)), asession)
    error_body, error_arcs, _ = reference(lambda: asyncio.run(aroll_back(asession)), asession)
    agent = start_agent()
    watch("asession")
    assert asyncio.run(acommit(asession)) == ["open", "committed", "closed"]
    assert asyncio.run(aroll_back(asession)) == ["open", "rolled back", "closed"]
    runs = {r.status_class: r for r in exported(agent, sink, job("asession"), 2)}
    assert (runs["ok"].lines, runs["ok"].arcs) == ({FILE: body}, {FILE: arcs})
    assert (runs["error"].lines, runs["error"].arcs) == ({FILE: error_body}, {FILE: error_arcs})
    consumer = lines_of(acommit, aroll_back, note)
    assert ran & consumer
    assert not (runs["ok"].lines[FILE] | runs["error"].lines[FILE]) & consumer


@pytest.mark.parametrize("attr", ["transaction", "opened"])
def test_watch_over_a_contextmanager_method(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any], attr: str
) -> None:
    def run() -> list[str]:
        return commit(getattr(Store(), attr))

    body, arcs, _ = coverage_py(run, getattr(Store, attr))
    agent = start_agent()
    watch(f"Store.{attr}")
    assert run() == ["open", "closed"]
    (got,) = exported(agent, sink, job(f"Store.{attr}"))
    assert got.status_class == "ok"
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
    assert len(body) > 3  # (the generator's body, not the call alone)


@pytest.mark.parametrize("attr", ["parsed", "stream"])
def test_watch_over_a_function_returning_a_generator_measures_the_call_and_the_run(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any], attr: str
) -> None:
    producer = (parsed, stream, _stream, fetch, parse)
    body, arcs, ran = coverage_py(lambda: consume(globals()[attr]), *producer)
    agent = start_agent()
    watched = watch(attr)
    assert consume(watched) == 18
    (got,) = exported(agent, sink, job(attr))
    assert got.status_class == "ok"
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
    assert lines_of(fetch) & body and lines_of(parse) & body  # (the run, not the call alone)
    consumer = lines_of(consume, note)
    assert ran & consumer
    assert not got.lines[FILE] & consumer


def test_a_generator_closed_early_ends_the_request_with_its_cleanup(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    producer = (stream, _stream, fetch, parse)
    body, arcs, _ = reference(lambda: take_two(stream), *producer)
    agent = start_agent()
    assert take_two(watch("stream")) == 3
    (got,) = exported(agent, sink, job("stream"))
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
    assert span(_stream)[1] in body  # (its finally, run by close())
    assert agent._in_flight == 0


def test_watch_over_a_function_returning_an_async_generator_measures_the_call_and_the_run(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    producer = (afeed, _afeed, fetch, parse)
    body, arcs, ran = coverage_py(lambda: asyncio.run(consume_async(afeed)), *producer)
    agent = start_agent()
    watched = watch("afeed")
    assert asyncio.run(consume_async(watched)) == 18
    (got,) = exported(agent, sink, job("afeed"))
    assert got.status_class == "ok"
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
    assert lines_of(_afeed) & body
    others = lines_of(consume_async, note, busy)
    assert ran & lines_of(busy) and ran & lines_of(note)
    assert not got.lines[FILE] & others


def test_a_returned_generator_dropped_unstarted_ends_the_request_with_the_call(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    body, arcs, _ = coverage_py(lambda: stream(3), stream)
    agent = start_agent()
    watched = watch("stream")
    watched(3)  # dropped at once
    cycle: list[Any] = [watched(3)]  # dropped in a reference cycle
    cycle.append(cycle)
    del cycle
    gc.collect()
    for got in exported(agent, sink, job("stream"), 2):
        assert got.status_class == "ok"
        assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
    assert agent._in_flight == 0


def test_a_generator_returned_already_started_is_not_the_requests(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    started = fetch(3)
    next(started)
    body, arcs, _ = coverage_py(lambda: resume(started), resume, fetch)
    agent = start_agent()
    assert watch("resume")(started) is started  # returned as it is, its run is not measured
    assert list(started) == [3, 6]
    (got,) = exported(agent, sink, job("resume"))
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})


def test_an_async_generator_returned_already_started_is_not_the_requests(
    start_agent: Callable[..., Agent], sink: HTTPSink, watch: Callable[[str], Any]
) -> None:
    async def run(resume: Callable[[Any], Any]) -> list[int]:
        started = _afeed(3)
        seen = [await started.__anext__()]
        assert resume(started) is started  # returned as it is, its run is not measured
        return seen + [item async for item in started]

    body, arcs, _ = coverage_py(lambda: asyncio.run(run(resume)), resume)
    agent = start_agent()
    assert asyncio.run(run(watch("resume"))) == [0, -3, 6]
    (got,) = exported(agent, sink, job("resume"))
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})


def test_critical_over_a_function_returning_a_generator_measures_the_same(
    start_agent: Callable[..., Agent], sink: HTTPSink
) -> None:
    producer = (stream, _stream, fetch, parse)
    body, arcs, _ = coverage_py(lambda: consume(stream), *producer)
    agent = start_agent()
    assert consume(runcov.critical(stream)) == 18
    (got,) = exported(agent, sink, job("stream"))
    assert (got.lines, got.arcs) == ({FILE: body}, {FILE: arcs})
