"""Denominators: executable lines, possible arcs and functions of a file, by coverage.py.

The analysis is coverage.py's own (``PythonParser``: statements and arc possibilities, with
coverage.py's default exclusion rules such as ``# pragma: no cover``), so percentages computed by
the collector agree with what ``coverage report`` would say. Each file is analysed once per
content hash; results are cached. Analysis reads and parses source, so it runs on the
exporter's worker thread, never on a request path.
"""

from __future__ import annotations

import ast
import hashlib
import os
import threading
import time
import tokenize
from io import BytesIO
from typing import Any, Iterable, Optional

from coverage.config import DEFAULT_EXCLUDE
from coverage.parser import PythonParser

from runcov._fork import in_forked_child

__all__ = ["MAX_SOURCE_BYTES", "StaticAnalyzer", "analyze_source", "file_sha", "present"]

#: Files larger than this are not analysed (their coverage is still reported, without totals).
MAX_SOURCE_BYTES = 16 * 1024 * 1024
_CACHE_LIMIT = 8192
#: Seconds during which a file's last answer is reused without looking at the disk again.
RECHECK_SECONDS = 10.0


def file_sha(data: bytes) -> str:
    """The wire format's file hash: first 16 hex digits of the SHA-256 of the bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def _join_regex(regexes: Iterable[str]) -> str:
    items = list(regexes)
    return items[0] if len(items) == 1 else "|".join(f"(?:{r})" for r in items)


def _decode(data: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(BytesIO(data).readline)
    text = data.decode(encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _functions(tree: ast.AST) -> list[dict[str, Any]]:
    """Qualified name, first line (first decorator, as ``co_firstlineno``) and last line."""
    out: list[dict[str, Any]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                end = getattr(child, "end_lineno", None) or child.lineno
                out.append({"name": name, "start": start, "end": end})
                visit(child, name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    out.sort(key=lambda f: (f["start"], f["name"]))
    return out


def analyze_source(text: str, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, Any]:
    """``{"lines", "arcs", "functions", "first_lines", "arc_fixes"}`` for Python source text
    (raises on non-Python). The last two are what :func:`present` needs; they stay in the
    process."""
    parser = PythonParser(text=text, exclude=_join_regex(exclude))
    parser.parse_source()
    excluded = parser.excluded
    arcs = sorted(
        (a, b) for a, b in parser.arcs() if a not in excluded and b not in excluded
    )
    return {
        "lines": sorted(parser.statements),
        "arcs": [[a, b] for a, b in arcs],
        "functions": _functions(ast.parse(text)),
        # A line of a statement that spans several -> the statement's first line.
        "first_lines": {
            line: first for line, first in parser.multiline_map.items() if line != first
        },
        # Set by the arc analysis (parser.arcs() above): measured arc -> the arc coverage.py
        # reports instead, or None for an arc it drops.
        "arc_fixes": dict(getattr(parser, "_with_jump_fixers", None) or {}),
    }


def present(
    lines: Iterable[int], arcs: Iterable[tuple[int, int]], facts: Optional[dict[str, Any]]
) -> tuple[Any, Any]:
    """Measured lines and arcs as coverage.py reports them, in the terms of the statements and
    possible arcs of the file's static facts.

    Python reports the lines it runs; coverage.py reports statements. A statement that spans
    several lines can run on any of them (the second line of a multi-line condition, the line
    of a list literal's first item), and coverage.py counts them as its first line, in lines
    and in arcs alike. And on Python 3.10+ leaving a ``with`` block jumps back to the ``with``
    line before going on: measured ``(last body line, with line)`` and ``(with line, next
    line)``, reported as ``(last body line, next line)``. Its analysis says which lines and
    arcs to rewrite; this applies it. Without such lines or ``with`` statements (or without
    facts) the sets are returned as they are.
    """
    first = facts.get("first_lines") if facts else None
    fixes = facts.get("arc_fixes") if facts else None
    if fixes:
        fixed = set()
        for arc in arcs:
            arc = fixes.get(arc, arc)
            if arc is not None:
                fixed.add(arc)
        arcs = fixed
    if first:
        get = first.get
        lines = {get(line, line) for line in lines}
        arcs = {
            (
                -get(-a, -a) if a < 0 else get(a, a),
                -get(-b, -b) if b < 0 else get(b, b),
            )
            for a, b in arcs
        }
    return lines, arcs


class StaticAnalyzer:
    """Computes and caches the static facts of source files.

    :meth:`analyze` returns ``(sha, facts)`` where ``facts`` is ``{"lines": [...], "arcs":
    [[from, to], ...], "functions": [{"name", "start", "end"}, ...]}``, or None as facts when the
    file is not parseable Python; None altogether when the file cannot be read.
    """

    def __init__(self, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> None:
        self._exclude = list(exclude)
        self._lock = threading.Lock()
        # (path, mtime_ns, size) -> sha: avoids re-reading unchanged files.
        self._stat_cache: dict[tuple[str, int, int], str] = {}
        # path -> (when it was last checked, its result): a file is stat()ed at most every
        # RECHECK_SECONDS, however many requests touch it.
        self._recent: dict[str, tuple[float, Any]] = {}
        # (path, sha) -> facts (None for files that are not Python).
        self._facts: dict[tuple[str, str], Optional[dict[str, Any]]] = {}
        #: Number of analyses actually run (cache misses); for tests and metrics.
        self.analyses = 0
        in_forked_child(self._reset_lock)

    def _reset_lock(self) -> None:
        # A thread that held the lock at fork time does not exist in the child.
        self._lock = threading.Lock()

    def sha(self, abs_path: str) -> Optional[str]:
        """The file's content hash, or None when it cannot be read."""
        result = self.analyze(abs_path)
        return None if result is None else result[0]

    def analyze(self, abs_path: str) -> Optional[tuple[str, Optional[dict[str, Any]]]]:
        """``(sha, facts)`` of the file as it is now on disk (checked again at most every
        :data:`RECHECK_SECONDS`); never raises."""
        now = time.monotonic()
        recent = self._recent.get(abs_path)
        if recent is not None and now - recent[0] < RECHECK_SECONDS:
            return recent[1]
        result = self._analyze(abs_path)
        if len(self._recent) >= _CACHE_LIMIT:
            self._recent.clear()
        self._recent[abs_path] = (now, result)
        return result

    def _analyze(self, abs_path: str) -> Optional[tuple[str, Optional[dict[str, Any]]]]:
        try:
            st = os.stat(abs_path)
        except OSError:
            return None
        stat_key = (abs_path, st.st_mtime_ns, st.st_size)
        sha = self._stat_cache.get(stat_key)
        data: Optional[bytes] = None
        if sha is None:
            if st.st_size > MAX_SOURCE_BYTES:
                return None
            try:
                with open(abs_path, "rb") as fh:
                    data = fh.read(MAX_SOURCE_BYTES + 1)
            except OSError:
                return None
            if len(data) > MAX_SOURCE_BYTES:
                return None
            sha = file_sha(data)
            with self._lock:
                if len(self._stat_cache) >= _CACHE_LIMIT:
                    self._stat_cache.clear()
                self._stat_cache[stat_key] = sha
        key = (abs_path, sha)
        if key in self._facts:
            return sha, self._facts[key]
        if data is None:
            try:
                with open(abs_path, "rb") as fh:
                    data = fh.read(MAX_SOURCE_BYTES + 1)
            except OSError:
                return None
            if file_sha(data) != sha:  # changed between stat and read: take the new content
                sha = file_sha(data)
                key = (abs_path, sha)
        facts: Optional[dict[str, Any]]
        try:
            facts = analyze_source(_decode(data), self._exclude)
        except Exception:
            facts = None
        with self._lock:
            self.analyses += 1
            if len(self._facts) >= _CACHE_LIMIT:
                self._facts.clear()
            self._facts[key] = facts
        return sha, facts
