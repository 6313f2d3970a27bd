"""The ``compare-tests`` view: production coverage against a test suite's coverage.py data."""

from __future__ import annotations

import fnmatch
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from runcov.reports.local import (
    SourceError,
    analyze_local,
    function_body,
    relative_to_roots,
    resolve_local,
)
from runcov.reports.table import fmt_ranges, render_table

Arc = tuple[int, int]


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
    def untested_arcs(self) -> set[Arc]:
        """Branches taken in production that the tests never take (needs branch data)."""
        if not self.test_arcs:
            return set()
        return self._branch_arcs(self.prod_arcs - self.test_arcs)

    @property
    def unused_arcs(self) -> set[Arc]:
        """Branches the tests take that production never took (needs branch data)."""
        if not self.prod_arcs:
            return set()
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
            "untested_arcs": [list(a) for a in sorted(self.untested_arcs)],
            "unused_arcs": [list(a) for a in sorted(self.unused_arcs)],
            "functions": self.function_rows(),
        }


def read_test_data(
    data_file: Path, sources: Sequence[Path]
) -> dict[str, tuple[set[int], set[Arc]]]:
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
    out: dict[str, tuple[set[int], set[Arc]]] = {}
    for filename in data.measured_files():
        rel = relative_to_roots(filename, sources)
        if rel is None:
            continue
        lines = set(data.lines(filename) or [])
        arcs = set(data.arcs(filename) or []) if data.has_arcs() else set()
        out[rel] = (lines, arcs)
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
    tests: dict[str, tuple[set[int], set[Arc]]],
    sources: Sequence[Path],
    omit: Sequence[str] = (),
    advance: Optional[Callable[[int], None]] = None,
) -> list[FileComparison]:
    """Join production detail with test data per file (union of both sides' files)."""
    prod = {f["path"]: f for f in detail.get("files", [])}
    paths = sorted(set(prod) | set(tests))
    out = []
    for path in paths:
        if advance is not None:
            advance(1)
        if any(fnmatch.fnmatch(path, pattern) for pattern in omit):
            continue
        fc = FileComparison(path)
        p = prod.get(path)
        if p is not None:
            fc.in_production = bool(p.get("lines"))
            fc.prod_lines = {int(e[0]) for e in p.get("lines", [])}
            fc.prod_arcs = {(int(e[0]), int(e[1])) for e in p.get("arcs", [])}
            fc.executable = {int(n) for n in p.get("executable_lines", [])}
            fc.possible_arcs = {(int(a), int(b)) for a, b in p.get("possible_arcs", [])}
            fc.functions = [(f["name"], int(f["start"]), int(f["end"]))
                            for f in p.get("functions", [])]
        if path in tests:
            fc.in_tests = bool(tests[path][0])
            fc.test_lines, fc.test_arcs = set(tests[path][0]), set(tests[path][1])
        # Denominators are known when production sent them or the local file can be analyzed
        # (a file may truly have no statements: only then is an empty set meaningful).
        known = bool(fc.executable)
        try:
            found = resolve_local(path, sources)
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


def comparison_json(files: list[FileComparison], release: dict[str, Any]) -> dict[str, Any]:
    """JSON document of a comparison, with totals."""
    return {
        "release": release,
        "totals": {
            "files": len(files),
            "untested_lines": sum(len(f.untested_lines) for f in files),
            "unused_lines": sum(len(f.unused_lines) for f in files),
            "import_time_lines": sum(len(f.import_time_lines) for f in files),
            "untested_arcs": sum(len(f.untested_arcs) for f in files),
            "unused_arcs": sum(len(f.unused_arcs) for f in files),
        },
        "files": [f.as_dict() for f in files],
    }


def render_comparison(doc: dict[str, Any], functions: bool = True) -> str:
    """Terminal form: per-file table, then the lines and functions behind each number."""
    rows = []
    for f in doc["files"]:
        rows.append([
            f["path"], f["production_lines"], f["test_lines"], len(f["untested_lines"]),
            len(f["unused_lines"]), len(f["untested_arcs"]), len(f["unused_arcs"]),
        ])
    t = doc["totals"]
    out = [render_table(
        ["File", "Prod", "Tests", "Untested", "Unused", "UntestedBr", "UnusedBr"], rows,
        "lrrrrrr",
        [f"TOTAL ({t['files']} files)", "", "", t["untested_lines"], t["unused_lines"],
         t["untested_arcs"], t["unused_arcs"]],
    )]
    out.append("\nUntested = run in production, never by the tests (risk); "
               "Unused = run by the tests, never in production (dead-code candidates).\n")
    if t.get("import_time_lines"):
        out.append(f"Unused leaves out {t['import_time_lines']} lines that run only at import "
                   "time (imports, def/class lines, decorators, module- and class-level "
                   "statements), which no request executes.\n")
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
