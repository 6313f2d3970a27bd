"""Annotated source for the file page: safe reading under ``source_dir`` and per-line classes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

MAX_SOURCE_BYTES = 5 * 1024 * 1024
PYTHON_SUFFIXES = (".py", ".pyw")
"""The files the dashboard shows: Python sources, what an agent measures. Which path a
coverage span names is up to whoever holds the ingest token, so without this the dashboard
would show any file of the checkout to its readers: ``.git/config``, ``.env``, keys."""


@dataclass
class SourceLine:
    """One line of the annotated listing."""

    number: int
    text: str
    css: str = ""  # "covered" | "missed" | "partial" | "" (not executable)
    hits: int = 0
    trace_id: str = ""
    note: str = ""  # e.g. "line 14 didn't jump to 20"
    link: str | None = None  # the first trace in the tracing UI


@dataclass
class Annotation:
    """Per-line status of one file, computed from the collector's detail JSON."""

    covered: dict[int, tuple[int, str]] = field(default_factory=dict)  # line -> (hits, trace)
    executable: set[int] = field(default_factory=set)
    missing_exits: dict[int, list[int]] = field(default_factory=dict)  # partial lines

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> Annotation:
        """Covered/missed/partial lines as coverage.py defines them."""
        ann = cls()
        for entry in detail.get("lines", []):
            line, hits = int(entry[0]), int(entry[1])
            trace = str(entry[2]) if len(entry) > 2 and entry[2] else ""
            ann.covered[line] = (hits, trace)
        # With denominators, only statements get a class (coverage.py runs a module's
        # docstring line but does not count it); without them, every executed line does.
        executable = {int(n) for n in detail.get("executable_lines", [])}
        if executable:
            ann.covered = {n: v for n, v in ann.covered.items() if n in executable}
        ann.executable = executable | set(ann.covered)
        if "arcs_covered" in detail and detail["arcs_covered"] is None:
            return ann  # measured by census only: which exits ran is unknown, none is missing
        executed = {(int(a[0]), int(a[1])) for a in detail.get("arcs", [])}
        exits: dict[int, list[int]] = {}
        for a, b in detail.get("possible_arcs", []):
            if int(a) > 0:
                exits.setdefault(int(a), []).append(int(b))
        for line, targets in exits.items():
            if len(targets) < 2 or line not in ann.covered:
                continue
            missing = sorted(t for t in targets if (line, t) not in executed)
            if missing:
                ann.missing_exits[line] = missing
        return ann

    def css(self, line: int) -> str:
        """The CSS class of ``line``."""
        if line in self.missing_exits:
            return "partial"
        if line in self.covered:
            return "covered"
        if line in self.executable:
            return "missed"
        return ""

    def note(self, line: int) -> str:
        """coverage.py-style explanation of a partial line."""
        missing = self.missing_exits.get(line)
        if not missing:
            return ""
        targets = ", ".join("exit" if t < 0 else str(t) for t in missing)
        return f"line {line} didn't jump to {targets}"


def read_source(source_dir: str | None, path: str) -> tuple[str | None, str]:
    """Read ``path`` under ``source_dir``: ``(text, sha)``, or ``(None, reason)`` when refused.

    The path is resolved (following symlinks) and must stay inside the resolved source
    directory, so ``..``, absolute paths and symlinks out of the tree are all refused. Only
    Python sources are read (``PYTHON_SUFFIXES``), and nothing under a name starting with
    ``.`` (``.git/``, ``.env``, ``.venv/``): the path comes from an ingest client, and the
    checkout holds more than the code an agent measures. The file the path resolves to must
    pass the same rules (a ``shop/views.py`` symlink to ``.env`` is refused too).
    """
    if not source_dir:
        return None, "no source directory is configured"
    if not path or "\x00" in path or "\\" in path:
        return None, "invalid path"
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts:
        return None, "path is outside the source directory"
    refused = _not_shown(rel)
    if refused:
        return None, refused
    root = Path(source_dir).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError):
        return None, "invalid path"
    if not target.is_relative_to(root) or target == root:
        return None, "path is outside the source directory"
    refused = _not_shown(PurePosixPath(target.relative_to(root).as_posix()))
    if refused:
        return None, refused
    if not target.is_file():
        return None, "file not found in the source directory"
    try:
        if target.stat().st_size > MAX_SOURCE_BYTES:
            return None, "file too large to show"
        data = target.read_bytes()
    except OSError as exc:  # unreadable: say so on the page (it is no store failure)
        return None, f"cannot read the file: {exc.strerror or exc}"
    return data.decode("utf-8", errors="replace"), hashlib.sha256(data).hexdigest()[:16]


def _not_shown(rel: PurePosixPath) -> str | None:
    """Why the dashboard does not show the file at ``rel`` (relative), or None when it may."""
    if any(part.startswith(".") for part in rel.parts):
        return "a path segment starts with '.' (hidden files and directories are not shown)"
    if rel.suffix.lower() not in PYTHON_SUFFIXES:
        return "not a Python source file (only .py and .pyw files are shown)"
    return None


_PYTHON_NEWLINE = re.compile(r"\r\n|\r|\n")


def source_lines(text: str) -> list[str]:
    """``text`` split into lines as Python numbers them: at ``\n``, ``\r\n`` and ``\r`` only.

    ``str.splitlines`` also breaks at form feeds, vertical tabs, ``\x1c``-``\x1e``, ``\x85``,
    U+2028 and U+2029, which Python keeps inside a line; each one would shift every later line
    against the line numbers coverage is reported in.
    """
    lines = _PYTHON_NEWLINE.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def annotate(
    text: str, ann: Annotation, link: Callable[[str], str | None] = lambda _: None
) -> list[SourceLine]:
    """Source lines with their classes, hit counts, first trace ids and trace links."""
    out = []
    for number, line in enumerate(source_lines(text), start=1):
        hits, trace = ann.covered.get(number, (0, ""))
        out.append(SourceLine(number, line, ann.css(number), hits, trace, ann.note(number),
                              link(trace) if trace else None))
    return out
