"""``runcov export``: production coverage as a coverage.py data file, LCOV, Cobertura or JSON."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from runcov.cli import _common
from runcov.reports.client import CollectorClient, ReleaseSelection
from runcov.reports.export import FORMATS, NothingToExport, export
from runcov.reports.local import Exclusion
from runcov.reports.report import release_label, without_excluded
from runcov.reports.window import Window

_DEFAULT_OUTPUT = {
    "coverage": ".coverage", "lcov": "coverage.lcov", "cobertura": "coverage.xml",
    "json": "runcov.json",
}


def add_parser(subparsers: Any) -> None:
    """Register ``export``."""
    p = subparsers.add_parser(
        "export", help="write a coverage.py data file, LCOV, Cobertura XML or JSON",
        description="Write the selected release's production coverage for the local checkout, "
                    "so that `coverage report -m`, `coverage html`, `coverage xml` and "
                    "`coverage lcov` work on it as usual.",
    )
    _common.add_selection_options(p)
    _common.add_collector_options(p)
    p.add_argument("--format", choices=FORMATS, default="coverage",
                   help="output format (default: coverage, a coverage.py data file)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="output file (default: .coverage, coverage.lcov, coverage.xml or "
                        "runcov.json)")
    _common.add_source_options(p)
    p.add_argument("--path-prefix", help="only files under this path prefix")
    p.add_argument("--contexts", choices=["none", "endpoint"], default="none",
                   help="record each endpoint's hits as a coverage.py context, so that "
                        "`coverage html --show-contexts` shows which endpoints ran a line "
                        "(one query per endpoint; default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the detail and write it."""
    sel = _common.selection(args)
    sources = _common.source_dirs(args.source)
    output = Path(args.output or _DEFAULT_OUTPUT[args.format])
    _check_output(output, _DEFAULT_OUTPUT[args.format])
    client = _common.client(args)
    _common.check_endpoint(client, sel)
    download = _common.download_progress(args, client)
    detail = client.coverage(sel, detail=True, path_prefix=args.path_prefix)
    download.finish()
    exclude = Exclusion(args.exclude)
    label = release_label(detail["release"])
    for glob in exclude.unmatched((f["path"] for f in detail.get("files", [])), sources):
        print(f"runcov: warning: --exclude {glob!r} matches none of the files of {label}",
              file=sys.stderr)
    release_files = len(detail.get("files", []))
    detail, left_out = without_excluded(detail, exclude, sources)
    contexts = None
    if args.contexts == "endpoint" and args.format != "json":
        contexts = {name: without_excluded(doc, exclude, sources)[0]
                    for name, doc in _per_endpoint(args, client, sel).items()}
    files = detail.get("files", [])
    bar = _common.progress(args, "writing", total=len(files), unit=" files")
    try:
        result = export(detail, args.format, output, sources, bar.advance, contexts)
    except NothingToExport as exc:
        raise _common.UsageError(
            _why_nothing(exc, label, release_files, left_out, sources, _common.window(args))
        ) from exc
    except OSError as exc:
        raise _common.UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        bar.finish()
    for warning in result.warnings():
        print(f"runcov: warning: {warning}", file=sys.stderr)
    excluded = f"; {len(left_out)} left out by --exclude" if left_out else ""
    files = f"{result.files} file" + ("" if result.files == 1 else "s")
    print(f"wrote {output} ({args.format}, {files}{excluded})", file=sys.stderr)
    return _common.EXIT_OK


def _why_nothing(
    exc: NothingToExport, label: str, release_files: int, left_out: list[str],
    sources: list[Path], window: Window,
) -> str:
    """The usage error of an export that would write no file (nothing is written).

    A pipeline step that uploads coverage must not pass with an empty report: like a
    ``gate`` given a path of another root, this is exit 2, saying what left everything out.
    """
    where = f" {window.label()}" if window else ""
    if release_files == 0:
        return f"nothing to export: {label} has no files with coverage{where}"
    if left_out and len(left_out) == release_files:
        return (f"nothing to export: --exclude leaves out all {release_files} file(s) of "
                f"{label}")
    if exc.no_coverage:
        return f"nothing to export: no file of {label} has coverage{where}"
    missing = exc.result.missing + exc.result.invalid
    roots = ", ".join(str(s) for s in sources)
    excluded = f"{len(left_out)} left out by --exclude, " if left_out else ""
    return (
        f"nothing to export: of the {release_files} file(s) of {label}, {excluded}"
        f"{len(missing)} not found under --source {roots} ("
        + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        + "): the agents report paths relative to their source root, which --source must "
        "name in this checkout"
    )


def _check_output(output: Path, default_name: str) -> None:
    """Refuse an output path that cannot become a file, before downloading anything.

    A missing directory is refused too, rather than created: it is far more often a typo in
    the path than a directory wanted, and the file would land where nobody looks for it.
    """
    if output.is_dir():
        raise _common.UsageError(f"output {output} is a directory: give a file name, "
                                 f"e.g. -o {output / default_name}")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _common.UsageError(f"cannot write {output}: {parent} is not a directory")
            break
    if not output.parent.is_dir():
        raise _common.UsageError(
            f"cannot write {output}: directory {output.parent} does not exist (create it first)"
        )


def _per_endpoint(
    args: argparse.Namespace, client: CollectorClient, sel: ReleaseSelection
) -> dict[str, dict[str, Any]]:
    """Each endpoint's own detail JSON, keyed by endpoint name."""
    endpoints = [e["endpoint"] for e in client.endpoints(sel)["endpoints"]]
    if sel.endpoint:
        endpoints = [e for e in endpoints if e == sel.endpoint]
    bar = _common.progress(args, "reading endpoints", total=len(endpoints))
    out = {}
    for name in endpoints:
        out[name] = client.coverage(replace(sel, endpoint=name), detail=True,
                                    path_prefix=args.path_prefix)
        bar.advance()
    bar.finish()
    return out
