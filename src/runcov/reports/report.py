"""The ``report`` view: services, releases, endpoints and files of one release."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from runcov.reports.client import CollectorClient, ReleaseSelection
from runcov.reports.local import Exclusion
from runcov.reports.table import fmt_percent, percent, render_table, total_label
from runcov.reports.window import Window

SORT_KEYS = ("path", "cover", "missed", "branch", "requests")


def build_report(
    client: CollectorClient,
    sel: ReleaseSelection,
    path_prefix: Optional[str] = None,
    sort: str = "path",
    skip_covered: bool = False,
    exclude: Optional[Exclusion] = None,
    sources: Sequence[Path] = (),
    window: Optional[Window] = None,
) -> dict[str, Any]:
    """Collect everything ``runcov report`` shows into one JSON-ready dict.

    ``window``: the ``--since``/``--until`` given, which ``sel`` carries as sent (by default
    read back from ``sel``), for the headings and the JSON's ``window``.

    With ``exclude`` (collector paths, looked up under ``sources`` for absolute globs), the
    matching files are left out of every figure: the files and their totals, and the
    endpoints' and releases' covered lines and arcs. The collector sums those over all the
    files, so they are recounted from per-file rows, with one coverage query per endpoint and
    per release.
    """
    if not sel.service:
        services = client.services()["services"]
        return {
            "services": sorted(services, key=lambda s: s["service"]),
        }
    releases = client.releases(sel.service)["releases"]
    coverage = client.coverage(sel, path_prefix=path_prefix)
    endpoints = client.endpoints(sel)["endpoints"]
    left_out: list[str] = []
    unmatched: list[str] = []
    if exclude:
        unmatched = exclude.unmatched((f["path"] for f in coverage.get("files", [])), sources)
        coverage, left_out = without_excluded(coverage, exclude, sources)
        endpoints = [_recount_endpoint(client, sel, e, exclude, sources) for e in endpoints]
        releases = [_recount_release(client, sel.service, r, exclude, sources)
                    for r in releases]
    files = list(coverage.get("files", []))
    if skip_covered:
        files = [f for f in files if not _fully_covered(f)]
    files = sort_files(files, sort)
    if window is None:
        window = Window(sel.since, sel.until)
    # The releases are listed with their all-time figures whatever the window: only the
    # selected release's endpoints and files (and their totals) are the window's.
    window_doc = ({**window.as_dict(), "label": window.label(), "applies_to": list(WINDOWED)}
                  if window else None)
    return {
        "release": coverage["release"],
        "endpoint": sel.endpoint,
        "window": window_doc,
        "path_prefix": path_prefix or None,
        "exclude": exclude.globs if exclude else None,
        "excluded_files": left_out,
        "exclude_unmatched": unmatched,
        "releases": releases,
        "endpoints": sorted(endpoints, key=lambda e: e["endpoint"]),
        "totals": coverage.get("totals", {}),
        "files": files,
    }


def without_excluded(
    doc: dict[str, Any], exclude: Exclusion, sources: Sequence[Path] = ()
) -> tuple[dict[str, Any], list[str]]:
    """A coverage document (``GET /api/v1/coverage``, with or without detail) without the
    files ``exclude`` matches, its totals recounted from the remaining files; and the paths
    left out."""
    kept, left_out = [], []
    for f in doc.get("files", []):
        if exclude.excludes(f["path"], sources):
            left_out.append(f["path"])
        else:
            kept.append(f)
    if not left_out:
        return doc, left_out
    requests = (doc.get("totals") or {}).get("requests", 0)
    return {**doc, "files": kept, "totals": recount_totals(kept, requests)}, left_out


def recount_totals(files: list[dict[str, Any]], requests: Any) -> dict[str, Any]:
    """The collector's ``totals`` of these file rows, as it sums them (docs/query-api.md).

    Covered and total counts add up; the line percentage counts only the files whose
    denominators are known; the branch percentage is covered over total branch exits. Arc
    and branch figures are null when the files were measured by census only (see
    :func:`_census_only`). ``requests`` is kept as given: it counts request traces, whichever
    files they ran, so it cannot be recounted from files.
    """
    keys = ("lines_covered", "lines_total", "arcs_covered", "arcs_total", "branches_covered",
            "branches_total")
    sums: dict[str, Optional[int]] = {k: sum(int(f.get(k) or 0) for f in files) for k in keys}
    lines_known = sum(int(f.get("lines_covered") or 0) for f in files
                      if int(f.get("lines_total") or 0) > 0)
    branch_percent = percent(sums["branches_covered"] or 0, sums["branches_total"] or 0)
    if _census_only(files):
        sums["arcs_covered"] = sums["branches_covered"] = branch_percent = None
    return {
        "files": len(files),
        **sums,
        "line_percent": percent(lines_known, sums["lines_total"] or 0),
        "branch_percent": branch_percent,
        "requests": requests,
    }


def covers_anything(counts: dict[str, Any]) -> bool:
    """Whether a collector's totals or file row counts any covered line or arc."""
    return int(counts.get("lines_covered") or 0) > 0 or int(counts.get("arcs_covered") or 0) > 0


def _census_only(files: list[dict[str, Any]]) -> bool:
    """The collector's census rule over these files: they executed lines, and not one arc.

    Detail rows list what was executed. Summary rows only say whether a file was measured by
    census alone (null covered arcs); one with covered lines or arcs and numbers was measured
    exactly, so it executed arcs. (A summary row whose executed lines and arcs all lie outside
    its denominators reads as having executed nothing.)
    """
    if any("lines" in f for f in files):
        return (sum(len(f.get("lines", [])) for f in files) > 0
                and sum(len(f.get("arcs", [])) for f in files) == 0)
    exact = any(
        not _unmeasured(f, "arcs_covered") and covers_anything(f)
        for f in files
    )
    return not exact and any(_unmeasured(f, "arcs_covered") for f in files)


def _recount_endpoint(
    client: CollectorClient, sel: ReleaseSelection, endpoint: dict[str, Any],
    exclude: Exclusion, sources: Sequence[Path],
) -> dict[str, Any]:
    """An endpoints row whose covered lines and arcs leave out the excluded files.

    The collector's are its coverage totals with ``endpoint=`` (same window, all files).
    """
    doc = client.coverage(replace(sel, endpoint=endpoint["endpoint"]))
    totals = without_excluded(doc, exclude, sources)[0].get("totals") or {}
    return {**endpoint, "lines_covered": totals.get("lines_covered", 0),
            "arcs_covered": totals.get("arcs_covered")}


def _recount_release(
    client: CollectorClient, service: str, release: dict[str, Any], exclude: Exclusion,
    sources: Sequence[Path],
) -> dict[str, Any]:
    """A releases row whose all-time coverage figures leave out the excluded files."""
    exact = ReleaseSelection(
        service=service, version=release.get("version") or "",
        environment=release.get("environment") or "", role=release.get("role") or "baseline",
    )
    totals = without_excluded(client.coverage(exact), exclude, sources)[0].get("totals") or {}
    keys = ("lines_covered", "lines_total", "arcs_covered", "arcs_total", "line_percent",
            "branch_percent")
    return {**release, **{k: totals.get(k) for k in keys}}


#: The parts of a report that ``--since``/``--until`` narrow; the releases table is all-time.
WINDOWED = ("endpoints", "files", "totals")

def window_label(window: Optional[dict[str, Any]]) -> str:
    """The window of a report's JSON as its headings name it (see :meth:`Window.label`)."""
    if not window:
        return ""
    if window.get("label"):
        return str(window["label"])
    return Window(window.get("since"), window.get("until")).label()


def _fully_covered(f: dict[str, Any]) -> bool:
    """No missed line or branch; a file without denominators but with hits is unknown. Where
    branches were not measured (census), the lines decide."""
    total = int(f.get("lines_total") or 0)
    covered = int(f.get("lines_covered") or 0)
    if total == 0 and covered > 0:
        return False
    if _unmeasured(f, "branches_covered"):
        return covered >= total
    return covered >= total and int(f.get("branches_covered") or 0) >= int(
        f.get("branches_total") or 0
    )


def _unmeasured(row: dict[str, Any], key: str) -> bool:
    """Whether the collector says ``key`` was not measured: null (census records no arcs)."""
    return key in row and row[key] is None


#: What the tables show for arc and branch figures of coverage measured by census alone.
NOT_MEASURED = "n/a"


def sort_files(files: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Sort file rows: by path, lowest line coverage, most missed lines, branch cover, requests."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)})")
    by_path = sorted(files, key=lambda f: f["path"])
    if sort == "cover":
        return sorted(by_path, key=lambda f: _pct_key(f.get("line_percent")))
    if sort == "branch":
        return sorted(by_path, key=lambda f: _pct_key(f.get("branch_percent")))
    if sort == "missed":
        return sorted(by_path, key=lambda f: -_missed(f))
    if sort == "requests":
        return sorted(by_path, key=lambda f: -int(f.get("requests") or 0))
    return by_path


def _pct_key(value: Optional[float]) -> float:
    return 101.0 if value is None else float(value)


def _missed(f: dict[str, Any]) -> int:
    total = int(f.get("lines_total") or 0)
    return max(0, total - int(f.get("lines_covered") or 0)) if total else 0


def release_label(release: dict[str, Any]) -> str:
    """``shop 1.1 (prod, canary)``."""
    env = release.get("environment") or "-"
    version = release.get("version") or "-"
    return f"{release['service']} {version} ({env}, {release.get('role') or 'baseline'})"


def render_report(data: dict[str, Any]) -> str:
    """The terminal form of :func:`build_report`'s result."""
    if "services" in data:
        rows = [
            [s["service"], s.get("releases", ""), s.get("last_seen") or "-"]
            for s in data["services"]
        ]
        if not rows:
            return "no services have reported coverage yet\n"
        return render_table(["Service", "Releases", "Last seen"], rows, "lrl")
    out = []
    window = window_label(data.get("window"))
    label = release_label(data["release"])
    if data.get("endpoint"):  # (--endpoint: the endpoints and files below are its alone)
        label += f", endpoint {data['endpoint']}"
    prefix = data.get("path_prefix")
    globs = data.get("exclude")
    # Every table leaves the excluded files out: each heading says so.
    without = (", without files matching --exclude " + ", ".join(repr(g) for g in globs)
               if globs else "")
    if window:
        out.append(
            f"Releases (all time; the window {window} applies to the endpoints and files below)"
            f"{without}\n"
        )
    else:
        out.append(f"Releases{without}\n")
    out.append(render_releases(data["releases"]))
    out.append(f"\nEndpoints of {label}" + (f", {window}" if window else "") + f"{without}\n")
    out.append(render_endpoints(data["endpoints"]))
    out.append(
        f"\nFiles of {label}"
        + (f" under {prefix!r}" if prefix else "")
        + (f", {window}" if window else "")
        + f"{without}\n"
    )
    out.append(render_files(data["files"], data.get("totals", {})))
    if (prefix or globs) and data["files"]:
        # The collector counts the release's requests, whichever files they ran.
        out.append(
            f"The TOTAL row's Requests are all the sampled requests of {label}"
            + (f" {window}" if window else "")
            + (", not only those that ran the files shown.\n" if globs
               else f", not only those that ran files under {prefix!r}.\n")
        )
    return "".join(out)


def render_releases(releases: list[dict[str, Any]]) -> str:
    """Releases table, newest first as the collector returns them."""
    rows = []
    for r in releases:
        census = _unmeasured(r, "arcs_covered")
        rows.append([
            r.get("version") or "-", r.get("environment") or "-", r.get("role") or "-",
            r.get("requests", 0),
            f"{r.get('lines_covered', 0)}/{r.get('lines_total', 0)}",
            fmt_percent(r.get("line_percent")),
            NOT_MEASURED if census else f"{r.get('arcs_covered', 0)}/{r.get('arcs_total', 0)}",
            NOT_MEASURED if census else fmt_percent(r.get("branch_percent")),
            r.get("last_seen") or "-",
        ])
    if not rows:
        return "(none)\n"
    return render_table(
        ["Version", "Env", "Role", "Requests", "Lines", "Cover", "Arcs", "Branch", "Last seen"],
        rows, "lllrrrrrl",
    )


def render_endpoints(endpoints: list[dict[str, Any]]) -> str:
    """Endpoints table, sorted by name."""
    rows = [
        [e["endpoint"], e.get("requests", 0), e.get("lines_covered", 0),
         NOT_MEASURED if _unmeasured(e, "arcs_covered") else e.get("arcs_covered", 0),
         e.get("first_seen") or "-", e.get("last_seen") or "-"]
        for e in endpoints
    ]
    if not rows:
        return "(none)\n"
    return render_table(
        ["Endpoint", "Requests", "Lines", "Arcs", "First seen", "Last seen"], rows, "lrrrll"
    )


def render_files(files: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """Files table in coverage.py's layout, with a TOTAL row from the collector's totals."""
    rows = []
    for f in files:
        lines_total = int(f.get("lines_total") or 0)
        branches_total = int(f.get("branches_total") or 0)
        census = _unmeasured(f, "branches_covered")
        rows.append([
            f["path"], lines_total, _missed(f), branches_total,
            NOT_MEASURED if census
            else max(0, branches_total - int(f.get("branches_covered") or 0)),
            fmt_percent(f.get("line_percent")),
            NOT_MEASURED if census else fmt_percent(f.get("branch_percent")),
            f.get("requests", 0),
        ])
    if not rows:
        return "(none)\n"
    lt = int(totals.get("lines_total") or 0)
    bt = int(totals.get("branches_total") or 0)
    census = _unmeasured(totals, "branches_covered")
    footer = [
        total_label(totals.get("files", len(files))), lt,
        lt - int(totals.get("lines_covered") or 0),
        bt, NOT_MEASURED if census else bt - int(totals.get("branches_covered") or 0),
        fmt_percent(totals.get("line_percent", percent(int(totals.get("lines_covered") or 0), lt))),
        NOT_MEASURED if census else fmt_percent(totals.get("branch_percent")),
        totals.get("requests", ""),
    ]
    return render_table(
        ["File", "Stmts", "Miss", "Branch", "BrMiss", "Cover", "BrCover", "Requests"],
        rows, "lrrrrrrr", footer,
    )
