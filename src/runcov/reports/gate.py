"""The ``gate`` check: production coverage of changed lines or named paths against a threshold."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from runcov.reports.client import CollectorClient, ReleaseSelection
from runcov.reports.local import (
    Exclusion,
    LocalStatic,
    SourceError,
    analyze_local,
    differs,
    function_body,
    resolve_local,
)
from runcov.reports.report import covers_anything, release_label
from runcov.reports.table import fmt_ranges, percent, render_table
from runcov.reports.window import Window

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_SPEC = re.compile(r"^(?P<path>[^:]+?)(?:::(?P<func>[\w.<>]+)|:(?P<start>\d+)(?:-(?P<end>\d+))?)?$")


class GateError(Exception):
    """The gate cannot be evaluated as asked (bad spec, git failure): a usage error."""


@dataclass
class PathSpec:
    """One ``--paths`` item: a whole file, a line range, or a function."""

    path: str
    start: Optional[int] = None
    end: Optional[int] = None
    function: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> PathSpec:
        """``file.py``, ``file.py:10``, ``file.py:10-20`` or ``pkg/mod.py::Class.method``."""
        m = _SPEC.match(text.strip())
        if not m or not m.group("path").endswith(".py"):
            raise GateError(
                f"bad path spec {text!r}: use file.py, file.py:10-20 or file.py::function"
            )
        start = int(m.group("start")) if m.group("start") else None
        end = int(m.group("end")) if m.group("end") else start
        if start is not None and end is not None and (start < 1 or end < start):
            raise GateError(f"bad line range in {text!r}")
        return cls(m.group("path"), start, end, m.group("func"))

    def __str__(self) -> str:
        """The spec as written on the command line."""
        if self.function:
            return f"{self.path}::{self.function}"
        if self.start is not None:
            end = self.end if self.end is not None else self.start
            return f"{self.path}:{self.start}" + (f"-{end}" if end != self.start else "")
        return self.path


def shown_percent(covered: int, total: int, threshold: float) -> str:
    """``covered / total`` as a percentage with one decimal, or as many more as it takes for
    the number shown to compare with ``threshold`` as the exact share does.

    The gate compares the exact share: 2 of 3 lines (66.666...%) fail a threshold of 66.7,
    which ``66.7% < 66.7%`` would contradict; ``66.67% < 66.7%`` does not.
    """
    exact = 100.0 * covered / total
    reached = exact >= threshold
    shown_threshold = float(threshold_text(threshold))
    for digits in range(1, 16):
        shown = f"{exact:.{digits}f}"
        if (float(shown) >= shown_threshold) == reached:
            return shown
    return repr(exact)


@dataclass
class FileResult:
    """The gate's view of one file: the lines it measured and which production executed."""

    path: str
    lines: set[int] = field(default_factory=set)
    covered: set[int] = field(default_factory=set)
    note: str = ""

    def shown_percent(self, threshold: float) -> Optional[str]:
        """The covered percentage as the gate shows it next to ``threshold`` (None: no
        line), with the digits its verdict would need (see :func:`shown_percent`)."""
        if not self.lines:
            return None
        return shown_percent(len(self.covered), len(self.lines), threshold)

    def as_dict(self, threshold: float) -> dict[str, Any]:
        """JSON form (``percent`` with the digits the verdict at ``threshold`` needs)."""
        missed = sorted(self.lines - self.covered)
        shown = self.shown_percent(threshold)
        pct = None if shown is None else float(shown)
        return {
            "path": self.path, "lines": len(self.lines), "covered": len(self.covered),
            "percent": pct,
            "missed_lines": missed, "note": self.note,
        }


@dataclass
class GateResult:
    """Outcome of one gate evaluation."""

    release: dict[str, Any]
    what: str  # "changed lines" | "selected lines"
    threshold: float
    files: list[FileResult]
    import_time: dict[str, set[int]] = field(default_factory=dict)  # left out, per file
    differing: list[str] = field(default_factory=list)  # local file is not production's
    #: Set when no measured changed file is known to the collector for the release although
    #: it knows others: a hint (a wrong --source makes every path unknown), not an error, as
    #: a change of new modules only is the same case.
    unknown_hint: str = ""
    #: Changed files left out because they match ``--exclude``.
    excluded: list[str] = field(default_factory=list)
    #: Measured changed files the collector never heard of for the release (counted as never
    #: executed): new modules, or files that are no production code (tests) to ``--exclude``.
    unknown: list[str] = field(default_factory=list)
    #: The ``--since``/``--until`` window the coverage was read in (see :class:`Window`).
    window: Optional[Window] = None
    #: ``--exclude`` globs that match no file: not the changed or named files, not the
    #: release's, not those git tracks under ``--source`` (most often a typo).
    exclude_unmatched: list[str] = field(default_factory=list)
    #: Whether the release (its endpoint, in the window) executed any line at all: False
    #: makes every measured line a miss, most often a window or release that is not the one
    #: meant (a ``--since`` after the traffic), which the verdict's note says.
    has_coverage: bool = True
    #: The endpoint the gate was narrowed to (``--endpoint``), named in the verdict.
    endpoint: Optional[str] = None
    #: ``--changed-since``: the ref, and how many files git found changed since it under
    #: ``--source`` (before ``--exclude``); 0 is said, as a wrong ref would pass forever.
    since_ref: Optional[str] = None
    changed_files: Optional[int] = None

    @property
    def total(self) -> int:
        """Executable lines measured."""
        return sum(len(f.lines) for f in self.files)

    @property
    def covered(self) -> int:
        """Of those, executed in production."""
        return sum(len(f.covered) for f in self.files)

    @property
    def percent(self) -> Optional[float]:
        """Covered share, None when nothing was measured."""
        return percent(self.covered, self.total)

    @property
    def passed(self) -> bool:
        """True when coverage reaches the threshold, or there is nothing to measure."""
        if self.total == 0:
            return True
        return 100.0 * self.covered / self.total >= self.threshold

    def message(self) -> str:
        """``canary covered 12 of 40 changed lines (30.0%) < 80% in shop 1.1 (prod, canary)``.

        The release is named in full (version, environment, role): without ``--version`` the
        gate measures the most recently seen one, and the verdict should say which that was.
        """
        who = self.release.get("role") or "production"
        where = self._where()
        if self.total == 0:
            return f"no executable {self.what} to measure: gate passed for {where}"
        op = ">=" if self.passed else "<"
        return (
            f"{who} covered {self.covered} of {self.total} {self.what} "
            f"({self.shown_percent()}%) {op} {threshold_text(self.threshold)}% in {where}"
        )

    def _where(self) -> str:
        """``shop 1.1 (prod, canary)``, with the endpoint and the window when narrowed."""
        where = release_label(self.release)
        if self.endpoint:
            where += f", endpoint {self.endpoint}" + ("," if self.window else "")
        if self.window:
            where += f" {self.window.label()}"
        return where

    def shown_percent(self) -> str:
        """The covered percentage as the verdict shows it (see :func:`shown_percent`)."""
        return shown_percent(self.covered, self.total, self.threshold)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "passed": self.passed, "message": self.message(), "release": self.release,
            "threshold": self.threshold, "what": self.what, "lines": self.total,
            "covered": self.covered,
            "percent": float(self.shown_percent()) if self.total else None,
            "window": ({**self.window.as_dict(), "label": self.window.label()}
                       if self.window else None),
            "endpoint": self.endpoint,
            "files": [f.as_dict(self.threshold) for f in self.files],
            "import_time_lines": sum(len(v) for v in self.import_time.values()),
            "import_time": {p: sorted(v) for p, v in sorted(self.import_time.items())},
            "differing_files": self.differing,
            "excluded_files": self.excluded,
            "unknown_files": self.unknown,
            "exclude_unmatched": self.exclude_unmatched,
            "has_coverage": self.has_coverage,
            "changed_files": self.changed_files,
        }

    def no_coverage_note(self) -> str:
        """That the release has no coverage at all where the gate looked, or ""."""
        if self.has_coverage or self.total == 0:
            return ""
        where = self._where()
        return (
            f"{where} has no coverage at all: every line counts as missed (is this the "
            "release and window meant?)"
        )

    def nothing_changed_note(self) -> str:
        """That git finds no change since the ref at all, or "": a ref that is the deployed
        commit itself (a wrong tag) would otherwise pass every gate, unnoticed."""
        if self.changed_files != 0:
            return ""
        return (
            f"git finds no change since {self.since_ref} under --source (committed or not): "
            "nothing to gate; is that the commit the change is since?"
        )

    def import_time_note(self) -> str:
        """Why some changed lines were not measured, or "" when none were left out."""
        n = sum(len(v) for v in self.import_time.values())
        if not n:
            return ""
        what = f"{n} {self.what} that run" if n > 1 else f"1 {self.what[:-1]} that runs"
        where = "; ".join(f"{path} {fmt_ranges(lines)}"
                          for path, lines in sorted(self.import_time.items()))
        return (
            f"left out {what} only at import time (imports, def/class lines, decorators, "
            f"module- and class-level statements), which no request executes: {where}"
        )

    def excluded_note(self) -> str:
        """Which changed files ``--exclude`` left out, or "" when none."""
        if not self.excluded:
            return ""
        return (
            f"left out {len(self.excluded)} changed file(s) matching --exclude: "
            + ", ".join(self.excluded[:10])
            + (" ..." if len(self.excluded) > 10 else "")
        )

    def unknown_note(self) -> str:
        """Measured files the collector never heard of, or "" (see :attr:`unknown_hint`).

        They count as never executed, which is right for a new module that no request ran
        yet and wrong for a file that is not production code at all (a test, a script
        changed in the same commit): the note names them, and how to leave the others out.
        """
        if not self.unknown or self.unknown_hint:
            return ""
        return (
            f"{len(self.unknown)} measured file(s) unknown to the collector for "
            f"{release_label(self.release)} count as never executed: "
            + ", ".join(self.unknown[:10])
            + (" ..." if len(self.unknown) > 10 else "")
            + " (new modules no sampled request ran yet; leave out files that are not "
            "production code, such as tests, with --exclude GLOB)"
        )


def threshold_text(threshold: float) -> str:
    """``80``, ``66.7``: the threshold as given (``:g`` would round it to 6 digits)."""
    return f"{threshold:.15g}"


def render_gate(result: GateResult) -> str:
    """Per-file table and the verdict line."""
    out = []
    rows = []
    for f in result.files:
        missed = sorted(f.lines - f.covered)
        pct = f.shown_percent(result.threshold)
        rows.append([
            f.path, len(f.lines), len(f.covered), "-" if pct is None else f"{pct}%",
            fmt_ranges(missed) or f.note,
        ])
    if rows:
        out.append(render_table(["File", "Lines", "Covered", "Cover", "Missed"], rows, "lrrrl"))
        out.append("\n")
    for note in (
        result.nothing_changed_note(),
        result.excluded_note(),
        result.import_time_note(),
        result.unknown_note(),
        result.no_coverage_note(),
    ):
        if note:
            out.append(f"note: {note}\n")
    out.append(("PASS: " if result.passed else "FAIL: ") + result.message() + "\n")
    return "".join(out)


def parse_unified_diff(text: str) -> dict[str, set[int]]:
    """Added/changed line numbers (new side) per ``.py`` file from ``git diff -U0`` output."""
    changed: dict[str, set[int]] = {}
    current: Optional[str] = None
    for line in text.splitlines():
        if line.startswith("+++ "):
            target = line[4:].strip()
            if target == "/dev/null":
                current = None
                continue
            if target.startswith('"'):
                target = target.strip('"')
            current = target[2:] if target.startswith("b/") else target
            if not current.endswith(".py"):
                current = None
            continue
        if current is None:
            continue
        m = _HUNK.match(line)
        if m:
            start = int(m.group(1))
            count = int(m.group(2)) if m.group(2) is not None else 1
            if count:
                changed.setdefault(current, set()).update(range(start, start + count))
    return changed


def git_changed_lines(source: Path, ref: str) -> dict[str, set[int]]:
    """Run ``git diff -U0 REF`` in ``source`` (paths relative to it) and parse the result."""
    if ref.startswith("-"):
        raise GateError(f"bad git ref {ref!r}")
    cmd = [
        "git", "-C", str(source), "-c", "core.quotepath=off", "diff", "-U0", "--relative",
        "--no-color", "--no-ext-diff", "--no-renames", ref, "--", "*.py",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GateError(f"cannot run git: {exc}") from exc
    if proc.returncode != 0:
        raise GateError(f"git diff {ref} failed in {source}: {proc.stderr.strip()}")
    return parse_unified_diff(proc.stdout)


def tracked_files(source: Path) -> list[str]:
    """The files git tracks under ``source``, relative to it; none outside a git checkout.

    Only to tell a mistyped ``--exclude`` glob from one that matches files of the checkout
    which this gate happens not to measure (``tests/*`` when no test changed).
    """
    cmd = ["git", "-C", str(source), "-c", "core.quotepath=off", "ls-files", "-z"]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError:
        return []
    if proc.returncode != 0:
        return []
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


class _Files:
    """Lazily fetched production detail and local analysis per file."""

    def __init__(self, client: CollectorClient, sel: ReleaseSelection, sources: list[Path]):
        self.client = client
        self.sel = sel
        self.sources = sources
        summary = client.coverage(sel)
        self.release: dict[str, Any] = summary["release"]
        # Every file of the release at any time (the collector lists them whatever the
        # window or endpoint), with the sha of the version production ran.
        self.sha: dict[str, Optional[str]] = {
            f["path"]: f.get("sha") for f in summary.get("files", [])
        }
        self.known = set(self.sha)
        self.has_coverage = covers_anything(summary.get("totals") or {})
        self._detail: dict[str, dict[str, Any]] = {}
        self._local: dict[str, Optional[LocalStatic]] = {}

    def differing(self, paths: list[str]) -> list[str]:
        """Those of ``paths`` whose local file is not the version production ran."""
        out = []
        for path in sorted(paths):
            try:
                found = resolve_local(path, self.sources)
            except SourceError:
                continue
            if found is not None and differs(found, self.sha.get(path)):
                out.append(path)
        return out

    def unknown(self, path: str) -> str:
        """Why a path the collector has never heard of for the release cannot be measured."""
        known = sorted(self.known)
        tail = "/" + path.rsplit("/", 1)[-1]
        same_name = [p for p in known if p.endswith(tail) or "/" + p == tail]
        if same_name:
            hint = "did you mean " + " or ".join(repr(p) for p in same_name[:3]) + "?"
        else:
            hint = "its files: " + (", ".join(known[:5]) + (" ..." if len(known) > 5 else "")
                                    or "(none)")
        local = "" if self.local(path) is not None else "; it is not under --source either"
        return (
            f"{path}: the collector knows nothing of this file for "
            f"{release_label(self.release)} (no coverage and no static data, at any time): "
            "no sampled request ever ran it, or, more likely, the path is not the one the "
            "agents report, which is relative to their source root (--source names that root "
            f"in the checkout){local}; {hint}"
        )

    def detail(self, path: str) -> Optional[dict[str, Any]]:
        if path not in self.known:
            return None
        if path not in self._detail:
            self._detail[path] = self.client.file(self.sel, path)
        return self._detail[path]

    def local(self, path: str) -> Optional[LocalStatic]:
        if path not in self._local:
            try:
                found = resolve_local(path, self.sources)
                self._local[path] = analyze_local(found) if found else None
            except SourceError:
                self._local[path] = None
        return self._local[path]

    def executable(self, path: str) -> tuple[set[int], str]:
        """Executable lines: production's denominators, else coverage.py on the local file."""
        d = self.detail(path)
        if d and d.get("executable_lines"):
            return {int(n) for n in d["executable_lines"]}, ""
        local = self.local(path)
        if local is not None:
            note = "" if d else "never executed in production"
            return set(local.lines), note
        return set(), "no denominators and no local file"

    def covered(self, path: str) -> set[int]:
        d = self.detail(path)
        return {int(entry[0]) for entry in d.get("lines", [])} if d else set()

    def functions(self, path: str) -> list[tuple[str, int, int]]:
        d = self.detail(path)
        if d and d.get("functions"):
            return [(f["name"], int(f["start"]), int(f["end"])) for f in d["functions"]]
        local = self.local(path)
        return list(local.functions) if local else []

    def body(self, path: str, executable: set[int], start: int, end: int) -> set[int]:
        """A function's body lines, exact when the local file has that function."""
        local = self.local(path)
        return function_body(executable, start, end,
                             local.bodies.get((start, end)) if local else None)


def gate_changed(
    client: CollectorClient, sel: ReleaseSelection, source: Path, ref: str, threshold: float,
    advance: Optional[Callable[[int], None]] = None,
    exclude: Optional[Exclusion] = None,
) -> GateResult:
    """Coverage of the executable lines changed since ``ref`` in the checkout at ``source``.

    Changed lines that only run at import time (see :func:`runcov.reports.local.import_time`)
    are left out and reported as such: requests never execute them, so no traffic could
    cover them and a changed import or signature alone would fail every canary.

    Changed files matching ``exclude`` are left out too, and listed: git cannot tell
    production code from the tests or scripts changed in the same commit.
    """
    changed = git_changed_lines(source, ref)
    changed_files = len(changed)
    excluded = []
    unmatched: list[str] = []
    files = _Files(client, sel, [source])
    if exclude:
        unmatched = exclude.unmatched(
            [*changed, *sorted(files.known), *tracked_files(source)], [source]
        )
        for path in sorted(changed):
            if exclude.excludes(path, [source]):
                excluded.append(path)
                del changed[path]
    results = []
    left_out: dict[str, set[int]] = {}
    # A changed file that is not the version the release ran (another sha) is read by the
    # checkout's own analysis: its changed line numbers are the checkout's, and production's
    # executable lines of another version would drop new code (a function appended past
    # the end of the deployed file) without a word. It is named whether or not lines remain.
    differing = files.differing(sorted(changed))
    for path in sorted(changed):
        if advance is not None:
            advance(1)
        local = files.local(path)
        if path in differing and local is not None:
            executable, note = set(local.lines), ""
        else:
            executable, note = files.executable(path)
        wanted = {local.statement_of(n) if local else n for n in changed[path]}
        lines = wanted & executable
        at_import = local.import_time(lines) if local else set()
        if at_import:
            left_out[path] = at_import
            lines -= at_import
        if not lines:
            continue
        results.append(FileResult(path, lines, lines & files.covered(path), note))
    hint = ""
    if results and files.known and not any(f.path in files.known for f in results):
        def some(paths: list[str]) -> str:
            return ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")

        hint = (
            f"none of the {len(results)} changed file(s) measured "
            f"({some([f.path for f in results])}) is known to the collector for "
            f"{release_label(files.release)}, whose agents reported {len(files.known)} "
            f"other(s) ({some(sorted(files.known))}): unless they are all new modules, --source "
            "is not the agents' source root in this checkout (their paths are relative to it)"
        )
    return GateResult(
        files.release,
        "changed lines",
        threshold,
        results,
        left_out,
        differing,
        hint,
        excluded,
        [f.path for f in results if f.path not in files.known],
        exclude_unmatched=unmatched,
        has_coverage=files.has_coverage,
        endpoint=sel.endpoint,
        since_ref=ref,
        changed_files=changed_files,
    )


def gate_paths(
    client: CollectorClient,
    sel: ReleaseSelection,
    sources: list[Path],
    specs: list[PathSpec],
    threshold: float,
    advance: Optional[Callable[[int], None]] = None,
    exclude: Optional[Exclusion] = None,
) -> GateResult:
    """Coverage of named files, line ranges and functions.

    Every spec must select at least one executable line: a line range past the end of the
    file or a function whose body is only a docstring would otherwise measure nothing and
    pass the gate.

    A file the collector knows nothing of for the release is an error too: like an unknown
    endpoint, it is far more often a path relative to another root than the agents' than a
    file that no sampled request ever ran, and 0 % of it would fail the gate for a reason
    that is not coverage.

    So is a named file that matches ``exclude``: measuring it would ignore the exclusion,
    and leaving it out could leave nothing to measure and pass the gate.
    """
    if exclude:
        for spec in specs:
            try:
                found = resolve_local(spec.path, sources)
            except SourceError:
                found = None
            if exclude(spec.path, found):
                raise GateError(
                    f"{spec} names a file that --exclude leaves out: {', '.join(exclude.globs)}"
                )
    files = _Files(client, sel, sources)
    unmatched: list[str] = []
    if exclude:
        unmatched = exclude.unmatched(
            [*(spec.path for spec in specs), *sorted(files.known),
             *(path for source in sources for path in tracked_files(source))],
            sources,
        )
    merged: dict[str, FileResult] = {}
    for spec in specs:
        if advance is not None:
            advance(1)
        if spec.path not in files.known:
            raise GateError(files.unknown(spec.path))
        executable, note = files.executable(spec.path)
        if not executable and note == "no denominators and no local file":
            raise GateError(
                f"{spec.path}: the collector has no static data for it (the agents could not "
                "analyze it) and it is not under --source: its executable lines are unknown"
            )
        if spec.function:
            lines = set()
            for start, end in _function_spans(files.functions(spec.path), spec):
                lines |= files.body(spec.path, executable, start, end)
        elif spec.start is not None:
            end = spec.end if spec.end is not None else spec.start
            lines = {n for n in executable if spec.start <= n <= end}
        else:
            lines = set(executable)
        if not lines:
            raise GateError(f"{spec} selects no executable line: nothing to measure")
        entry = merged.setdefault(spec.path, FileResult(spec.path, note=note))
        entry.lines |= lines
        entry.covered |= lines & files.covered(spec.path)
    results = [merged[p] for p in sorted(merged)]
    return GateResult(files.release, "selected lines", threshold, results,
                      differing=files.differing(list(merged)), exclude_unmatched=unmatched,
                      has_coverage=files.has_coverage, endpoint=sel.endpoint)


def _function_spans(
    functions: list[tuple[str, int, int]], spec: PathSpec
) -> list[tuple[int, int]]:
    """The line ranges of the function a ``::name`` spec names.

    ``name`` is a qualified name (``Class.method``) or its last parts (``method``). A name
    that matches one function exactly wins; a suffix shared by several functions is
    ambiguous and an error listing them. Every definition of the chosen name counts (a
    property's getter and setter, a function defined on two branches of an ``if``).
    """
    wanted = spec.function or ""
    names = {name for name, _, _ in functions
             if name == wanted or name.endswith("." + wanted)}
    if not names:
        raise GateError(f"{spec.path}: no function named {wanted!r}")
    if wanted in names:
        names = {wanted}
    if len(names) > 1:
        candidates = ", ".join(
            f"{name} (line {start})" for name, start, _ in functions if name in names
        )
        raise GateError(
            f"{spec} is ambiguous: it matches {candidates}; give the qualified name, "
            f"e.g. {spec.path}::{sorted(names)[0]}"
        )
    return [(start, end) for name, start, end in functions if name in names]
