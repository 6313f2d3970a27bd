"""``runcov report``: releases, endpoints and files of a service as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runcov.cli import _common
from runcov.reports.local import Exclusion
from runcov.reports.report import SORT_KEYS, build_report, render_report


def add_parser(subparsers: Any) -> None:
    """Register ``report``."""
    p = subparsers.add_parser(
        "report", help="coverage per release, endpoint and file",
        description="Without --service: the services that reported coverage. With --service: "
                    "its releases, then the endpoints and files of the selected release.",
    )
    _common.add_selection_options(p)
    _common.add_collector_options(p)
    _common.add_format_option(p)
    p.add_argument("--path-prefix", help="only files under this path prefix")
    p.add_argument("--sort", choices=SORT_KEYS, default="path",
                   help="file order: path, cover (lowest first), missed (most first), branch, "
                        "requests (default: path)")
    p.add_argument("--skip-covered", action="store_true", help="hide fully covered files")
    # --source only locates the local files that absolute --exclude globs match.
    _common.add_source_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch and print the report."""
    sel = _common.selection(args, require_service=False)
    exclude = Exclusion(args.exclude)
    sources = _common.source_dirs(args.source)
    client = _common.client(args)
    if sel.service:
        _common.check_endpoint(client, sel)
    bar = _common.download_progress(args, client)
    data = build_report(client, sel, args.path_prefix, args.sort, args.skip_covered, exclude,
                        sources)
    bar.finish()
    if args.format == "json":
        _common.emit_json(data)
    else:
        sys.stdout.write(render_report(data))
    return _common.EXIT_OK
