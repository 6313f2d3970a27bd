"""``runcov report``: releases, endpoints and files of a service as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runcov.cli import _common
from runcov.reports.local import Exclusion
from runcov.reports.report import SORT_KEYS, build_report, release_label, render_report


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
    if not args.service:
        _refuse_without_service(args)
    sel = _common.selection(args, require_service=False)
    exclude = Exclusion(args.exclude)
    sources = _common.source_dirs(args.source)
    client = _common.client(args)
    if sel.service:
        _common.check_endpoint(client, sel)
    bar = _common.download_progress(args, client)
    data = build_report(client, sel, args.path_prefix, args.sort, args.skip_covered, exclude,
                        sources, _common.window(args))
    bar.finish()
    for glob in data.get("exclude_unmatched") or []:
        print(f"runcov: warning: --exclude {glob!r} matches none of the files of "
              f"{release_label(data['release'])}", file=sys.stderr)
    if args.format == "json":
        _common.emit_json(data)
    else:
        sys.stdout.write(render_report(data))
    return _common.EXIT_OK


def _refuse_without_service(args: argparse.Namespace) -> None:
    """Options that only make sense for one service are an error without ``--service``.

    Without ``--service`` the report lists the services: ``--version 1.1`` or a window would
    otherwise be ignored, and the list read as the answer to the question asked.
    """
    given = [
        flag for flag, value in (
            ("--version", args.release_version), ("--environment", args.environment),
            ("--role", args.role), ("--endpoint", args.endpoint), ("--since", args.since),
            ("--until", args.until), ("--path-prefix", args.path_prefix),
            ("--exclude", args.exclude or None), ("--skip-covered", args.skip_covered or None),
            ("--sort", None if args.sort == "path" else args.sort),
        ) if value is not None
    ]
    if given:
        raise _common.UsageError(
            f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --service: without it, "
            "runcov report lists the services (give --service NAME)"
        )
