"""Run some of CPython's own test modules with census probes in them and in the standard
library modules they test, then again with the fired probes compacted away
(``python -m tests.cpython_under_probes``; used by ``tests/test_probes.py``). Exits non-zero
when a test fails or no probe fired.

``--exact``: instead, run them inside one exact scope (``capture_coverage``) of the settrace
core, whose exact probes are then armed and record every line, arc, call, return and
exception exit of the tests and of the modules they test."""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import unittest
from typing import Any

#: Test modules whose own code is probed: the compiler's constructs, and the tracing tests.
PROBED_TESTS = (
    "test_sys_settrace",
    "test_generators",
    "test_coroutines",
    "test_asyncgen",
    "test_exceptions",
    "test_exception_group",
    "test_with",
    "test_contextlib_async",
    "test_patma",
    "test_grammar",
    "test_scope",
    "test_raise",
    "test_listcomps",
    "test_traceback",
)
#: Test modules run against probed standard-library modules.
LIBRARY_TESTS = {
    "test_json": "json",
    "test_argparse": "argparse.py",
    "test_textwrap": "textwrap.py",
    "test_difflib": "difflib.py",
    "test_dataclasses": "dataclasses.py",
    "test_enum": "enum.py",
    "test_contextlib": "contextlib.py",
    "test_fractions": "fractions.py",
    "test_tomllib": "tomllib",
}


def _roots() -> list[str]:
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    roots = [os.path.join(stdlib, "test", name + ".py") for name in PROBED_TESTS]
    roots += [os.path.join(stdlib, path) for path in LIBRARY_TESTS.values()]
    return roots


def main_exact() -> int:
    """The tests inside one exact scope, every probe armed."""
    from runcov.testing import capture_coverage
    from runcov.tracing import get_core

    roots = _roots()
    core: Any = get_core()
    if not getattr(core, "exact_by_probes", False):
        print("exact probes not in use", file=sys.stderr)
        return 1
    core.add_roots(roots)  # before the test modules are imported: they load probed
    names = [f"test.{name}" for name in (*PROBED_TESTS, *LIBRARY_TESTS)]
    runner = unittest.TextTestRunner(verbosity=0, stream=sys.stderr)
    suite = unittest.defaultTestLoader.loadTestsFromNames(names)
    with capture_coverage(source=roots) as cov:
        result = runner.run(suite)
    lines = sum(map(len, cov.lines.values()))
    arcs = sum(map(len, cov.arcs.values()))
    depth = core._exact.depth()
    print(
        f"exact: probes {len(core._probes.probes)}, not probed {core._probes.failed}, "
        f"files {len(cov.lines)}, lines {lines}, arcs {arcs}, frames left {depth}, "
        f"tests {result.testsRun}",
        file=sys.stderr,
    )
    ok = (
        result.wasSuccessful()
        and core._probes.failed == 0
        and len(cov.lines) >= len(roots) // 2
        and depth == 0
    )
    return 0 if ok else 1


def main() -> int:
    if "--exact" in sys.argv[1:]:
        return main_exact()
    from runcov.tracing import _accel  # type: ignore[attr-defined]
    from runcov.tracing.probes import Probes

    roots = _roots()

    def classify(filename: str) -> str | None:
        path = os.path.realpath(filename)
        for root in roots:
            if path == root or path.startswith(root + os.sep):
                return path
        return None

    hits: dict[str, set[int]] = {}

    def record(filename: str, line: int) -> bool:
        hits.setdefault(filename, set()).add(line)
        return True

    probes = Probes(classify, record, _accel.set_unit, _accel.Quiet)
    probes.enable()  # before the test modules are imported: they load probed
    names = [f"test.{name}" for name in (*PROBED_TESTS, *LIBRARY_TESTS)]
    runner = unittest.TextTestRunner(verbosity=0, stream=sys.stderr)
    result = runner.run(unittest.defaultTestLoader.loadTestsFromNames(names))
    print(
        f"probes {len(probes.probes)}, not probed {probes.failed}, files hit {len(hits)}, "
        f"lines {sum(map(len, hits.values()))}, tests {result.testsRun}",
        file=sys.stderr,
    )
    # Once more with the fired probes taken out of the functions' code (variants holding only
    # the probes still armed, or the originals).
    compacted = probes.compact()
    again = runner.run(unittest.defaultTestLoader.loadTestsFromNames(names))
    print(f"compacted {compacted} functions, tests {again.testsRun}", file=sys.stderr)
    ok = (
        result.wasSuccessful()
        and again.wasSuccessful()
        and compacted > 0
        and probes.failed == 0
        and len(hits) >= len(roots) // 2
    )
    return 0 if ok else 1


if __name__ == "__main__":
    # CPython's tests of a signal arriving inside ``yield from`` need Python's own SIGINT
    # handler; a process started in the background by a non-interactive shell (a CI job)
    # inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
