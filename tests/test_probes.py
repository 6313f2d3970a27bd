"""Census probes (CPython 3.11): first-hit lines equal coverage.py's, quiet once hit, re-armed
per epoch, in code imported later, across threads, and invisible to other tools."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import threading
import traceback
from types import CodeType
from typing import Any, Callable, Iterator

import coverage
import pytest

from tests.corpus.cases import CASES, Case

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="census probes rewrite 3.11 bytecode; 3.12+ census uses sys.monitoring",
)

CORPUS_DIR = os.path.realpath(os.path.join(os.path.dirname(__file__), "corpus"))


class Recorder:
    """The probes' ``record``: every first hit, and how many hits reached it."""

    def __init__(self) -> None:
        self.lines: dict[str, set[int]] = {}
        self.calls = 0
        self.keep = False  # True: ask the probes to stay armed

    def __call__(self, filename: str, line: int) -> bool:
        self.calls += 1
        self.lines.setdefault(filename, set()).add(line)
        return not self.keep


def _under(root: str) -> Callable[[str], str | None]:
    def classify(filename: str) -> str | None:
        path = os.path.realpath(filename)
        return path if path.startswith(root + os.sep) else None

    return classify


@pytest.fixture
def probes() -> Iterator[tuple[Any, Recorder]]:
    from runcov.tracing import _accel  # type: ignore[attr-defined]
    from runcov.tracing.probes import Probes

    for case in CASES:
        case.load()  # imported before the probes: live functions are probed in place
    recorder = Recorder()
    probes = Probes(_under(CORPUS_DIR), recorder, _accel.set_unit)
    probes.enable()
    try:
        yield probes, recorder
    finally:
        probes.disable()
        probes.restore()


def _run(case: Case) -> list[tuple[str, str]]:
    fn = case.load()
    outcomes = []
    for args in case.inputs:
        try:
            result = fn(*args)
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            outcomes.append(("returned", repr(result)))
        except Exception as exc:
            outcomes.append(("raised", type(exc).__name__))
    return outcomes


def _coverage(run: Callable[[], Any]) -> tuple[Any, dict[str, set[int]], dict[str, set[Any]]]:
    cov = coverage.Coverage(data_file=None, source=[CORPUS_DIR], branch=True)
    cov.start()
    try:
        result = run()
    finally:
        cov.stop()
    data = cov.get_data()
    lines = {f: set(data.lines(f) or ()) for f in data.measured_files()}
    arcs = {f: set(data.arcs(f) or ()) for f in data.measured_files()}
    return result, {f: v for f, v in lines.items() if v}, {f: v for f, v in arcs.items() if v}


needs_no_tracer = pytest.mark.skipif(
    sys.gettrace() is not None, reason="coverage.py is the oracle here: no outer tracer allowed"
)


@needs_no_tracer
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_first_hits_equal_coveragepy_lines(probes: tuple[Any, Recorder], case: Case) -> None:
    """Every corpus case: the probes' first hits are the lines coverage.py measures, and the
    probed code behaves as the original (the same results and exceptions)."""
    _, recorder = probes
    outcomes = _run(case)
    assert recorder.lines, "no probe fired"
    # coverage.py measures the same case over the probed code, now quiet.
    theirs_outcomes, lines, _ = _coverage(lambda: _run(case))
    assert outcomes == theirs_outcomes
    assert recorder.lines == lines


@needs_no_tracer
def test_probed_code_is_invisible_to_a_line_tracer(probes: tuple[Any, Recorder]) -> None:
    """coverage.py tracing probed code (armed and quiet) sees the lines and arcs it sees in the
    original code."""
    from runcov.tracing.probes import original_of

    probed, recorder = probes
    sample = [case for case in CASES if case.module in ("branches", "loops", "generators")]

    def run_all() -> None:
        for case in sample:
            _run(case)

    _, armed_lines, armed_arcs = _coverage(run_all)
    assert recorder.lines  # the probes fired under coverage.py's tracer
    _, quiet_lines, quiet_arcs = _coverage(run_all)
    probed.restore()
    for case in sample:
        assert original_of(case.load().__code__) is case.load().__code__
    _, lines, arcs = _coverage(run_all)
    assert armed_lines == quiet_lines == lines
    assert armed_arcs == quiet_arcs == arcs


def test_a_probe_goes_quiet_once_hit_and_a_new_epoch_arms_it(
    probes: tuple[Any, Recorder],
) -> None:
    probed, recorder = probes
    from tests.corpus import loops

    loops.nested(3, 3)
    first = recorder.calls
    lines = sum(map(len, recorder.lines.values()))
    # Once per probe: one per line, and one per jump target where control re-enters a line.
    assert 0 < lines <= first
    for _ in range(200):  # hot enough for the interpreter to specialize the code
        loops.nested(3, 3)
    assert recorder.calls == first
    recorder.lines.clear()
    probed.rearm()
    loops.nested(3, 3)
    assert recorder.calls == 2 * first
    assert sum(map(len, recorder.lines.values())) == lines


def test_a_probe_kept_armed_fires_again(probes: tuple[Any, Recorder]) -> None:
    """``record`` returning False (an exact scope is running) keeps the probe for later."""
    _, recorder = probes
    from tests.corpus import branches

    recorder.keep = True
    branches.classify(3)
    once = recorder.calls
    branches.classify(3)
    assert once > 0 and recorder.calls == 2 * once
    recorder.keep = False
    branches.classify(3)
    branches.classify(3)
    assert recorder.calls == 3 * once


def test_tracebacks_and_frames_keep_their_line_numbers(probes: tuple[Any, Recorder]) -> None:
    from tests.corpus import exceptions

    fn = exceptions.caught
    assert fn.__code__.co_consts[-1] is not None  # probed: the probe keys are its last consts
    original = importlib.import_module("runcov.tracing.probes").original_of(fn.__code__)
    assert original is not fn.__code__
    assert list(original.co_lines())[-1][2] == list(fn.__code__.co_lines())[-1][2]
    assert {line for _, _, line in original.co_lines()} == {
        line for _, _, line in fn.__code__.co_lines()
    }

    def raiser(code: CodeType) -> int:
        try:
            exec(code, {})
        except ZeroDivisionError:
            return traceback.extract_tb(sys.exc_info()[2])[-1].lineno or 0
        return 0

    source = "x = 1\nif x:\n    y = 2\n    z = y // (x - 1)\n"
    code = compile(source, os.path.join(CORPUS_DIR, "synthetic.py"), "exec")
    probed, _ = probes
    assert raiser(probed.probed(code)) == raiser(code) == 4


def test_modules_imported_later_are_probed_and_their_bytecode_cache_is_not(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import marshal

    from runcov.tracing import _accel  # type: ignore[attr-defined]
    from runcov.tracing.probes import Probes

    package = tmp_path / "probedpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        "def f(x):\n    if x:\n        return 1\n    return 2\n\nVALUE = f(0)\n"
    )
    root = os.path.realpath(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    recorder = Recorder()
    probes = Probes(_under(root), recorder, _accel.set_unit)
    sys.path.insert(0, root)
    import wrapt

    hooked: list[str] = []  # a post-import hook (runcov.watch's kind) puts a proxy loader first
    wrapt.register_post_import_hook(lambda module: hooked.append(module.__name__), "probedpkg.mod")
    probes.enable()
    try:
        mod = importlib.import_module("probedpkg.mod")
        assert hooked == ["probedpkg.mod"]
        path = os.path.realpath(mod.__file__)
        assert recorder.lines == {mod.__file__: {1, 6, 2, 4}}
        assert mod.f(1) == 1
        assert recorder.lines[mod.__file__] == {1, 2, 3, 4, 6}
        cached = importlib.util.cache_from_source(path)
        with open(cached, "rb") as fh:
            code = marshal.loads(fh.read()[16:])
        assert all(not callable(const) for const in code.co_consts)
        assert isinstance(mod.__loader__, importlib.machinery.SourceFileLoader)
    finally:
        probes.disable()
        probes.restore()
        sys.path.remove(root)
        for name in ("probedpkg.mod", "probedpkg"):
            sys.modules.pop(name, None)


def test_threads_hitting_the_same_probes_record_each_line_once(
    probes: tuple[Any, Recorder],
) -> None:
    _, recorder = probes
    from tests.corpus import loops

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(50):
                loops.nested(4, 4)
                loops.for_else([1, 2, 3], 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    if sys.gettrace() is None:
        _, lines, _ = _coverage(lambda: (loops.nested(4, 4), loops.for_else([1, 2, 3], 2)))
        assert recorder.lines == lines
    # Each probe went quiet after its first hits: at most one per thread that raced into it.
    assert recorder.calls <= 8 * sum(map(len, recorder.lines.values()))


def test_the_core_probes_functions_made_later_by_unprobed_code() -> None:
    """A ``__main__`` script's functions are made by code that no import probed: the core's
    census finds them at its next look (the agent's export worker looks on a thinning
    schedule), and their first hits go to the trace that runs them."""
    import contextvars

    from runcov.tracing import get_core

    core = get_core()
    core.add_roots([CORPUS_DIR])
    owner: contextvars.ContextVar[object] = contextvars.ContextVar("request", default=None)
    assert core.set_census_owner(owner.get) is True
    core.new_epoch()
    core.enable_census()  # type: ignore[attr-defined]
    try:
        source = "def made_later(x):\n    if x > 1:\n        return 'big'\n    return 'small'\n"
        namespace: dict[str, Any] = {}
        exec(compile(source, os.path.join(CORPUS_DIR, "script.py"), "exec"), namespace)
        made_later = namespace["made_later"]
        token = owner.set("before")
        made_later(5)
        owner.reset(token)
        assert core.take_census("before") is None  # not probed yet: nothing recorded
        assert core.refresh_census() >= 1  # type: ignore[attr-defined]
        token = owner.set("after")
        made_later(5)
        owner.reset(token)
        after = core.take_census("after")
        assert after is not None
        assert after.lines == {os.path.join(CORPUS_DIR, "script.py"): {2, 3}}
    finally:
        core.set_census_owner(None)
        core.disable_census()
