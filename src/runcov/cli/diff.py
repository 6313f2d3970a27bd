"""``runcov diff``: newly covered and no longer covered lines between two releases."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any, Optional

from runcov.cli import _common
from runcov.reports.client import CollectorClient, CollectorRequestError, ReleaseSelection
from runcov.reports.diff import (
    build_diff,
    canary_pair,
    missing_releases,
    no_coverage_message,
    render_diff,
)

_ROLES = ["baseline", "canary", "shadow", "game-day"]


def add_parser(subparsers: Any) -> None:
    """Register ``diff``."""
    p = subparsers.add_parser(
        "diff", help="compare the coverage of two releases (A vs B)",
        description="What release B covers that A does not (newly covered) and what A covers "
                    "that B does not (no longer covered), per file; endpoints seen on one side "
                    "only. --canary VERSION compares that version's canary (B) with the "
                    "baseline (A).",
    )
    _common.add_selection_options(p, versions=False)
    _common.add_collector_options(p)
    _common.add_format_option(p)
    p.add_argument("--a-version", help="version of release A")
    p.add_argument("--a-role", choices=_ROLES, help="role of release A")
    p.add_argument("--b-version", help="version of release B")
    p.add_argument("--b-role", choices=_ROLES, help="role of release B")
    p.add_argument("--canary", metavar="VERSION",
                   help="shortcut: B = canary of VERSION, A = baseline (of VERSION if present)")
    p.add_argument("--summary", action="store_true", help="counts only, no line lists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch and print the diff."""
    base = _common.selection(args)
    client = _common.client(args)
    if args.canary:
        if args.b_version or args.b_role:
            raise _common.UsageError("--canary cannot be combined with --b-version/--b-role")
        a, b = canary_pair(client, base, args.canary)
        if args.a_version or args.a_role:
            a = replace(a, version=args.a_version or a.version, role=args.a_role or a.role)
    else:
        if not (args.a_version or args.a_role) or not (args.b_version or args.b_role):
            raise _common.UsageError(
                "give release A (--a-version/--a-role) and release B (--b-version/--b-role), "
                "or --canary VERSION"
            )
        a = replace(base, version=args.a_version, role=args.a_role)
        b = replace(base, version=args.b_version, role=args.b_role)
    try:
        _common.check_endpoint(client, a, b)
        data = build_diff(client, a, b, _common.window(args))
    except CollectorRequestError as exc:
        missing = missing_releases(client, a, b) if exc.status == 404 else []
        if not missing:
            raise
        if len(missing) == 1:
            message = f"release {missing[0][0]} not found: {missing[0][1]}"
        else:
            message = "releases A and B not found: " + "; ".join(f"{s}: {e}" for s, e in missing)
        if missing[-1][0] == "B":
            message += _seen_elsewhere(client, args.service, args.canary, b)
        raise _common.UsageError(message) from exc
    nothing = no_coverage_message(data)
    if nothing:
        # Neither side executed anything (in the window): an empty diff would read as "the
        # releases cover the same code", so it is a data error, as an export of nothing is.
        raise _common.UsageError(nothing)
    if args.format == "json":
        _common.emit_json(data)
    else:
        sys.stdout.write(render_diff(data, show_lines=not args.summary))
    return _common.EXIT_OK


def _seen_elsewhere(
    client: CollectorClient, service: str, canary: Optional[str], b: ReleaseSelection
) -> str:
    """`` (the canary of 1.1 was seen in environment prod)`` when B, that canary, is missing."""
    if not canary:
        return ""
    try:
        releases = client.releases(service)["releases"]
    except CollectorRequestError:  # an unknown service: the message says so already
        return ""
    envs = [
        r.get("environment") or "(none)" for r in releases
        if r.get("role") == "canary" and r.get("version") == canary
        and (r.get("environment") or "") != (b.environment or "")
    ]
    if not envs:
        return ""
    return f" (the canary of {canary} was seen in environment {', '.join(dict.fromkeys(envs))})"
