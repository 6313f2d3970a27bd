"""Exact scopes recorded by bytecode probes (CPython 3.11 with the C extension): armed only
while a scope is open, keeping no generator alive, leaving no frame behind, invisible to the
application's tracers, and right on CPython's own tests.

The corpus's differential tests (``test_differential.py``), the concurrency, fork and
coexistence tests run on the probes on 3.11 too; these cover what is particular to them.
"""

from __future__ import annotations

import asyncio
import dis
import gc
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

import coverage
import pytest

from runcov.testing import capture_coverage
from runcov.tracing import get_core
from tests.fresh import ROOT, run_python

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="exact probes rewrite 3.11 bytecode; 3.12+ uses sys.monitoring",
)

MODULE = '''\
import asyncio


def consume(log):
    def gen():
        try:
            yield 1
        finally:
            log.append("closed")

    next(gen())
    log.append("after")
    return log


def raiser(n):
    if n:
        raise ValueError(n)
    return n


def gen_raises():
    yield 1
    raise KeyError("in the body")


def drain():
    try:
        for _ in gen_raises():
            pass
    except KeyError:
        return "caught"


async def failing(n):
    await asyncio.sleep(0)
    if n:
        raise ValueError(n)
    return n


async def many(n):
    out = []
    for i in range(n):
        try:
            out.append(await failing(i % 2))
        except ValueError:
            out.append(-1)
    return out


def spin(stop):
    total = 0
    while not stop.is_set():
        total += raiser(0) + 1
    return total
'''


@pytest.fixture
def core() -> Any:
    core = get_core()
    if not getattr(core, "exact_by_probes", False):
        pytest.skip("exact probes not in use (RUNCOV_ACCEL=0 or RUNCOV_EXACT_PROBES=0)")
    core.expect_exact_scopes()  # modules imported from now on are probed as they load
    return core


@pytest.fixture
def module(tmp_path: Path, core: Any) -> Iterator[Any]:
    path = tmp_path / "exact_mod.py"
    path.write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        core.add_roots([str(tmp_path)])
        import exact_mod

        yield exact_mod
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("exact_mod", None)


def _armed(core: Any) -> int:
    """Probe heads armed in the bytecode (census is off here)."""
    push_null = dis.opmap["PUSH_NULL"]
    return sum(
        1 for code, unit, _ in list(core._probes._heads)
        if code._co_code_adaptive[2 * unit] == push_null
    )


def _coveragepy(fn: Any, *args: Any, root: str) -> tuple[set[int], set[tuple[int, int]]]:
    cov = coverage.Coverage(branch=True, data_file=None, source=[root])
    cov.start()
    try:
        fn(*args)
    finally:
        cov.stop()
    data = cov.get_data()
    path = next(p for p in data.measured_files() if p.endswith("exact_mod.py"))
    lines, arcs = set(data.lines(path) or ()), set(data.arcs(path) or ())
    data.close(force=True)
    return lines, arcs


def test_probes_are_armed_only_while_an_exact_scope_is_open(core: Any, module: Any) -> None:
    assert module.raiser(0) == 0
    assert _armed(core) == 0
    with capture_coverage(source=[os.path.dirname(module.__file__)]) as cov:
        armed = _armed(core)
        module.raiser(0)
    assert armed > 0
    assert _armed(core) == 0
    assert cov.lines[os.path.realpath(module.__file__)]


def test_a_generator_is_released_when_the_application_lets_go_of_it(
    core: Any, module: Any
) -> None:
    """The probes follow a generator's frame by a weak reference: a generator the application
    drops is closed at once (its ``finally`` runs before the next statement), as without runcov.
    """
    with capture_coverage(source=[os.path.dirname(module.__file__)]):
        log = module.consume([])
    assert log == ["closed", "after"]

    kept: list[Any] = []

    def gen() -> Iterator[int]:
        yield 1

    with capture_coverage(source=[os.path.dirname(module.__file__)]):
        g = gen()
        next(g)
        kept.append(weakref.ref(g))
        del g
    gc.collect()
    assert kept[0]() is None


def test_exits_by_exception_are_recorded_as_coveragepy_records_them(
    core: Any, module: Any
) -> None:
    """A function, a generator and coroutines left by an exception: the exit arcs coverage.py
    records (found when the caller's next line runs, or at the scope's end), and nothing left
    on the thread's stack of frames afterwards."""
    root = os.path.dirname(module.__file__)
    path = os.path.realpath(module.__file__)

    def work() -> None:
        for n in (0, 1):
            try:
                module.raiser(n)
            except ValueError:
                pass
        module.drain()
        asyncio.run(module.many(6))

    want_lines, want_arcs = _coveragepy(work, root=root)
    with capture_coverage(source=[root]) as cov:
        work()
    assert cov.lines[path] == want_lines
    assert cov.arcs[path] == want_arcs
    assert core._exact.depth() == 0


def test_unsampled_threads_record_nothing_while_a_scope_keeps_the_probes_armed(
    core: Any, module: Any
) -> None:
    """Another thread runs the same code all through an exact scope of this one: the scope
    holds only what its own thread ran, and the other thread's frames leave nothing behind."""
    root = os.path.dirname(module.__file__)
    path = os.path.realpath(module.__file__)
    stop = threading.Event()
    depths: list[int] = []

    def other() -> None:
        module.spin(stop)
        depths.append(core._exact.depth())

    thread = threading.Thread(target=other)
    with capture_coverage(source=[root]) as cov:
        thread.start()
        module.raiser(0)
        stop.set()
        thread.join(30)
    want_lines, want_arcs = _coveragepy(module.raiser, 0, root=root)
    assert cov.lines[path] == want_lines
    assert cov.arcs[path] == want_arcs
    assert depths == [0]


def test_a_tracer_of_the_application_sees_the_same_events_with_probes_armed(
    core: Any, module: Any
) -> None:
    """coverage.py running inside an exact scope measures the same as alone: the armed probes
    raise no trace or profile event, and the scope is measured in full beside it."""
    root = os.path.dirname(module.__file__)
    path = os.path.realpath(module.__file__)

    def work() -> None:
        module.drain()
        module.consume([])
        asyncio.run(module.many(4))

    alone = _coveragepy(work, root=root)
    want_lines, _ = _coveragepy(lambda: (work(), module.raiser(0)), root=root)
    events: list[tuple[str, str]] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if frame.f_code.co_filename == module.__file__ or event.startswith("c_"):
            events.append((event, getattr(arg, "__name__", "") if event.startswith("c_") else
                           frame.f_code.co_name))

    with capture_coverage(source=[root]) as cov:
        beside = _coveragepy(work, root=root)
        sys.setprofile(profiler)
        try:
            module.raiser(0)
        finally:
            sys.setprofile(None)
    assert beside == alone
    assert cov.lines[path] == want_lines
    assert events == [("call", "raiser"), ("return", "raiser"), ("c_call", "setprofile")]


def test_cpythons_own_tests_pass_inside_an_exact_scope() -> None:
    """CPython's tests of tracing, generators (signals delivered inside ``yield from``
    included), coroutines, exceptions, pattern matching and more, with their code and the
    library modules they test probed, run inside one exact scope, every probe armed: all pass,
    and no frame is left on the probes' stacks."""
    try:
        import test.test_sys_settrace  # noqa: F401
    except ImportError:
        pytest.skip("this CPython was installed without its test package")
    done = run_python("-m", "tests.cpython_under_probes", "--exact", cwd=ROOT, timeout=600)
    assert "not probed 0" in done.stderr and "frames left 0" in done.stderr


def test_probed_code_copied_by_value_still_runs(core: Any, module: Any) -> None:
    """Tools that copy a function by value (cloudpickle, for a script's functions) pickle its
    code's constants, the probes' callable among them: it pickles as a callable that does
    nothing, so the copy runs, armed or not, and returns what the original returns."""
    import pickle
    import types

    from runcov.tracing import _accel  # type: ignore[attr-defined]

    code = module.raiser.__code__
    assert any(const is core._probes.hit for const in code.co_consts)  # probed
    consts = pickle.loads(pickle.dumps(code.co_consts))
    copy = types.FunctionType(code.replace(co_consts=consts), module.__dict__, "copy")
    assert copy(0) == 0  # its probes' heads as copied: jumps
    heads = [unit for head_code, unit, _ in core._probes._heads if head_code is code]
    assert heads
    for unit in heads:  # armed, as a copy made while a scope was active has them
        _accel.set_unit(copy.__code__, unit, bytes((dis.opmap["PUSH_NULL"], 0)))
    assert copy(0) == 0  # its probes call the no-op
    with pytest.raises(ValueError):
        copy(2)


LAZY = """
import os, sys
import runcov
from runcov.testing import capture_coverage
from runcov.tracing import get_core

root, rate = sys.argv[1], float(sys.argv[2])
sys.path.insert(0, root)
core = get_core()
if not core.exact_by_probes:
    print("no probes"); raise SystemExit(0)
if rate >= 0:
    runcov.start(source=[root], sample_rate=rate, exporter_endpoint="http://127.0.0.1:9",
                 metrics_interval=0)
else:
    core.add_roots([root])
import exact_mod

def probed():
    return any(const is core._probes.hit for const in exact_mod.raiser.__code__.co_consts)

exact_mod.raiser(0)
print("probed at start", core._probes.probing, len(core._probes.probes) > 0, probed())
with capture_coverage(source=[root]) as cov:
    exact_mod.raiser(0)
print("probed after a scope", core._probes.probing, probed())
print("lines", sorted(cov.lines[os.path.realpath(exact_mod.__file__)]))
"""


@pytest.mark.parametrize(
    ("rate", "at_start"), [(-1.0, False), (0.0, False), (0.01, True)], ids=["core", "0%", "1%"]
)
def test_code_is_probed_only_once_exact_scopes_are_expected(
    tmp_path: Path, rate: float, at_start: bool
) -> None:
    """A process that never opens an exact scope carries no probe (no jump per line): a core
    probes at its first exact scope, or when told to expect them, as the agent does when some
    exact-mode selector's rate is above 0. The first scope measures the same either way."""
    (tmp_path / "exact_mod.py").write_text(MODULE)
    script = tmp_path / "lazy.py"
    script.write_text(LAZY)
    done = run_python(str(script), str(tmp_path), str(rate))
    if "no probes" in done.stdout:
        pytest.skip("exact probes not in use (RUNCOV_ACCEL=0 or RUNCOV_EXACT_PROBES=0)")
    out = done.stdout.splitlines()
    assert out[0] == f"probed at start {at_start} {at_start} {at_start}"
    assert out[1] == "probed after a scope True True"
    first = MODULE.splitlines().index("def raiser(n):") + 1
    assert out[2] == f"lines {[first + 1, first + 3]}"
