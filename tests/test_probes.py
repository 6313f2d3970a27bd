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
from tests.fresh import ROOT, run_python

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
    probes = Probes(_under(CORPUS_DIR), recorder, _accel.set_unit, _accel.Quiet)
    probes.enable()
    try:
        yield probes, recorder
    finally:
        probes.disable()
        probes.restore()
        _give_back_to_the_core()


def _give_back_to_the_core() -> None:
    """A test's own Probes put the original code back into functions that the process's
    core's exact probes (3.11) had probed: the core probes them again."""
    import runcov.tracing

    core_probes = getattr(runcov.tracing._core, "_probes", None)
    if core_probes is not None and core_probes.probing:
        core_probes.start_probing()


@pytest.fixture
def census_core() -> Iterator[tuple[Any, Any]]:
    """The process's core with census by owner on (a context variable names the request)."""
    import contextvars

    from runcov.tracing import get_core

    core = get_core()
    if not core.attributes_census:
        pytest.skip("the core's census probes need runcov's C extension (RUNCOV_ACCEL=0 here)")
    core.add_roots([CORPUS_DIR])
    owner: contextvars.ContextVar[object] = contextvars.ContextVar("request", default=None)
    assert core.set_census_owner(owner.get) is True
    core.new_epoch()
    core.enable_census()
    try:
        yield core, owner
    finally:
        core.set_census_owner(None)
        core.disable_census()


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
    from runcov.tracing.probes import original_of
    from tests.corpus import exceptions

    fn = exceptions.caught
    assert fn.__code__.co_consts[-1] is not None  # probed: the probe keys are its last consts
    original = original_of(fn.__code__)
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
        _give_back_to_the_core()
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


def test_the_core_probes_functions_made_later_by_unprobed_code(
    census_core: tuple[Any, Any],
) -> None:
    """A ``__main__`` script's functions are made by code that no import probed: the core's
    census finds them at its next look (the agent's export worker looks on a thinning
    schedule), and their first hits go to the trace that runs them."""
    core, owner = census_core
    source = "def made_later(x):\n    if x > 1:\n        return 'big'\n    return 'small'\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, os.path.join(CORPUS_DIR, "script.py"), "exec"), namespace)
    made_later = namespace["made_later"]
    token = owner.set("before")
    made_later(5)
    owner.reset(token)
    assert core.take_census("before") is None  # not probed yet: nothing recorded
    assert core.refresh_census() >= 1
    token = owner.set("after")
    made_later(5)
    owner.reset(token)
    after = core.take_census("after")
    assert after is not None
    assert after.lines == {os.path.join(CORPUS_DIR, "script.py"): {2, 3}}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_records_its_own_first_hits_and_the_parent_keeps_its_probes(
    census_core: tuple[Any, Any],
) -> None:
    import json

    from tests.corpus import branches

    core, owner = census_core

    def request(name: str) -> Any:
        token = owner.set(name)
        try:
            branches.classify(-5)
        finally:
            owner.reset(token)
        data = core.take_census(name)
        return data.lines if data is not None else {}

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what its request hit first, and leave
        try:
            lines = request("child")
            os.write(write, json.dumps({k: sorted(v) for k, v in lines.items()}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child = json.loads(fh.read() or "{}")
    os.waitpid(pid, 0)
    parent = request("parent")  # the child's hits quieted only the child's probes
    assert child and {k: set(v) for k, v in child.items()} == parent
    assert request("again") == {}


def _big_source() -> str:
    """A function whose probed jumps and constants need EXTENDED_ARG: a loop over 120 branches
    with distinct constants, inside try/except and a with block."""
    body = []
    for i in range(120):
        body.append(f"            if x % {i + 7} == {i % 5}:")
        body.append(f"                total += {i * 1000 + 17}")
    lines = [
        "import contextlib",
        "def big(n):",
        "    total = 0",
        "    with contextlib.suppress(KeyError):",
        "        for x in range(n):",
        "          try:",
        *body,
        "            if x == 57:",
        "                raise ValueError(x)",
        "          except ValueError:",
        "            total -= 1",
        "    return total",
    ]
    return "\n".join(lines) + "\n"


@needs_no_tracer
def test_a_big_function_needing_extended_args_runs_and_records_as_coveragepy() -> None:
    from runcov.tracing import _accel  # type: ignore[attr-defined]
    from runcov.tracing.probes import Probes

    filename = os.path.join(CORPUS_DIR, "big_synthetic.py")
    code = compile(_big_source(), filename, "exec")
    plain: dict[str, Any] = {}
    exec(code, plain)
    expected = plain["big"](200)
    recorder = Recorder()
    probes = Probes(_under(CORPUS_DIR), recorder, _accel.set_unit)
    probes.enabled = True
    probed_code = probes.probed(code)
    big = next(const for const in probed_code.co_consts if isinstance(const, CodeType))
    assert len(big.co_consts) > 256 and len(big.co_code) > 2 * 256 * 4
    namespace: dict[str, Any] = {}
    exec(probed_code, namespace)
    assert namespace["big"](200) == expected
    cov = coverage.Coverage(data_file=None, source=[CORPUS_DIR])
    again: dict[str, Any] = {}
    cov.start()
    try:
        exec(code, again)
        again["big"](200)
    finally:
        cov.stop()
    assert recorder.lines == {filename: set(cov.get_data().lines(filename) or ())}
    for _ in range(30):  # specialized, then re-armed while specialized
        assert namespace["big"](200) == expected
    probes.rearm()
    assert namespace["big"](200) == expected


def test_tracers_and_profilers_never_see_a_probe_fire(probes: tuple[Any, Recorder]) -> None:
    """The probes call runcov through a C object that suspends tracing and profiling: a
    profiler and a tracer of the application see the events of the original code only."""
    from runcov.tracing.probes import original_of
    from tests.corpus import branches

    def events(run: Callable[[], Any]) -> list[tuple[str, str, int]]:
        seen: list[tuple[str, str, int]] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            seen.append((frame.f_code.co_name, event, 0))

        def trace(frame: Any, event: str, arg: Any) -> Any:
            seen.append((frame.f_code.co_name, event, frame.f_lineno))
            return trace

        old_trace = sys.gettrace()
        sys.setprofile(profile)
        sys.settrace(trace)
        try:
            run()
        finally:
            sys.settrace(old_trace)
            sys.setprofile(None)
        # What happens from the call of the measured function to its return (the profiler's
        # events included): nothing of runcov's may appear in between.
        start = next(i for i, event in enumerate(seen) if event[:2] == ("classify", "call"))
        end = max(i for i, event in enumerate(seen) if event[:2] == ("classify", "return"))
        return seen[start : end + 1]

    _, recorder = probes
    probed_code = branches.classify.__code__
    armed = events(lambda: branches.classify(-5))
    assert recorder.calls > 0  # the probes fired, unseen
    quiet = events(lambda: branches.classify(-5))
    branches.classify.__code__ = original_of(probed_code)
    try:
        original = events(lambda: branches.classify(-5))
    finally:
        branches.classify.__code__ = probed_code
    assert armed == quiet == original
    assert any(event == "line" for _, event, _ in original)
    assert {name for name, _, _ in original} == {"classify"}


def test_cpythons_own_tests_pass_with_probes_in_them() -> None:
    """CPython's tests of tracing, generators, coroutines, exceptions, pattern matching and
    more, with their own code probed, and its tests of several library modules against the
    probed modules, run in a fresh interpreter: all pass (tracers see nothing of the probes)."""
    try:
        import test.test_sys_settrace  # noqa: F401
    except ImportError:
        pytest.skip("this CPython was installed without its test package")
    done = run_python("-m", "tests.cpython_under_probes", cwd=ROOT, timeout=600)
    assert "not probed 0" in done.stderr


def test_compaction_takes_fired_probes_out_and_a_new_epoch_puts_them_back(
    probes: tuple[Any, Recorder],
) -> None:
    """Functions whose probes fired get code with only the probes still armed (the original
    once all fired): later first hits still record, a new epoch gives them every probe back."""
    from runcov.tracing.probes import original_of
    from tests.corpus import branches, loops

    probed, recorder = probes
    full_classify = branches.classify.__code__
    full_nested = loops.nested.__code__
    branches.classify(-5)
    for args in ((3, 3), (0, 3)):
        loops.nested(*args)
    first = {k: set(v) for k, v in recorder.lines.items()}
    assert probed.compact() >= 2
    variant = branches.classify.__code__
    assert variant is not full_classify and original_of(variant) is original_of(full_classify)
    assert len(variant.co_code) < len(full_classify.co_code)
    calls = recorder.calls
    branches.classify(-5)
    assert recorder.calls == calls  # its probes are gone, not just quiet
    from types import FunctionType

    unprobed = FunctionType(original_of(full_classify), vars(branches))
    inputs = (-5, 0, 3, 50, 1000)
    assert [branches.classify(x) for x in inputs] == [unprobed(x) for x in inputs]
    _, lines, _ = _coverage(lambda: [branches.classify(x) for x in inputs])
    # The variant's probes record the lines that had not run yet, and only those.
    assert recorder.lines == {**first, **{k: first.get(k, set()) | v for k, v in lines.items()}}
    probed.compact()
    assert branches.classify.__code__ is original_of(full_classify)  # all its lines ran
    calls = recorder.calls
    branches.classify(0)
    assert recorder.calls == calls
    recorder.lines.clear()
    probed.rearm()
    assert branches.classify.__code__ is full_classify
    assert loops.nested.__code__ is full_nested
    branches.classify(-5)
    assert recorder.lines == {k: v for k, v in first.items() if k == full_classify.co_filename}


#: A function with an inner one, whose line 5 runs only for a false ``flag``.
_OUTER_INNER = (
    "def outer(flag):\n"
    "    def inner(x):\n"
    "        if x:\n"
    "            return 1\n"
    "        return 2\n"
)


def _census_probed(name: str, source: str) -> tuple[Any, Recorder, Any]:
    """``source``'s function ``outer``, defined by census-probed code as file ``name`` of the
    corpus directory, with its probes and their recorder."""
    from runcov.tracing import _accel  # type: ignore[attr-defined]
    from runcov.tracing.probes import Probes

    recorder = Recorder()
    probes = Probes(_under(CORPUS_DIR), recorder, _accel.set_unit, _accel.Quiet)
    probes.enabled = True
    namespace: dict[str, Any] = {}
    filename = os.path.join(CORPUS_DIR, name)
    exec(probes.probed(compile(source, filename, "exec")), namespace)
    return probes, recorder, namespace["outer"]


def test_compaction_keeps_the_code_a_function_makes_probed() -> None:
    """A function whose own lines all ran but whose nested function has lines left keeps
    making probed nested functions after compaction: their first hits still record."""
    from runcov.tracing.probes import original_of

    filename = os.path.join(CORPUS_DIR, "nested_synthetic.py")
    source = _OUTER_INNER + "    return inner(flag)\n"
    probes, recorder, outer = _census_probed("nested_synthetic.py", source)
    assert outer(1) == 1
    assert recorder.lines == {filename: {1, 2, 3, 4, 6}}
    assert probes.compact() == 1
    assert outer.__code__ is not original_of(outer.__code__)  # no probe left, nested ones kept
    assert outer(0) == 2
    assert recorder.lines == {filename: {1, 2, 3, 4, 5, 6}}


def test_compaction_compacts_the_code_a_function_makes_alike() -> None:
    """Comprehensions, lambdas and inner functions are made from their function's constants
    at each run: compaction gives the function constants compacted alike, so the code it
    makes carries only the probes still armed (none, once all fired), and a new epoch gives
    it every probe back."""
    from types import CodeType

    from runcov.tracing.probes import original_of

    filename = os.path.join(CORPUS_DIR, "nested_compacted.py")
    source = _OUTER_INNER + (
        "    key = lambda y: -y\n"
        "    return sorted([inner(flag) for _ in range(2)], key=key)\n"
    )
    probes, recorder, outer = _census_probed("nested_compacted.py", source)
    full = outer.__code__

    def made(code: CodeType) -> dict[str, CodeType]:
        return {c.co_name: c for c in code.co_consts if isinstance(c, CodeType)}

    def probed(code: CodeType) -> bool:
        return any(const is probes.hit for const in code.co_consts)

    assert outer(1) == [1, 1]
    assert recorder.lines == {filename: {1, 2, 3, 4, 6, 7}}
    assert probes.compact() == 1
    nested = made(outer.__code__)
    # its own lines all ran: no probe left in it (it holds a probed inner function)
    assert len(outer.__code__.co_code) == len(original_of(full).co_code)
    assert nested["<lambda>"] is original_of(made(full)["<lambda>"])
    assert nested["<listcomp>"] is original_of(made(full)["<listcomp>"])
    inner = nested["inner"]
    assert probed(inner) and len(inner.co_code) < len(made(full)["inner"].co_code)
    calls = recorder.calls
    assert outer(1) == [1, 1]
    assert recorder.calls == calls  # no probe left on the lines that ran
    assert outer(0) == [2, 2]
    assert recorder.lines == {filename: {1, 2, 3, 4, 5, 6, 7}}
    probes.compact()
    assert all(not probed(code) for code in made(outer.__code__).values())
    recorder.lines.clear()
    probes.rearm()
    assert outer.__code__ is full
    assert outer(0) == [2, 2]
    assert recorder.lines == {filename: {2, 3, 5, 6, 7}}
