"""runcov across fork(), next to a running coverage.py, and the state it leaves behind."""

from __future__ import annotations

import dis
import functools
import os
import pickle
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import coverage
import pytest

from runcov.testing import capture_coverage
from runcov.tracing import get_core, reset_core
from tests.corpus import branches, comprehensions, loops, objects

CORPUS_DIR = os.path.realpath(os.path.join(os.path.dirname(__file__), "corpus"))
WAIT = 30.0
#: coverage.py can use sys.monitoring (its ``sysmon`` core) on 3.12+.
COVERAGE_SYSMON = sys.version_info >= (3, 12)


@functools.cache
def runcov_sysmon() -> bool:
    """True when runcov runs its sys.monitoring core (3.12+ unless ``RUNCOV_CORE=settrace``).

    Asked once: later calls must not create a core (the shutdown test inspects the state after
    the core is gone).
    """
    return get_core().name == "sysmon"


def runcov_traces() -> bool:
    """True when runcov's exact scopes trace their threads with ``sys.settrace`` (the settrace
    core without exact probes: 3.12+ with ``RUNCOV_CORE=settrace``, or no C extension)."""
    core = get_core()
    return core.name == "settrace" and not getattr(core, "exact_by_probes", False)


def armed_probes() -> int:
    """Probe heads armed in the bytecode (3.11's exact probes; census is off in these tests).
    Looks at the running core without making one (the shutdown test looks after it is gone)."""
    import runcov.tracing

    core = runcov.tracing._core
    probes = getattr(core, "_probes", None)
    if probes is None or not getattr(core, "exact_by_probes", False):
        return 0
    armed = 0
    for code, unit, _ in list(probes._heads):
        if code._co_code_adaptive[2 * unit] == dis.opmap["PUSH_NULL"]:
            armed += 1
    return armed


Snapshot = tuple[dict[str, frozenset[int]], dict[str, frozenset[tuple[int, int]]]]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")


def snapshot(lines: dict[str, Any], arcs: dict[str, Any]) -> Snapshot:
    """Non-empty line and arc sets under the corpus, hashable and comparable."""

    def keep(path: str) -> bool:
        return os.path.realpath(path).startswith(CORPUS_DIR + os.sep)

    return (
        {p: frozenset(v) for p, v in lines.items() if v and keep(p)},
        {p: frozenset(v) for p, v in arcs.items() if v and keep(p)},
    )


def describe(got: Snapshot, want: Snapshot) -> str:
    """Readable difference between two snapshots."""
    out = []
    for kind, mine, ref in (("lines", got[0], want[0]), ("arcs", got[1], want[1])):
        for path in sorted(set(mine) | set(ref)):
            a, b = mine.get(path, frozenset()), ref.get(path, frozenset())
            if a != b:
                name = os.path.relpath(path, CORPUS_DIR)
                out.append(f"{kind} {name}: extra {sorted(a - b)}, missing {sorted(b - a)}")
    return "; ".join(out) or "equal"


def runcov_alone(fn: Callable[[], Any]) -> Snapshot:
    """What a runcov capture records for ``fn`` with nothing else going on."""
    with capture_coverage(source=[CORPUS_DIR]) as cov:
        fn()
    assert cov.traced
    got = snapshot(cov.lines, cov.arcs)
    assert got[0], "runcov recorded nothing for the reference run"
    return got


def coveragepy_data(cov: coverage.Coverage) -> Snapshot:
    """coverage.py's lines and arcs (or lines only) under the corpus."""
    data = cov.get_data()
    try:
        lines = {p: set(data.lines(p) or ()) for p in data.measured_files()}
        arcs = {p: set(data.arcs(p) or ()) for p in data.measured_files()}
    finally:
        data.close(force=True)
    return snapshot(lines, arcs)


def coveragepy_alone(fn: Callable[[], Any], **options: Any) -> Snapshot:
    """What coverage.py records for ``fn`` alone."""
    cov = coverage.Coverage(data_file=None, source=[CORPUS_DIR], **options)
    cov.start()
    try:
        fn()
    finally:
        cov.stop()
    return coveragepy_data(cov)


def work_a() -> None:
    """The parent's request."""
    loops.nested(3, 3)
    branches.classify(5)


def work_b() -> None:
    """The child's request (different files and functions from the parent's)."""
    comprehensions.matrix(3)
    objects.factorial(4)


def work_c() -> None:
    """Code the child runs outside any capture."""
    loops.while_else(20)


# -- fork ------------------------------------------------------------------------------------


def fork_and_run(child: Callable[[], Any]) -> Any:
    """Fork; run ``child`` in the child and return its (pickled) result to the parent.

    The child leaves with ``os._exit`` so that nothing of the test session runs twice.
    """
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Forking with other threads alive is exactly what some tests do on purpose.
        warnings.filterwarnings("ignore", message=r".*fork\(\).*", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            payload = pickle.dumps(("ok", child()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    kind, value = pickle.loads(b"".join(chunks))
    assert kind == "ok", f"the child failed:\n{value}"
    return value


def _global_events() -> int:
    """The global events runcov's tool keeps for its lifetime (3.12+): PY_UNWIND, PY_THROW."""
    return sys.monitoring.events.PY_UNWIND | sys.monitoring.events.PY_THROW


def _watch_events() -> int:
    """Local events that are not armed code (3.12+): the PY_START of code under the roots
    that has not run yet, and the PY_START | PY_RESUME watch a disarm leaves on registered code
    that was not promoted (its next call outside a scope takes it off)."""
    return sys.monitoring.events.PY_START | sys.monitoring.events.PY_RESUME


def leftovers() -> dict[str, Any]:
    """Tracing state runcov leaves in this thread/process when no capture is open."""
    state: dict[str, Any] = {"gettrace": repr(sys.gettrace()), "armed_probes": armed_probes()}
    if runcov_sysmon():
        mon = sys.monitoring
        tools = {t: mon.get_tool(t) for t in (3, 4)}
        state["tools"] = tools
        for tool, name in tools.items():
            if name == "runcov":
                state["global_events"] = mon.get_events(tool)
                armed = {}
                for fn in (
                    loops.nested,
                    branches.classify,
                    comprehensions.matrix,
                    objects.factorial,
                ):
                    events = mon.get_local_events(tool, fn.__code__)
                    if events & ~_watch_events():  # a watch is not armed code
                        armed[fn.__name__] = events
                state["armed"] = armed
    return state


def is_idle(state: dict[str, Any]) -> bool:
    """No tracer installed; on 3.12+ runcov's tool keeps its fixed global events (PY_UNWIND,
    PY_THROW) and arms no code object."""
    if state["gettrace"] != "None" or state["armed_probes"]:
        return False
    if runcov_sysmon():
        owned = [t for t, name in state["tools"].items() if name == "runcov"]
        return (
            len(owned) == 1
            and state["global_events"] == _global_events()
            and state["armed"] == {}
        )
    return True


def settled() -> dict[str, Any]:
    """:func:`leftovers` once runcov has settled.

    The sys.monitoring core may keep its events armed for a short, bounded linger after the last
    scope closes (docs/architecture.md); wait for that (at most ``WAIT`` seconds, a hang guard).
    """
    deadline = time.monotonic() + WAIT
    state = leftovers()
    while not is_idle(state) and time.monotonic() < deadline:
        time.sleep(0.01)
        state = leftovers()
    return state


def assert_idle(state: dict[str, Any]) -> None:
    """Fails with the whole state when runcov left something behind."""
    assert is_idle(state), state


def test_child_measures_with_a_new_capture() -> None:
    """Fork outside any capture: a capture in the child records exactly the child's work."""
    want = runcov_alone(work_b)

    def child() -> tuple[Snapshot, dict[str, Any]]:
        work_c()
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            work_b()
        return snapshot(cov.lines, cov.arcs), settled()

    got, state = fork_and_run(child)
    assert got == want, describe(got, want)
    assert_idle(state)


def test_fork_inside_a_capture() -> None:
    """Fork while the parent's capture is open: each side records its own work."""
    want_parent = runcov_alone(lambda: (work_a(), branches.classify(-5)))
    want_child = runcov_alone(work_b)

    def child() -> tuple[Snapshot, dict[str, Any]]:
        work_c()  # the inherited scope must not record this (nor anything)
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            work_b()
        # The child unwinds the parent's request too, as a forked worker would.
        parent_cov.__exit__(None, None, None)
        return snapshot(cov.lines, cov.arcs), settled()

    with capture_coverage(source=[CORPUS_DIR]) as parent_cov:
        work_a()
        got_child, child_state = fork_and_run(child)
        branches.classify(-5)
    got_parent = snapshot(parent_cov.lines, parent_cov.arcs)
    assert got_child == want_child, describe(got_child, want_child)
    assert got_parent == want_parent, describe(got_parent, want_parent)
    assert_idle(child_state)
    assert_idle(settled())


def test_inherited_scope_closing_does_not_disturb_the_childs_capture() -> None:
    """In the child, closing the capture inherited from the parent leaves a new one measuring."""
    want_child = runcov_alone(lambda: (work_b(), work_c()))

    def child() -> tuple[Snapshot, dict[str, Any]]:
        own = capture_coverage(source=[CORPUS_DIR])
        own.__enter__()
        work_b()
        parent_cov.__exit__(None, None, None)
        work_c()
        own.__exit__(None, None, None)
        return snapshot(own.lines, own.arcs), settled()

    with capture_coverage(source=[CORPUS_DIR]) as parent_cov:
        work_a()
        got_child, child_state = fork_and_run(child)
    assert got_child == want_child, describe(got_child, want_child)
    assert_idle(child_state)


def test_child_that_measures_nothing_is_left_idle() -> None:
    """Fork right after a capture closed (the core may still linger armed): a child that never
    opens a capture ends up with nothing armed and no tracer, like the parent."""
    want = runcov_alone(work_a)

    def child() -> dict[str, Any]:
        work_c()
        return settled()

    with capture_coverage(source=[CORPUS_DIR]) as cov:
        work_a()
    child_state = fork_and_run(child)
    assert snapshot(cov.lines, cov.arcs) == want
    assert_idle(child_state)
    assert_idle(settled())


def test_fork_while_another_thread_captures() -> None:
    """A capture open in another thread at fork time: the child (one thread) measures alone."""
    want_thread = runcov_alone(work_a)
    want_child = runcov_alone(work_b)
    opened = threading.Event()
    go_on = threading.Event()
    result: list[Snapshot] = []

    def request_thread() -> None:
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            opened.set()
            assert go_on.wait(WAIT)
            work_a()
        result.append(snapshot(cov.lines, cov.arcs))

    def child() -> tuple[Snapshot, dict[str, Any]]:
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            work_b()
        return snapshot(cov.lines, cov.arcs), settled()

    t = threading.Thread(target=request_thread)
    t.start()
    try:
        assert opened.wait(WAIT)
        got_child, child_state = fork_and_run(child)
    finally:
        go_on.set()
        t.join(WAIT)
    assert got_child == want_child, describe(got_child, want_child)
    assert_idle(child_state)
    (got_thread,) = result
    assert got_thread == want_thread, describe(got_thread, want_thread)


def test_fork_while_another_thread_holds_the_cores_lock() -> None:
    """The core's lock, held by another thread at fork time, is replaced in the child, for the
    C callback too: the child's promotions are made in C (never waiting on the parent's
    lock, nor falling back to Python for it) and the child measures exactly."""
    core: Any = get_core()
    if getattr(core, "_recorder", None) is None:
        pytest.skip("sys.monitoring core with the C extension only")
    want_child = runcov_alone(work_b)  # (registers work_b's code in the parent)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with core._lock:
            held.set()
            release.wait(WAIT)

    def child() -> tuple[Snapshot, bool, list[str]]:
        recorder = core._recorder
        fallback = recorder.watch_fallback
        python: list[str] = []

        def counting(code: Any, offset: int) -> Any:
            python.append(code.co_name)
            return fallback(code, offset)

        recorder.watch_fallback = counting
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            work_b()
        recorder.watch_fallback = fallback
        return snapshot(cov.lines, cov.arcs), recorder.lock is core._lock, python

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(WAIT)
        got, same_lock, python = fork_and_run(child)
    finally:
        release.set()
        t.join(WAIT)
    assert same_lock
    assert python == []  # every call of work_b's (registered) code answered in C
    assert got == want_child, describe(got, want_child)


# -- coexistence with coverage.py --------------------------------------------------------------


@pytest.fixture(params=["ctrace-branch", *(["sysmon-lines"] if COVERAGE_SYSMON else [])])
def coveragepy_options(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """coverage.py configurations: its C tracer with branches; its sys.monitoring core (3.12+)."""
    if request.param == "sysmon-lines":
        monkeypatch.setenv("COVERAGE_CORE", "sysmon")
        return {"branch": False}
    monkeypatch.delenv("COVERAGE_CORE", raising=False)
    return {"branch": True}


def test_coverage_running_while_a_capture_measures(coveragepy_options: dict[str, Any]) -> None:
    """coverage.py started first, then a runcov capture, both around the same work."""
    want_cov = coveragepy_alone(lambda: (work_a(), work_b()), **coveragepy_options)
    want_runcov = runcov_alone(work_b)

    cov = coverage.Coverage(data_file=None, source=[CORPUS_DIR], **coveragepy_options)
    cov.start()
    try:
        tracer_before = sys.gettrace()
        work_a()
        with capture_coverage(source=[CORPUS_DIR]) as ours:
            work_b()
        tracer_after = sys.gettrace()
    finally:
        cov.stop()
    got_cov = coveragepy_data(cov)
    got_runcov = snapshot(ours.lines, ours.arcs)

    assert got_cov == want_cov, "coverage.py's data changed: " + describe(got_cov, want_cov)
    assert tracer_after is tracer_before  # runcov never replaces or removes coverage.py's tracer
    if tracer_before is not None and runcov_traces():
        # The settrace core tracing: the thread's only tracer is coverage.py's, so runcov
        # declines. (On 3.11 exact probes record beside any tracer.)
        assert not ours.traced
        assert got_runcov == ({}, {})
    else:
        assert ours.traced
        assert got_runcov == want_runcov, describe(got_runcov, want_runcov)


def test_coverage_started_inside_a_capture(coveragepy_options: dict[str, Any]) -> None:
    """A runcov capture open first, coverage.py started and stopped inside it.

    coverage.py's data is always right. With the sys.monitoring core runcov's is too; with the
    settrace core (3.11) coverage.py takes the thread's only tracer, so runcov records less, but
    never a line that did not run.
    """
    want_cov = coveragepy_alone(work_b, **coveragepy_options)
    want_runcov = runcov_alone(lambda: (work_a(), work_b(), branches.classify(-5)))
    with capture_coverage(source=[CORPUS_DIR]) as ours:
        work_a()
        cov = coverage.Coverage(data_file=None, source=[CORPUS_DIR], **coveragepy_options)
        ours_tracer = sys.gettrace()
        cov.start()
        took_the_tracer = sys.gettrace() is not ours_tracer
        try:
            work_b()
        finally:
            cov.stop()
        branches.classify(-5)
    got_cov = coveragepy_data(cov)
    got_runcov = snapshot(ours.lines, ours.arcs)
    assert got_cov == want_cov, describe(got_cov, want_cov)
    if not runcov_traces() or not took_the_tracer:
        assert got_runcov == want_runcov, describe(got_runcov, want_runcov)
    else:
        for path, lines in got_runcov[0].items():
            assert lines <= want_runcov[0][path]
        for path, arcs in got_runcov[1].items():
            assert arcs <= want_runcov[1][path]


# -- what a capture leaves behind ------------------------------------------------------------


@pytest.fixture
def idle_before() -> Iterator[None]:
    """A core exists and no capture is open."""
    get_core()
    yield


def test_capture_leaves_nothing_armed(idle_before: None) -> None:
    """After a capture: no tracer, and (3.12+) runcov's tool holds only its fixed global events."""
    with capture_coverage(source=[CORPUS_DIR]) as cov:
        during = leftovers()
        work_a()
        work_b()
    assert cov.lines
    assert_idle(settled())
    if runcov_sysmon():
        assert during["gettrace"] == "None"  # the sys.monitoring core never uses settrace
        assert during["global_events"] == _global_events()
    elif runcov_traces():
        assert during["gettrace"] != "None"  # the settrace core traces this thread meanwhile
    else:
        assert during["gettrace"] == "None"  # exact probes (3.11): no tracer, probes armed
        assert during["armed_probes"] > 0


def test_shutdown_frees_the_tool_id() -> None:
    """Shutting the core down frees its tool id (3.12+) and tracer; a new core works again.

    Runs in a forked child so that the suite's process keeps its core.
    """

    def child() -> tuple[dict[str, Any], dict[str, Any], Snapshot, dict[str, Any]]:
        with capture_coverage(source=[CORPUS_DIR]) as first:
            work_a()
        assert first.lines
        before = settled()
        reset_core()
        after = leftovers()
        with capture_coverage(source=[CORPUS_DIR]) as again:
            work_a()
        return before, after, snapshot(again.lines, again.arcs), settled()

    want = runcov_alone(work_a)
    before, after, again, final = fork_and_run(child)
    assert_idle(before)
    assert after["gettrace"] == "None"
    if runcov_sysmon():
        assert "runcov" not in after["tools"].values()
    assert again == want, describe(again, want)
    assert_idle(final)
