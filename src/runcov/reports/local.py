"""The local checkout: mapping collector paths onto it, file hashes, coverage.py analysis."""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence

from runcov.redaction import Redactor


class SourceError(Exception):
    """A collector path cannot be used locally (absolute, escapes the root, unreadable)."""


def safe_relative(path: str) -> PurePosixPath:
    """Validate a collector path: relative, ``/``-separated, no ``..`` segments."""
    if not path or "\x00" in path or "\\" in path:
        raise SourceError(f"invalid path {path!r}")
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise SourceError(f"path {path!r} is not relative to the source root")
    return rel


def resolve_local(path: str, roots: Sequence[Path]) -> Optional[Path]:
    """The absolute local file for a collector path: the first root that has it, else None."""
    rel = safe_relative(path)
    for root in roots:
        base = root.resolve()
        candidate = (base / rel).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    return None


def relative_to_roots(filename: str, roots: Sequence[Path]) -> Optional[str]:
    """The collector-style path of a local absolute filename, or None if outside every root."""
    target = Path(filename).resolve()
    for root in roots:
        base = root.resolve()
        if target.is_relative_to(base):
            return target.relative_to(base).as_posix()
    return None


class Exclusion:
    """``--exclude`` globs, matched against collector paths as the agent's ``exclude`` option is.

    The matching is the agent's own (:class:`runcov.redaction.Redactor`), so that a glob means
    the same in the service's configuration and on the command line: it is matched against
    the path relative to the source root, where ``*`` crosses ``/`` (``tests/*`` is everything
    under ``tests``); a glob without ``/`` also matches the file name at any depth
    (``test_*.py``, ``conftest.py``); an absolute glob matches the local file's absolute path.
    Matching is case-sensitive on every platform.
    """

    def __init__(self, globs: Iterable[str] = ()) -> None:
        self.globs = [g for g in globs if g]
        self._agent = Redactor((), exclude=self.globs) if self.globs else None

    def __bool__(self) -> bool:
        return bool(self.globs)

    def __call__(self, path: str, local: Optional[Path] = None) -> bool:
        """Whether ``path`` (a collector path; ``local``: its local file, if any) is excluded."""
        if self._agent is None:
            return False
        absolute = str(local) if local is not None else ""
        return self._agent._excluded(path, absolute, absolute)

    def excludes(self, path: str, roots: Sequence[Path]) -> bool:
        """Whether collector path ``path`` is excluded, its local file looked up under ``roots``
        (for absolute globs; a path that cannot be local has none)."""
        if self._agent is None:
            return False
        try:
            local = resolve_local(path, roots)
        except SourceError:
            local = None
        return self(path, local)

    def unmatched(self, paths: Iterable[str], roots: Sequence[Path]) -> list[str]:
        """The globs that match none of ``paths`` (collector paths, local files under
        ``roots``), in the order given: most often a typo, which leaves the file in."""
        paths = list(dict.fromkeys(paths))
        return [glob for glob in dict.fromkeys(self.globs)
                if not any(Exclusion([glob]).excludes(p, roots) for p in paths)]


def file_sha(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of the file's bytes (the wire format's ``sha``)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def differs(local: Path, sha: Optional[str]) -> bool:
    """Whether the local file is not the one production ran (``sha``: the collector's)."""
    return bool(sha) and file_sha(local) != sha


def differ_warning(paths: Sequence[str], ran: str = "production") -> str:
    """The warning for local files that differ from those ``ran`` (a release) ran."""
    return (
        f"{len(paths)} local file(s) differ from the version {ran} ran (line numbers may not "
        "match): " + ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else "")
    )


@dataclass
class LocalStatic:
    """coverage.py's view of one local file: statements, possible arcs, functions."""

    lines: set[int] = field(default_factory=set)
    arcs: set[tuple[int, int]] = field(default_factory=set)
    functions: list[tuple[str, int, int]] = field(default_factory=list)
    first_line: dict[int, int] = field(default_factory=dict)
    bodies: dict[tuple[int, int], int] = field(default_factory=dict)  # (start, end) -> body

    def statement_of(self, line: int) -> int:
        """The first line of the statement that ``line`` belongs to."""
        return self.first_line.get(line, line)

    def import_time(self, lines: Iterable[int]) -> set[int]:
        """Those of ``lines`` that only run when the module is imported: see :func:`import_time`."""
        return import_time(lines, self.bodies)


def analyze_local(path: Path) -> LocalStatic:
    """Statements and possible arcs by coverage.py's own parser; function ranges by ``ast``."""
    from coverage.config import DEFAULT_EXCLUDE
    from coverage.misc import join_regex
    from coverage.python import PythonParser

    text = path.read_text(encoding="utf-8", errors="replace")
    parser = PythonParser(text=text, filename=str(path), exclude=join_regex(DEFAULT_EXCLUDE))
    try:
        parser.parse_source()
    except Exception as exc:  # coverage raises NotPython and others for unparsable files
        raise SourceError(f"cannot analyze {path}: {exc}") from exc
    static = LocalStatic(lines=set(parser.statements), arcs=set(parser.arcs()))
    nlines = text.count("\n") + 1
    for line in range(1, nlines + 1):
        first = parser.first_line(line)
        if first != line:
            static.first_line[line] = first
    static.functions = function_ranges(text)
    static.bodies = function_bodies(text)
    return static


def function_body(
    executable: set[int], start: int, end: int, body_start: Optional[int] = None
) -> set[int]:
    """Executable lines of a function's body: its range without the ``def`` statement itself.

    The ``def`` statement (with its decorators and default values) runs when the module is
    imported, so counting it would make every imported function look exercised. With
    ``body_start`` (from the source, see :func:`function_bodies`) the body is exact; without,
    it is the range's executable lines after the first, which still holds a decorated
    function's further decorators and ``def`` line.
    """
    if body_start is not None:
        return {n for n in executable if body_start <= n <= end}
    inside = sorted(n for n in executable if start <= n <= end)
    return set(inside[1:])


def import_time(lines: Iterable[int], bodies: dict[tuple[int, int], int]) -> set[int]:
    """Those of ``lines`` outside every function body (``bodies`` as :func:`function_bodies`).

    They run when the module is imported and never in a request: imports, module- and
    class-level statements, and the ``def``/``class`` statements of module- and class-level
    functions and classes with their decorators and signatures. A nested function's ``def``
    is inside its enclosing function's body, so it runs when that function runs.
    """
    spans = [(first, end) for (_, end), first in bodies.items()]
    return {n for n in lines if not any(first <= n <= end for first, end in spans)}


def _function_nodes(text: str) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method in ``text`` with its qualified name (none if unparsable)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child))
                visit(child, prefix + child.name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """First line (the first decorator's, as ``co_firstlineno``) and last line of a function."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start, node.end_lineno or node.lineno


def function_ranges(text: str) -> list[tuple[str, int, int]]:
    """Qualified name, first and last line of every function and method in ``text``."""
    out = [(name, *_span(node)) for name, node in _function_nodes(text)]
    return sorted(out, key=lambda f: (f[1], f[0]))


def function_bodies(text: str) -> dict[tuple[int, int], int]:
    """The first line of each function's body, keyed by its first and last line.

    The body starts at its first statement (a docstring counts), so the decorators, the
    ``def`` line and a signature spread over several lines are outside it; a one-line
    ``def f(): return 1`` is all body, since its one line runs in each call.
    """
    return {_span(node): node.body[0].lineno for _, node in _function_nodes(text)}
