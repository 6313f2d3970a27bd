"""The ``diff`` view: what release B covers that release A does not, and the reverse."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from runcov.reports.client import CollectorClient, CollectorRequestError, ReleaseSelection
from runcov.reports.report import covers_anything, release_label
from runcov.reports.table import fmt_arcs, fmt_ranges, render_table, total_label
from runcov.reports.window import Window


def canary_pair(
    client: CollectorClient, sel: ReleaseSelection, version: str
) -> tuple[ReleaseSelection, ReleaseSelection]:
    """A = baseline, B = the canary of ``version``, both in the canary's environment.

    The baseline is the baseline release of the same version when the collector has one,
    otherwise the most recently seen baseline of the service in that environment. Without
    ``--environment`` the canary's environment is the one where that canary was seen most
    recently: a baseline from another environment (staging against a prod canary) would
    make every difference between the environments look like a difference of the release.
    """
    if not sel.service:
        raise ValueError("--canary needs --service")
    releases = client.releases(sel.service)["releases"]  # newest first
    environment = sel.environment
    if environment is None:
        canaries = [
            r for r in releases if r.get("role") == "canary" and r.get("version") == version
        ]
        if not canaries:
            raise ValueError(
                f"service {sel.service!r} has no canary release of version {version!r}"
            )
        environment = canaries[0].get("environment") or ""  # "" names the empty one
    baselines = [
        r for r in releases
        if r.get("role") == "baseline" and (r.get("environment") or "") == environment
    ]
    baseline = [r for r in baselines if r.get("version") == version] or baselines
    b = replace(sel, version=version, role="canary", environment=environment)
    a = replace(b, version=baseline[0].get("version") if baseline else None, role="baseline")
    return a, b


def missing_releases(
    client: CollectorClient, a: ReleaseSelection, b: ReleaseSelection
) -> list[tuple[str, str]]:
    """``("A", the collector's reason)`` for each of A and B that matches no release.

    The collector's diff names the first side it cannot find only; each side is asked for on
    its own here, so that a message can name every side that is missing.
    """
    out = []
    for side, sel in (("A", a), ("B", b)):
        try:
            client.endpoints(replace(sel, endpoint=None, since=None, until=None))
        except CollectorRequestError as exc:
            if exc.status != 404:
                raise
            out.append((side, exc.error))
    return out


def build_diff(
    client: CollectorClient, a: ReleaseSelection, b: ReleaseSelection,
    window: Optional[Window] = None,
) -> dict[str, Any]:
    """The collector's diff, files sorted by path and empty files dropped.

    ``window`` is the ``--since``/``--until`` given (``a`` and ``b`` carry it as sent; by
    default it is read back from ``a``). ``has_coverage`` says whether each side covered
    anything (in the window): a side without coverage makes everything the other covers a
    difference, and two make no difference at all, which is not "no coverage differences".
    """
    data = client.diff(a, b)
    if window is None:
        window = Window(a.since, a.until)
    data["window"] = {**window.as_dict(), "label": window.label()} if window else None
    data["has_coverage"] = {"a": has_coverage(client, a), "b": has_coverage(client, b)}
    not_compared = sum(int(f.get("arcs_not_compared") or 0) for f in data.get("files", []))
    files = [
        f for f in data.get("files", [])
        if f.get("newly_covered_lines") or f.get("no_longer_covered_lines")
        or f.get("newly_covered_arcs") or f.get("no_longer_covered_arcs")
    ]
    data["files"] = sorted(files, key=lambda f: f["path"])
    data["endpoints"] = sorted(data.get("endpoints", []), key=lambda e: e["endpoint"])
    data["summary"] = {
        "files_changed": len(files),
        "newly_covered_lines": sum(len(f.get("newly_covered_lines", [])) for f in files),
        "no_longer_covered_lines": sum(len(f.get("no_longer_covered_lines", [])) for f in files),
        "newly_covered_arcs": sum(len(f.get("newly_covered_arcs", [])) for f in files),
        "no_longer_covered_arcs": sum(len(f.get("no_longer_covered_arcs", [])) for f in files),
        "endpoints_only_in_a": sum(1 for e in data["endpoints"] if e.get("only_in_a")),
        "endpoints_only_in_b": sum(1 for e in data["endpoints"] if e.get("only_in_b")),
        "arcs_not_compared": not_compared,
    }
    return data


def has_coverage(client: CollectorClient, sel: ReleaseSelection) -> bool:
    """Whether the selected release (its endpoint, in its window) executed any line."""
    try:
        totals = client.coverage(sel).get("totals") or {}
    except CollectorRequestError as exc:
        if exc.status != 404 or sel.endpoint is None:
            raise
        return False  # an endpoint only the other side saw (a diff shows those)
    return covers_anything(totals)


def no_coverage_message(data: dict[str, Any]) -> str:
    """Why a diff whose sides both lack coverage compares nothing, or "" when one has some."""
    covered = data.get("has_coverage") or {}
    if covered.get("a", True) or covered.get("b", True):
        return ""
    window = (data.get("window") or {}).get("label")
    return (
        f"nothing to compare: neither A ({release_label(data['a'])}) nor B "
        f"({release_label(data['b'])}) has coverage" + (f" {window}" if window else "")
    )


def render_diff(data: dict[str, Any], show_lines: bool = True) -> str:
    """Terminal form of :func:`build_diff`'s result."""
    a, b = data["a"], data["b"]
    window = (data.get("window") or {}).get("label")
    out = [f"A: {release_label(a)}\nB: {release_label(b)}\n"
           + (f"Window: {window}\n" if window else "") + "\n"]
    s = data["summary"]
    covered = data.get("has_coverage") or {}
    for side, other in (("A", "B"), ("B", "A")):
        if covered.get(side.lower(), True) is False and covered.get(other.lower(), True):
            out.append(f"note: {side} has no coverage" + (f" {window}" if window else "")
                       + f": everything {other} covers shows as only in {other}\n\n")
    if s.get("arcs_not_compared"):
        out.append(f"note: {s['arcs_not_compared']} arc(s) covered on one side are not compared: "
                   "the other side ran their lines measured by census, which records no arcs\n\n")
    nothing = no_coverage_message(data)
    if nothing:
        out.append(nothing + "\n")
    elif not data["files"]:
        out.append("no coverage differences between A and B"
                   + (f" {window}" if window else "") + "\n")
    else:
        rows = []
        for f in data["files"]:
            rows.append([
                f["path"],
                f"+{len(f.get('newly_covered_lines', []))}",
                f"-{len(f.get('no_longer_covered_lines', []))}",
                f"+{len(f.get('newly_covered_arcs', []))}",
                f"-{len(f.get('no_longer_covered_arcs', []))}",
            ])
        footer = [
            total_label(s["files_changed"]), f"+{s['newly_covered_lines']}",
            f"-{s['no_longer_covered_lines']}", f"+{s['newly_covered_arcs']}",
            f"-{s['no_longer_covered_arcs']}",
        ]
        out.append(render_table(["File", "+Lines", "-Lines", "+Arcs", "-Arcs"], rows, "lrrrr",
                                footer))
        if show_lines:
            out.append("\n")
            for f in data["files"]:
                out.append(f"{f['path']}\n")
                _detail(out, "  only in B, lines", fmt_ranges(f.get("newly_covered_lines", [])))
                _detail(out, "  only in A, lines", fmt_ranges(f.get("no_longer_covered_lines", [])))
                _detail(out, "  only in B, arcs ", fmt_arcs(f.get("newly_covered_arcs", [])))
                _detail(out, "  only in A, arcs ", fmt_arcs(f.get("no_longer_covered_arcs", [])))
    only_a = [e["endpoint"] for e in data["endpoints"] if e.get("only_in_a")]
    only_b = [e["endpoint"] for e in data["endpoints"] if e.get("only_in_b")]
    if only_a or only_b:
        out.append("\nEndpoints\n")
        for name in only_b:
            out.append(f"  only in B: {name}\n")
        for name in only_a:
            out.append(f"  only in A: {name}\n")
    return "".join(out)


def _detail(out: list[str], label: str, text: Optional[str]) -> None:
    if text:
        out.append(f"{label}: {text}\n")
