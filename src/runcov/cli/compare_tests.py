"""``runcov compare-tests``: production coverage against a test suite's coverage.py data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runcov.cli import _common
from runcov.reports.compare import compare, comparison_json, read_test_data, render_comparison
from runcov.reports.local import Exclusion
from runcov.reports.report import release_label


def add_parser(subparsers: Any) -> None:
    """Register ``compare-tests``."""
    p = subparsers.add_parser(
        "compare-tests",
        help="production coverage vs a test suite's coverage data",
        description="Lines and branches run in production but never by the tests (risk), "
        "and run by the tests but never in production (dead-code candidates, "
        "without the lines that only run at import time), per file and per "
        "function.",
    )
    _common.add_selection_options(p)
    _common.add_collector_options(p)
    _common.add_format_option(p)
    p.add_argument(
        "--tests",
        metavar="DATA_FILE",
        default=".coverage",
        help="the test suite's coverage.py data file (default: .coverage)",
    )
    _common.add_source_options(p)
    p.add_argument("--path-prefix", help="only files under this path prefix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch production detail, read the test data, print the comparison."""
    sel = _common.selection(args)
    sources = _common.source_dirs(args.source)
    tests = read_test_data(Path(args.tests), sources)
    if args.path_prefix:
        tests.files = {k: v for k, v in tests.files.items() if k.startswith(args.path_prefix)}
    client = _common.client(args)
    _common.check_endpoint(client, sel)
    download = _common.download_progress(args, client)
    detail = client.coverage(sel, detail=True, path_prefix=args.path_prefix)
    download.finish()
    paths = sorted({f["path"] for f in detail.get("files", [])} | set(tests.files))
    exclude = Exclusion(args.exclude)
    for glob in exclude.unmatched(paths, sources):
        print(f"runcov: warning: --exclude {glob!r} matches none of the files of "
              f"{release_label(detail['release'])} or of {args.tests}", file=sys.stderr)
    bar = _common.progress(args, "comparing", total=len(paths), unit=" files")
    files = compare(detail, tests, sources, exclude, bar.advance)
    bar.finish()
    doc = comparison_json(files, detail["release"], tests, args.tests)
    if args.format == "json":
        _common.emit_json(doc)
    else:
        sys.stdout.write(render_comparison(doc))
    return _common.EXIT_OK
