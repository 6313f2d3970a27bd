"""``runcov agent``: what a release's agents counted, dropped and cost (their metrics)."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import replace
from typing import Any, Optional

from runcov.cli import _common
from runcov.reports.report import release_label
from runcov.reports.table import render_table


def add_parser(subparsers: Any) -> None:
    """Register ``agent``."""
    p = subparsers.add_parser(
        "agent", help="requests seen, sampled and dropped (by reason), sample rates, agent cost",
        description="The running totals the release's agents reported in their metrics: "
                    "requests seen, sampled and dropped (with the reason), the sample rate each "
                    "endpoint has now, and the agent's own CPU time.",
    )
    _common.add_selection_options(p, window=False)
    # Accepted only to be refused with the reason, rather than argparse's "unrecognized
    # arguments" under the usage of ``runcov`` itself.
    p.add_argument("--since", help=argparse.SUPPRESS)
    p.add_argument("--until", help=argparse.SUPPRESS)
    _common.add_collector_options(p)
    _common.add_format_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch and print the agents' view of the selected release."""
    window = [flag for flag, value in (("--since", args.since), ("--until", args.until))
              if value is not None]
    if window:
        raise _common.UsageError(
            f"runcov agent has no time window ({'/'.join(window)} given): it shows the running "
            "totals the agents counted since they started; leave out --since/--until"
        )
    sel = _common.selection(args)
    client = _common.client(args)
    # The whole release, narrowed here: an endpoint may be known from metrics alone (every
    # request of it dropped by the rate cap), which the span-based endpoint check would refuse.
    doc = client.agent(replace(sel, endpoint=None, since=None, until=None))
    if sel.endpoint is not None:
        known = [e["endpoint"] for e in doc.get("endpoints", [])]
        # Agents that sent no metrics (metrics_interval 0) named no endpoint: that is the
        # answer (as without --endpoint), not a typo in the endpoint.
        if sel.endpoint not in known and doc.get("processes"):
            close = difflib.get_close_matches(sel.endpoint, known, n=1)
            raise _common.UsageError(
                f"unknown endpoint {sel.endpoint!r}: the agents of "
                f"{release_label(doc['release'])} never reported it"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known endpoints: {', '.join(known[:10]) or '(none)'}"
            )
        doc["endpoints"] = [e for e in doc["endpoints"] if e["endpoint"] == sel.endpoint]
    if args.format == "json":
        _common.emit_json(doc)
    else:
        sys.stdout.write(render_agent(doc))
    return _common.EXIT_OK


def _reasons(counts: dict[str, int]) -> str:
    """``rate_cap 3, queue_full 1`` (reasons counted at least once, most first)."""
    named = sorted(((n, r) for r, n in counts.items() if n), key=lambda x: (-x[0], x[1]))
    return ", ".join(f"{r} {n}" for n, r in named) or "-"


def _expired(count: int) -> str:
    """Sampled requests measured only until their scope's maximum age (max_scope_seconds)."""
    return f"{count} (still running at max_scope_seconds)" if count else "0"


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.3g}%"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def render_agent(doc: dict[str, Any]) -> str:
    """The terminal form of ``GET /api/v1/agent``."""
    label = release_label(doc["release"])
    if not doc.get("processes"):
        return f"the agents of {label} have sent no metrics\n"
    out = [
        f"Agents of {label}: {doc['processes']} process(es), last report "
        f"{doc.get('last_report') or '-'}\n\n"
    ]
    modes = ", ".join(f"{m} {n}" for m, n in sorted(doc.get("sampled_by_mode", {}).items()) if n)
    rows = [
        ["requests seen", doc["requests_seen"]],
        ["requests sampled", f"{doc['requests_sampled']}" + (f" ({modes})" if modes else "")],
        ["requests dropped", doc["requests_dropped"]],
        ["  by reason", _reasons(doc.get("dropped_by_reason", {}))],
        ["sampled, cut short", _expired(doc.get("requests_expired", 0))],
        ["new lines / arcs", f"{doc.get('lines_new', 0)} / {doc.get('arcs_new', 0)}"],
        ["agent CPU time", _duration(doc.get("overhead_seconds"))],
        ["  per sampled request", _duration(doc.get("overhead_per_sampled_request_seconds"))],
        ["  per request seen", _duration(doc.get("overhead_per_seen_request_seconds"))],
    ]
    out.append(render_table(["Totals", ""], rows, "ll"))
    endpoints = doc.get("endpoints", [])
    if endpoints:
        table = []
        for e in endpoints:
            rate = e.get("sample_rate")
            spread = "-"
            if rate is not None and rate.get("min") is not None:
                low, high = rate["min"], rate["max"]
                spread = _rate(low) if low == high else f"{_rate(low)}-{_rate(high)}"
            table.append([
                e["endpoint"], e.get("requests_seen", 0), e.get("requests_sampled", 0),
                e.get("requests_dropped", 0),
                _rate(rate["rate"]) if rate is not None else "-", spread,
                _reasons(e.get("dropped_by_reason", {})),
            ])
        out.append(f"\nEndpoints of {label}\n")
        out.append(render_table(
            ["Endpoint", "Seen", "Sampled", "Dropped", "Rate now", "Rate range", "Drops"],
            table, "lrrrrrl",
        ))
    return "".join(out)
