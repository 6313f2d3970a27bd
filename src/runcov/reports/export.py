"""Export production coverage as a coverage.py data file, LCOV, Cobertura XML or JSON."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from runcov.reports.local import SourceError, differ_warning, differs, resolve_local

FORMATS = ("coverage", "lcov", "cobertura", "json")


@dataclass
class ExportResult:
    """What an export wrote and what it had to leave out."""

    files: int = 0
    missing: list[str] = field(default_factory=list)  # no such file in the local checkout
    invalid: list[str] = field(default_factory=list)  # unusable collector path
    changed: list[str] = field(default_factory=list)  # local file differs from production's
    percent: Optional[float] = None  # coverage.py's total, for lcov/cobertura

    def warnings(self) -> list[str]:
        """Human-readable warnings for stderr."""
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} file(s) not found under the source directory, left out: "
                + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
            )
        if self.invalid:
            out.append("ignored invalid path(s): " + ", ".join(self.invalid[:10]))
        if self.changed:
            out.append(differ_warning(self.changed))
        return out


class NothingToExport(Exception):
    """No file could be written: every file is missing locally, or none has coverage.

    Raised before the output is touched, so that an export of nothing leaves no empty file
    behind for a pipeline to upload as a coverage report. ``result`` says what was left out.
    """

    def __init__(self, result: ExportResult, no_coverage: bool = False) -> None:
        super().__init__("nothing to export")
        self.result = result
        self.no_coverage = no_coverage  # no file executed a single line


def write_coverage_data(
    detail: dict[str, Any],
    data_file: Path,
    sources: Sequence[Path],
    advance: Optional[Callable[[int], None]] = None,
    contexts: Optional[dict[str, dict[str, Any]]] = None,
) -> ExportResult:
    """Write the collector's detail JSON as a coverage.py data file for the local checkout.

    Files with arcs are written as branch data (``add_arcs``); coverage.py derives executed
    lines from arcs, so census-mode lines that no arc reaches are added as entry arcs
    ``(-line, line)``, which coverage.py's reports count as executed lines and not as
    branches; such a line that is a branch has none of its exits (unknown, read as not taken:
    docs/cli.md). Files known only by their denominators are touched, so they report 0%.

    With ``contexts`` (context name -> that context's detail JSON, e.g. one per endpoint),
    the hits are recorded per coverage.py context instead, so that ``coverage html
    --show-contexts`` tells which endpoints ran each line.
    """
    from coverage import CoverageData

    result = ExportResult()
    files = detail.get("files", [])
    branch = any(f.get("arcs") for f in files) or any(
        f.get("arcs") for d in (contexts or {}).values() for f in d.get("files", [])
    )
    local_of: dict[str, str] = {}
    for f in files:
        if advance is not None:
            advance(1)
        path = f["path"]
        try:
            local = resolve_local(path, sources)
        except SourceError:
            result.invalid.append(path)
            continue
        if local is None:
            result.missing.append(path)
            continue
        if differs(local, f.get("sha")):
            result.changed.append(path)
        local_of[path] = str(local)
        result.files += 1
    if result.files == 0:
        raise NothingToExport(result)

    data_file = Path(data_file)
    data = CoverageData(basename=str(data_file))
    data.erase()
    hit: set[str] = set()
    for context, ctx_detail in ([("", detail)] if contexts is None else sorted(contexts.items())):
        if contexts is not None:
            data.set_context(context)
        lines, arcs = _hits(ctx_detail, local_of, branch)
        if branch:
            data.add_arcs(arcs)
        else:
            data.add_lines(lines)
        hit.update(lines if not branch else arcs)
    touched = sorted(set(local_of.values()) - hit)
    if touched:
        data.touch_files(touched)
    data.write()
    data.close()
    return result


def _hits(
    detail: dict[str, Any], local_of: dict[str, str], branch: bool
) -> tuple[dict[str, list[int]], dict[str, list[tuple[int, int]]]]:
    """Lines (or arcs) per local filename of one detail document."""
    lines_by_file: dict[str, list[int]] = {}
    arcs_by_file: dict[str, list[tuple[int, int]]] = {}
    for f in detail.get("files", []):
        key = local_of.get(f["path"])
        if key is None:
            continue
        lines = sorted({int(entry[0]) for entry in f.get("lines", [])})
        if branch:
            arcs = {(int(a[0]), int(a[1])) for a in f.get("arcs", [])}
            reached = {n for arc in arcs for n in arc if n > 0}
            arcs.update((-n, n) for n in lines if n not in reached)
            if arcs:
                arcs_by_file[key] = sorted(arcs)
        elif lines:
            lines_by_file[key] = lines
    return lines_by_file, arcs_by_file


def write_with_reporter(
    detail: dict[str, Any],
    fmt: str,
    outfile: Path,
    sources: Sequence[Path],
    advance: Optional[Callable[[int], None]] = None,
    contexts: Optional[dict[str, dict[str, Any]]] = None,
) -> ExportResult:
    """LCOV or Cobertura through coverage.py's own reporters, from a temporary data file.

    The LCOV is then made readable by lcov 1.x as well as 2.x: see :func:`portable_lcov`.
    """
    from coverage import Coverage

    with tempfile.TemporaryDirectory(prefix="runcov-export-") as tmp:
        data_file = Path(tmp) / ".coverage"
        result = write_coverage_data(detail, data_file, sources, advance, contexts)
        cov = Coverage(
            data_file=str(data_file),
            source=[str(Path(s).resolve()) for s in sources],
            messages=False,
        )
        cov.load()
        outfile = Path(outfile)
        if fmt == "lcov":
            written = Path(tmp) / "coverage.lcov"
            result.percent = cov.lcov_report(outfile=str(written), ignore_errors=True)
            with (
                open(written, encoding="utf-8") as src,
                open(outfile, "w", encoding="utf-8") as dst,
            ):
                dst.writelines(portable_lcov(src))
        elif fmt == "cobertura":
            result.percent = cov.xml_report(outfile=str(outfile), ignore_errors=True)
        else:
            raise ValueError(f"no coverage.py reporter for {fmt!r}")
        return result


_BRDA = re.compile(r"^BRDA:(\d+),(e?\d+),([^\n]*),(\d+|-)$")
_FN = re.compile(r"^FN:(\d+),\d+,([^\n]*)$")


def portable_lcov(lines: Iterable[str]) -> Iterator[str]:
    """coverage.py's LCOV lines, rewritten into the records lcov 1.x and 2.x both read.

    coverage.py names each branch by its description (``BRDA:48,0,jump to line 49,1``) and
    gives functions their last line (``FN:45,50,get_product``): lcov 2 reads both, but lcov
    1.x reads branch numbers only (it finds "no data" in such a file) and ``FN:<line>,<name>``
    only (it takes ``50`` for the name, and counts every function twice). Branches are
    numbered 0, 1, ... per line and block in the order coverage.py lists them, and functions
    lose their optional last line; every count (``DA``, ``LF``/``LH``, ``BRF``/``BRH``,
    ``FNDA``, ``FNF``/``FNH``) stays coverage.py's.
    """
    numbers: dict[tuple[str, str], int] = {}
    for line in lines:
        branch = _BRDA.match(line.rstrip("\n"))
        if branch is not None:
            lineno, block, _, taken = branch.groups()
            number = numbers.get((lineno, block), 0)
            numbers[(lineno, block)] = number + 1
            yield f"BRDA:{lineno},{block},{number},{taken}\n"
            continue
        function = _FN.match(line.rstrip("\n"))
        if function is not None:
            yield f"FN:{function.group(1)},{function.group(2)}\n"
            continue
        if line.startswith("end_of_record"):
            numbers.clear()
        yield line


def write_json(detail: dict[str, Any], outfile: Path) -> ExportResult:
    """The collector's detail JSON, as it came.

    Written to ``<name>.tmp`` and renamed, so that readers never see half a document; the
    temporary file is removed when writing or renaming fails.
    """
    outfile = Path(outfile)
    tmp = outfile.with_name(outfile.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(detail, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, outfile)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(files=len(detail.get("files", [])))


def export(
    detail: dict[str, Any],
    fmt: str,
    outfile: Path,
    sources: Sequence[Path],
    advance: Optional[Callable[[int], None]] = None,
    contexts: Optional[dict[str, dict[str, Any]]] = None,
) -> ExportResult:
    """Write ``detail`` in ``fmt`` (one of :data:`FORMATS`) to ``outfile``.

    Raises :class:`NothingToExport`, writing nothing, when there is nothing to write: no file,
    no file that executed a line (an export of a release, or a window, without coverage),
    or, except for JSON (the collector's document as it came), no file found locally.
    """
    files = detail.get("files", [])
    if not any(f.get("lines") for f in files):
        raise NothingToExport(ExportResult(), no_coverage=True)
    if fmt == "coverage":
        return write_coverage_data(detail, outfile, sources, advance, contexts)
    if fmt in ("lcov", "cobertura"):
        return write_with_reporter(detail, fmt, outfile, sources, advance, contexts)
    if fmt == "json":
        return write_json(detail, outfile)
    raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
