"""The ``compare-tests`` view: production coverage against a test suite's coverage.py data."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from runcov.reports.local import (
    Exclusion,
    SourceError,
    analyze_local,
    function_body,
    relative_to_roots,
    resolve_local,
)
from runcov.reports.table import fmt_ranges, render_table, total_label

Arc = tuple[int, int]


@dataclass
class TestData:
    """A test suite's coverage.py data: lines and arcs per collector-style path.

    ``branches`` is whether the data file was measured with branch coverage (``coverage run
    --branch``): the data file as a whole has arcs or has none, and a file that the tests never
    ran has none in either case.
    """

    files: dict[str, tuple[set[int], set[Arc]]] = field(default_factory=dict)
    branches: bool = True


@dataclass
class FileComparison:
    """One file's production and test coverage, and what differs."""

    path: str
    executable: set[int] = field(default_factory=set)
    prod_lines: set[int] = field(default_factory=set)
    test_lines: set[int] = field(default_factory=set)
    prod_arcs: set[Arc] = field(default_factory=set)
    test_arcs: set[Arc] = field(default_factory=set)
    possible_arcs: set[Arc] = field(default_factory=set)
    functions: list[tuple[str, int, int]] = field(default_factory=list)
    bodies: dict[tuple[int, int], int] = field(default_factory=dict)  # from the local source
    import_time: set[int] = field(default_factory=set)
    in_production: bool = False
    in_tests: bool = False
    #: Whether production's branches of this file are known: not when production ran it by
    #: census alone, which records lines and no arcs (a file production never ran took none).
    prod_branches: bool = True
    #: Whether the tests' branches of this file are known: not when the tests ran it and their
    #: data file has no branch data (a file the tests never ran took none).
    test_branches: bool = True

    @property
    def untested_lines(self) -> set[int]:
        """Executed in production, not by the tests: risk."""
        return self.prod_lines - self.test_lines

    @property
    def unused_lines(self) -> set[int]:
        """Executed by the tests, never in production: dead-code candidates.

        Lines that only run at import time are no candidates: requests never execute them,
        so production coverage cannot tell whether they are used.
        """
        return self.test_lines - self.prod_lines - self.import_time

    @property
    def import_time_lines(self) -> set[int]:
        """Executed by the tests, never in production, and left out of :attr:`unused_lines`."""
        return (self.test_lines - self.prod_lines) & self.import_time

    @property
    def branch_lines(self) -> set[int]:
        """Lines with two or more possible exits (coverage.py's branch lines)."""
        exits: dict[int, int] = {}
        for start, _ in self.possible_arcs:
            exits[start] = exits.get(start, 0) + 1
        return {line for line, n in exits.items() if n >= 2 and line > 0}

    def _branch_arcs(self, arcs: set[Arc]) -> set[Arc]:
        branch_lines = self.branch_lines
        return {a for a in arcs if a[0] in branch_lines and a in self.possible_arcs}

    @property
    def branches_compared(self) -> bool:
        """Whether both sides' branches of this file are known, so that they can be compared."""
        return self.prod_branches and self.test_branches

    @property
    def untested_arcs(self) -> Optional[set[Arc]]:
        """Branches taken in production that the tests never take; None when unknown.

        A file the tests never ran is a file whose every production branch is untested: what
        makes the answer unknown is a side without branch data (:attr:`branches_compared`),
        not a side without arcs for this file.
        """
        if not self.branches_compared:
            return None
        return self._branch_arcs(self.prod_arcs - self.test_arcs)

    @property
    def unused_arcs(self) -> Optional[set[Arc]]:
        """Branches the tests take that production never took; None when unknown.

        As :attr:`untested_arcs`: a file production never ran took none of its branches.
        """
        if not self.branches_compared:
            return None
        return self._branch_arcs(self.test_arcs - self.prod_arcs)

    def function_rows(self) -> list[dict[str, Any]]:
        """Per function: production/test line counts and its verdict."""
        rows = []
        for name, start, end in self.functions:
            body = function_body(self.executable, start, end, self.bodies.get((start, end)))
            prod = len(body & self.prod_lines)
            test = len(body & self.test_lines)
            if prod and not test:
                verdict = "untested"
            elif test and not prod:
                verdict = "unused in production"
            elif not test and not prod:
                verdict = "never run"
            else:
                verdict = "both"
            rows.append({
                "name": name, "start": start, "end": end, "production_lines": prod,
                "test_lines": test, "verdict": verdict,
            })
        return rows

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "in_production": self.in_production,
            "in_tests": self.in_tests,
            "executable_lines": len(self.executable),
            "production_lines": len(self.prod_lines),
            "test_lines": len(self.test_lines),
            "untested_lines": sorted(self.untested_lines),
            "unused_lines": sorted(self.unused_lines),
            "import_time_lines": len(self.import_time_lines),
            "untested_arcs": _arc_list(self.untested_arcs),
            "unused_arcs": _arc_list(self.unused_arcs),
            "functions": self.function_rows(),
        }


def _arc_list(arcs: Optional[set[Arc]]) -> Optional[list[list[int]]]:
    """Arcs as JSON lists, sorted; None (null) when they are unknown."""
    return None if arcs is None else [list(a) for a in sorted(arcs)]


def read_test_data(data_file: Path, sources: Sequence[Path]) -> TestData:
    """Lines and arcs per collector-style path from a coverage.py data file."""
    from coverage import CoverageData
    from coverage.exceptions import CoverageException

    if not Path(data_file).is_file():
        raise SourceError(f"no coverage data file at {data_file}")
    check_data_file(Path(data_file))
    data = CoverageData(basename=str(data_file))
    try:
        data.read()
    except CoverageException as exc:
        raise SourceError(f"cannot read the coverage data file {data_file}: {exc}") from exc
    out = TestData(branches=data.has_arcs())
    for filename in data.measured_files():
        rel = relative_to_roots(filename, sources)
        if rel is None:
            continue
        lines = set(data.lines(filename) or [])
        arcs = set(data.arcs(filename) or []) if out.branches else set()
        out.files[rel] = (lines, arcs)
    return out


def check_data_file(data_file: Path) -> None:
    """Refuse a file that is not a coverage.py data file, before coverage.py opens it.

    coverage.py reports a file that is no SQLite database with an error of its own, but it
    turns an empty file or another SQLite database into an empty data file by writing its
    tables into it: the file is looked at here, read-only, so that it stays as it was.
    """
    what = "a coverage.py data file (the SQLite file `coverage run` writes, e.g. .coverage)"
    try:
        with open(data_file, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SourceError(f"cannot read {data_file}: {exc.strerror or exc}") from exc
    if not head:
        raise SourceError(f"{data_file} is empty, not {what}")
    if head.lstrip()[:1] in (b"{", b"["):
        raise SourceError(
            f"{data_file} is JSON, not {what}: give the data file, not a report made from it"
        )
    if head != b"SQLite format 3\x00":
        raise SourceError(f"{data_file} is not {what}")
    uri = Path(data_file).resolve().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        try:
            db.execute("SELECT version FROM coverage_schema").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SourceError(f"{data_file} is not {what}: {exc}") from exc


def compare(
    detail: dict[str, Any],
    tests: TestData,
    sources: Sequence[Path],
    exclude: Optional[Exclusion] = None,
    advance: Optional[Callable[[int], None]] = None,
) -> list[FileComparison]:
    """Join production detail with test data per file (union of both sides' files).

    Files matching ``exclude`` are left out. Branches are compared where both sides' are
    known: see :attr:`FileComparison.prod_branches` and :attr:`FileComparison.test_branches`.
    """
    prod = {f["path"]: f for f in detail.get("files", [])}
    paths = sorted(set(prod) | set(tests.files))
    out = []
    for path in paths:
        if advance is not None:
            advance(1)
        try:
            found = resolve_local(path, sources)
        except SourceError:
            found = None
        if exclude and exclude(path, found):
            continue
        fc = FileComparison(path)
        p = prod.get(path)
        if p is not None:
            fc.in_production = bool(p.get("lines"))
            fc.prod_lines = {int(e[0]) for e in p.get("lines", [])}
            fc.prod_arcs = {(int(e[0]), int(e[1])) for e in p.get("arcs", [])}
            fc.executable = {int(n) for n in p.get("executable_lines", [])}
            fc.possible_arcs = {(int(a), int(b)) for a, b in p.get("possible_arcs", [])}
            fc.functions = [
                (f["name"], int(f["start"]), int(f["end"])) for f in p.get("functions", [])
            ]
            # The collector's own rule: executed lines without a single arc were measured by
            # census alone (an exactly measured line is the end of an arc).
            fc.prod_branches = not (fc.prod_lines and not fc.prod_arcs)
        if path in tests.files:
            fc.in_tests = bool(tests.files[path][0])
            fc.test_lines, fc.test_arcs = set(tests.files[path][0]), set(tests.files[path][1])
            fc.test_branches = tests.branches or not fc.test_lines
        # Denominators are known when production sent them or the local file can be analyzed
        # (a file may truly have no statements: only then is an empty set meaningful).
        known = bool(fc.executable)
        try:
            local = analyze_local(found) if found else None
        except SourceError:
            local = None
        if local is not None:
            known = True
            fc.executable = fc.executable or set(local.lines)
            fc.possible_arcs = fc.possible_arcs or set(local.arcs)
            fc.functions = fc.functions or list(local.functions)
            fc.bodies = local.bodies
            fc.import_time = local.import_time(fc.executable)
        elif known:
            fc.import_time = fc.executable - {
                n for _, start, end in fc.functions
                for n in function_body(fc.executable, start, end)
            }
        if known:
            fc.test_lines &= fc.executable
            fc.prod_lines &= fc.executable
        out.append(fc)
    return out


def _total(
    files: list[FileComparison], counts: Callable[[FileComparison], Optional[set[Arc]]]
) -> Optional[int]:
    """The sum of the files' known counts; None when none of the files has one to give."""
    known = [n for n in map(counts, files) if n is not None]
    return sum(len(n) for n in known) if known or not files else None


def comparison_json(
    files: list[FileComparison],
    release: dict[str, Any],
    tests: TestData,
    data_file: Optional[str] = None,
) -> dict[str, Any]:
    """JSON document of a comparison, with totals.

    ``branch_data`` says which side measured branches (``tests``: the data file was measured
    with ``--branch``; ``production``: some file was not measured by census alone), and
    ``branches_not_compared`` names the files whose branch figures are null for want of them.
    """
    return {
        "release": release,
        "tests_data_file": data_file,
        "branch_data": {
            "tests": tests.branches,
            "production": all(f.prod_branches for f in files),
        },
        "branches_not_compared": {
            "tests": [f.path for f in files if not f.test_branches],
            "production": [f.path for f in files if not f.prod_branches],
        },
        "totals": {
            "files": len(files),
            "untested_lines": sum(len(f.untested_lines) for f in files),
            "unused_lines": sum(len(f.unused_lines) for f in files),
            "import_time_lines": sum(len(f.import_time_lines) for f in files),
            "untested_arcs": _total(files, lambda f: f.untested_arcs),
            "unused_arcs": _total(files, lambda f: f.unused_arcs),
        },
        "files": [f.as_dict() for f in files],
    }


#: What the table shows for branch figures that cannot be computed (see ``branch_notes``).
NOT_MEASURED = "n/a"


def _count(arcs: Optional[list[Any]]) -> Any:
    return NOT_MEASURED if arcs is None else len(arcs)


def branch_notes(doc: dict[str, Any]) -> list[str]:
    """Why branch figures read n/a: the side that lacks branch data, and for which files."""
    out = []
    missing = doc.get("branches_not_compared", {})
    tests = missing.get("tests") or []
    if tests:
        name = doc.get("tests_data_file") or "the tests' data file"
        out.append(
            f"UntestedBr and UnusedBr are n/a for the {len(tests)} file(s) the tests ran: {name} "
            "has no branch data (it was measured without --branch), so which branches the tests "
            "took is unknown; measure the tests with `coverage run --branch` to compare "
            "branches."
        )
    prod = [p for p in missing.get("production") or [] if p not in tests]
    if prod:
        out.append(
            f"UntestedBr and UnusedBr are n/a for the {len(prod)} file(s) production ran by "
            "census alone, which records lines and no branches."
        )
    return out


def render_comparison(doc: dict[str, Any], functions: bool = True) -> str:
    """Terminal form: per-file table, then the lines and functions behind each number."""
    rows = []
    for f in doc["files"]:
        rows.append(
            [
                f["path"],
                f["production_lines"],
                f["test_lines"],
                len(f["untested_lines"]),
                len(f["unused_lines"]),
                _count(f["untested_arcs"]),
                _count(f["unused_arcs"]),
            ]
        )
    t = doc["totals"]
    out = [
        render_table(
            ["File", "Prod", "Tests", "Untested", "Unused", "UntestedBr", "UnusedBr"],
            rows,
            "lrrrrrr",
            [
                total_label(t["files"]),
                "",
                "",
                t["untested_lines"],
                t["unused_lines"],
                NOT_MEASURED if t["untested_arcs"] is None else t["untested_arcs"],
                NOT_MEASURED if t["unused_arcs"] is None else t["unused_arcs"],
            ],
        )
    ]
    out.append(
        "\nUntested = run in production, never by the tests (risk); "
        "Unused = run by the tests, never in production (dead-code candidates).\n"
    )
    for note in branch_notes(doc):
        out.append(note + "\n")
    if t.get("import_time_lines"):
        out.append(
            f"Unused leaves out {t['import_time_lines']} lines that run only at import "
            "time (imports, def/class lines, decorators, module- and class-level "
            "statements), which no request executes.\n"
        )
    for f in doc["files"]:
        parts = []
        if f["untested_lines"]:
            parts.append(f"  untested lines: {fmt_ranges(f['untested_lines'])}\n")
        if f["unused_lines"]:
            parts.append(f"  unused lines:   {fmt_ranges(f['unused_lines'])}\n")
        if functions:
            for fn in f["functions"]:
                if fn["verdict"] in ("untested", "unused in production"):
                    parts.append(
                        f"  {fn['verdict']}: {fn['name']} (lines {fn['start']}-{fn['end']})\n"
                    )
        if parts:
            out.append(f"\n{f['path']}\n")
            out.extend(parts)
    return "".join(out)
