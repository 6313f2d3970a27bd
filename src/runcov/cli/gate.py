"""``runcov gate``: fail a pipeline when production coverage of changed or named code is low."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from runcov.cli import _common
from runcov.reports.gate import (
    GateError,
    GateResult,
    PathSpec,
    gate_changed,
    gate_paths,
    render_gate,
)
from runcov.reports.local import Exclusion, differ_warning
from runcov.reports.report import release_label


def add_parser(subparsers: Any) -> None:
    """Register ``gate``."""
    p = subparsers.add_parser(
        "gate",
        help="exit non-zero when production coverage is under a threshold",
        description="Measure the production coverage of the executable lines changed since a "
        "git ref (--changed-since) or of named paths (--paths) in the selected "
        "release. Exit codes: 0 pass, 1 gate failed, 2 usage or configuration "
        "error, 3 collector unreachable or failing, 4 internal error.",
    )
    _common.add_selection_options(p)
    _common.add_collector_options(p)
    _common.add_format_option(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--changed-since",
        metavar="GIT_REF",
        help="measure the lines changed since this git ref (git diff -U0 REF), "
        "without those that only run at import time (imports, def/class "
        "lines, decorators, module-level statements)",
    )
    what.add_argument(
        "--paths",
        nargs="+",
        metavar="SPEC",
        help="measure file.py, file.py:10-20 or pkg/mod.py::function",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=80.0,
        metavar="PCT",
        help="minimum covered percentage (default: 80)",
    )
    _common.add_source_options(
        p, exclude_what="changed files", exclude_note="; --paths may not name such a file"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the gate and print the verdict."""
    if not 0.0 <= args.threshold <= 100.0:
        raise _common.UsageError("--threshold must be between 0 and 100")
    sel = _common.selection(args)
    sources = _common.source_dirs(args.source)
    exclude = Exclusion(args.exclude)
    client = _common.client(args)
    _common.check_endpoint(client, sel)
    try:
        if args.changed_since:
            bar = _common.progress(args, "measuring changed files", unit=" files")
            result = gate_changed(
                client,
                sel,
                Path(sources[0]),
                args.changed_since,
                args.threshold,
                bar.advance,
                exclude,
            )
        else:
            specs = [PathSpec.parse(s) for s in args.paths]
            bar = _common.progress(args, "measuring paths", total=len(specs))
            result = gate_paths(client, sel, sources, specs, args.threshold, bar.advance, exclude)
    except GateError as exc:
        raise _common.UsageError(str(exc)) from exc
    bar.finish()
    result.window = _common.window(args) or None
    for glob in result.exclude_unmatched:
        print(f"runcov: warning: --exclude {glob!r} matches no file (neither a changed or named "
              f"file, nor one of {release_label(result.release)}, nor one git tracks under "
              "--source)", file=sys.stderr)
    if args.changed_since and args.release_version is None and result.differing:
        raise _common.UsageError(_not_the_checkout(result, args.role))
    if result.differing:
        ran = release_label(result.release)
        print(f"runcov: warning: {differ_warning(result.differing, ran)}", file=sys.stderr)
    if result.unknown_hint:
        print(f"runcov: warning: {result.unknown_hint}", file=sys.stderr)
    if args.format == "json":
        _common.emit_json(result.as_dict())
    else:
        sys.stdout.write(render_gate(result))
    if not result.passed and args.format == "json":
        print(f"runcov: gate failed: {result.message()}", file=sys.stderr)
    return _common.EXIT_OK if result.passed else _common.EXIT_FAILED


def _not_the_checkout(result: GateResult, role: Optional[str]) -> str:
    """Why ``--changed-since`` refuses a release it picked itself whose files are not the
    checkout's.

    Without ``--version`` the release is the most recently seen (of the role, baseline by
    default): often the release the change is *since*, which ran the old code. Its coverage,
    read by the checkout's line numbers, would pass or fail the gate for the wrong code, and
    a warning next to a PASS is easily missed in a pipeline: an explicit release is required.
    """
    ran = release_label(result.release)
    how = (f"the most recently seen {role} release" if role
           else "the most recently seen release, baseline when there is one")
    return (
        f"--changed-since without --version gated {ran} ({how}), but "
        f"{differ_warning(result.differing, ran)}; this checkout is probably another "
        "release: name the one to gate with --version (and --role, e.g. --role canary)"
    )
