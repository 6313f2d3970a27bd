"""Dashboard page handlers: services, releases, release detail, annotated file, diff."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Mapping

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from runcov_collector import limits
from runcov_collector.dashboard import params as P
from runcov_collector.dashboard.cache import AnswerCache
from runcov_collector.dashboard.source import Annotation, annotate, read_source
from runcov_collector.dashboard.sparkline import cumulative_lines
from runcov_collector.model import ROLES, Selection, Store
from runcov_collector.store.errors import SchemaChanged, is_unavailable, unavailable_reason

PER_PAGE = 100
MAX_PER_PAGE = 1000
FILE_SORTS = ("path", "line_percent", "branch_percent", "missed", "requests")
STATIC_PREFIX = "/ui/static"
DEFAULT_CACHE_SECONDS = 10.0
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",  # dashboard.js only: the templates hold no inline script
    "style-src 'self'",  # dashboard.css only: no inline style, no style attribute
    "img-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
"""What a dashboard page may load: its own script and stylesheet, nothing inline, nothing
from elsewhere. Escaping is what keeps hostile names inert; this is the second line."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Pages sit behind Basic authentication: no other site may frame them (clickjacking);
    # X-Frame-Options for browsers that predate frame-ancestors.
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Dashboard URLs name services, releases and files; trace links leave for another site.
    "Referrer-Policy": "no-referrer",
    # Pages show source code and coverage: no copy in shared or browser caches.
    "Cache-Control": "no-store",
}
"""Headers of every dashboard page (errors included)."""

log = logging.getLogger(__name__)


def url(route: str, params: Mapping[str, Any] | None = None, /, **extra: Any) -> str:
    """``route?query`` with ``params`` and ``extra`` (None values dropped)."""
    query = {k: v for k, v in {**(params or {}), **extra}.items() if v is not None}
    return route + ("?" + urllib.parse.urlencode(query) if query else "")


def trace_link(template: str | None, trace_id: str) -> str | None:
    """The tracing UI link for a trace id, when a safe (http/https) template is configured."""
    if not template or not trace_id or not all(c in "0123456789abcdef" for c in trace_id):
        return None
    if not template.startswith(("http://", "https://")):
        return None
    return template.replace("{trace_id}", trace_id)


def pct(value: float | None) -> str:
    """``42.5%`` or ``-``."""
    return "-" if value is None else f"{value:.1f}%"


NOT_MEASURED = "n/a"
"""What the dashboard shows for arc and branch figures a census-only measurement leaves null."""
NOT_MEASURED_TITLE = "measured by census only: census records lines, not arcs or branches"


def count(value: int | None) -> str:
    """A count, or ``n/a`` when it is unknown (null)."""
    return NOT_MEASURED if value is None else str(value)


def branch_pct(row: Mapping[str, Any]) -> str:
    """Branch coverage of a file, totals or release row: ``n/a`` when it was measured by census
    only (its covered arcs are null), else ``pct`` of its ``branch_percent``."""
    if "arcs_covered" in row and row["arcs_covered"] is None:
        return NOT_MEASURED
    return pct(row.get("branch_percent"))


def ranges(numbers: list[int]) -> str:
    """``3-5, 9`` from line numbers."""
    values = sorted(set(numbers))
    parts = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(parts)


def arcs_text(arcs: list[list[int]]) -> str:
    """``14->20, 20->exit``."""
    return ", ".join(
        f"{'entry' if a < 0 else a}->{'exit' if b < 0 else b}" for a, b in sorted(map(tuple, arcs))
    )


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(url=url, pct=pct, count=count, branch_pct=branch_pct, ranges=ranges,
                       arcs_text=arcs_text, static=STATIC_PREFIX, roles=ROLES,
                       not_measured_title=NOT_MEASURED_TITLE)
    return env


class Dashboard:
    """The pages, bound to one store and the collector's configuration."""

    def __init__(self, store: Store, config: Any) -> None:
        self.store = store
        self.source_dir: str | None = getattr(config, "source_dir", None)
        self.trace_url_template: str | None = getattr(config, "trace_url_template", None)
        self.retry_after_seconds = int(
            getattr(config, "retry_after_seconds", limits.RETRY_AFTER_SECONDS)
        )
        ttl = getattr(config, "dashboard_cache_seconds", None)
        self.cache = AnswerCache(ttl=DEFAULT_CACHE_SECONDS if ttl is None else float(ttl))
        self.env = _env()

    # -- plumbing --------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """Render a template to an HTML response."""
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def page(self, build: Callable[[Mapping[str, str]], tuple[str, dict[str, Any]]]) -> Any:
        """A Starlette endpoint running ``build`` (store work) in the thread pool."""

        async def endpoint(request: Request) -> HTMLResponse:
            query = request.query_params
            try:
                name, context = await run_in_threadpool(build, query)
            except P.BadParameter as exc:
                return self.render("error.html", 400, title="Bad request", message=str(exc))
            except SchemaChanged as exc:
                log.warning("%s: %s", request.url.path, exc)
                response = self.render(
                    "error.html", 503, title="Collector out of date",
                    message=f"Coverage cannot be shown by this collector: {exc}.",
                )
                response.headers["Retry-After"] = str(self.retry_after_seconds)
                return response
            except (KeyError, IndexError):
                raise  # a bug (HTTP 500), not an unknown service, release or file
            except LookupError as exc:
                message = exc.args[0] if exc.args else "not found"
                return self.render("error.html", 404, title="Not found", message=str(message))
            except ValueError as exc:
                return self.render("error.html", 400, title="Bad request", message=str(exc))
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                reason = unavailable_reason(exc)
                log.warning("%s: store unavailable: %s", request.url.path, reason)
                response = self.render(
                    "error.html", 503, title="Store unavailable",
                    message=f"The coverage store is unavailable ({reason}). Coverage cannot be "
                    "shown until it answers again; try again in a moment.",
                )
                response.headers["Retry-After"] = str(self.retry_after_seconds)
                return response
            return self.render(name, **context)

        return endpoint

    # -- pages -----------------------------------------------------------------------------

    def index(self, query: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """All services."""
        services = sorted(self.store.services()["services"], key=lambda s: s["service"])
        return "index.html", {"services": services}

    def service(self, query: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """Releases of one service with coverage and a trend sparkline each."""
        service = P.text(query, "service")
        if not service:
            raise P.BadParameter("service is required")
        releases = self.store.releases(service)["releases"]
        if not releases:
            raise LookupError(f"unknown service {service!r}")
        rows = []
        for r in releases:
            sel = Selection(service, r["version"], r["environment"], r["role"])
            series = self.store.series(sel)["series"]
            rows.append({"release": r, "spark": cumulative_lines(series),
                         "query": P.release_query(r)})
        return "service.html", {"service": service, "rows": rows}

    def release(self, query: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """Endpoints and files of one release; files filtered, sorted and paged server-side."""
        sel = P.selection(query)
        prefix = P.text(query, "prefix")
        if prefix is not None and (prefix.startswith("/") or ".." in prefix.split("/")):
            raise P.BadParameter("prefix must be relative and must not contain '..'")
        needle = (P.text(query, "q") or "").lower()
        sort = query.get("sort") or "path"
        if sort not in FILE_SORTS:
            raise P.BadParameter(f"sort must be one of {', '.join(FILE_SORTS)}")
        order = "desc" if query.get("order") == "desc" else "asc"
        per_page = P.int_param(query, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
        page = P.int_param(query, "page", 1, 1, 10**9)

        cov = self.cache.get(("coverage", sel, prefix),
                             lambda: self.store.coverage(sel, path_prefix=prefix))
        release = cov["release"]
        whole = Selection(release["service"], release["version"], release["environment"],
                          release["role"], since_unix=sel.since_unix, until_unix=sel.until_unix)
        endpoints = sorted(
            self.cache.get(("endpoints", whole), lambda: self.store.endpoints(whole))["endpoints"],
            key=lambda e: e["endpoint"],
        )
        agent = self._agent(Selection(release["service"], release["version"],
                                      release["environment"], release["role"]))
        files = cov.get("files", [])
        if needle:
            files = [f for f in files if needle in f["path"].lower()]
        files = _sort_files(files, sort, order == "desc")
        matched = len(files)
        pages = max(1, -(-matched // per_page))
        page = min(page, pages)
        shown = files[(page - 1) * per_page: page * per_page]
        base = P.release_query(release, endpoint=sel.endpoint, since=query.get("since"),
                               until=query.get("until"))
        state = dict(base, q=needle or None, prefix=prefix, sort=sort, order=order,
                     per_page=per_page if per_page != PER_PAGE else None)
        return "release.html", {
            "release": release, "totals": cov.get("totals", {}), "endpoints": endpoints,
            "files": shown, "matched": matched, "page": page, "pages": pages,
            "per_page": per_page, "sort": sort, "order": order, "q": needle,
            "prefix": prefix or "", "base": base, "state": state,
            "selected_endpoint": sel.endpoint, "since": P.text(query, "since"),
            "until": P.text(query, "until"), "agent": agent,
        }

    def _agent(self, sel: Selection) -> dict[str, Any] | None:
        """The release's agent metrics (all time: they are the agents' running totals), or
        None when the store keeps none."""
        read = getattr(self.store, "agent", None)
        if read is None:
            return None
        answer: dict[str, Any] = self.cache.get(("agent", sel), lambda: read(sel))
        return answer if answer.get("processes") else None

    def file(self, query: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """One file: summary, and the annotated source when a source directory is configured."""
        sel = P.selection(query)
        path = P.text(query, "path")
        if not path:
            raise P.BadParameter("path is required")
        detail = self.store.file(sel, path)
        release = detail.get("release") or {
            "service": sel.service, "version": sel.version or "",
            "environment": sel.environment or "", "role": sel.role or "baseline",
        }
        ann = Annotation.from_detail(detail)
        text, info = read_source(self.source_dir, path)
        template = self.trace_url_template

        def link(trace_id: str) -> str | None:
            return trace_link(template, trace_id)

        lines = annotate(text, ann, link) if text is not None else []
        listing = [] if text is not None else [
            {"number": n, "css": ann.css(n), "hits": hits, "trace": trace, "link": link(trace),
             "note": ann.note(n)}
            for n in sorted(ann.executable)
            for hits, trace in [ann.covered.get(n, (0, ""))]
        ]
        return "file.html", {
            "release": release, "file": detail, "path": path, "lines": lines,
            "listing": listing,
            "source_note": None if text is not None else info,
            "sha_mismatch": text is not None and detail.get("sha") not in (None, "", info),
            "local_sha": info if text is not None else None,
            "counts": {
                "covered": sum(1 for n in ann.executable if ann.css(n) == "covered"),
                "partial": len(ann.missing_exits),
                "missed": sum(1 for n in ann.executable if ann.css(n) == "missed"),
            },
            "back": P.release_query(release, endpoint=sel.endpoint, since=query.get("since"),
                                    until=query.get("until")),
        }

    def diff(self, query: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """Release A vs release B of one service, with a form to pick both."""
        service = P.text(query, "service")
        if not service:
            raise P.BadParameter("service is required")
        releases = self.store.releases(service)["releases"]
        context: dict[str, Any] = {"service": service, "releases": releases, "result": None}
        # The form preselects what was asked for; what was not, from the releases compared
        # (a parameter left out resolves as the API resolves it), or else the default pair.
        offered = compare_defaults(releases)
        if "a_role" in query or "a_version" in query:
            a = P.selection(query, "a_")
            b = P.selection(query, "b_")
            result = self.store.diff(a, b)
            result["arcs_not_compared"] = sum(
                int(f.get("arcs_not_compared") or 0) for f in result.get("files", [])
            )
            result["files"] = sorted(
                (f for f in result.get("files", [])
                 if f.get("newly_covered_lines") or f.get("no_longer_covered_lines")
                 or f.get("newly_covered_arcs") or f.get("no_longer_covered_arcs")),
                key=lambda f: f["path"],
            )
            context["result"] = result
            offered = compare_form(result["a"], result["b"])
        context["form"] = {name: query[name] if name in query else offered.get(name)
                           for name in COMPARE_FIELDS}
        return "diff.html", context


COMPARE_FIELDS = ("a_version", "a_role", "b_version", "b_role", "environment")
"""The compare form's selects (``service`` is a hidden field)."""


def compare_form(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, str]:
    """The compare form's fields selecting release ``a`` as A and ``b`` as B (in B's
    environment: the form compares within one)."""
    return {"a_version": str(a.get("version") or ""), "a_role": str(a.get("role") or "baseline"),
            "b_version": str(b.get("version") or ""), "b_role": str(b.get("role") or "baseline"),
            "environment": str(b.get("environment") or "")}


def compare_defaults(releases: list[dict[str, Any]]) -> dict[str, str]:
    """What the compare form preselects, so that pressing Compare as offered compares two
    releases that exist (with nothing selected a browser sends each select's first option:
    the newest version with role baseline, which need not exist).

    ``releases`` is newest first. As ``runcov diff --canary`` picks: B is the most recent
    canary and A the baseline of its version in its environment, else the most recent baseline
    there. Without a canary and a baseline beside it: B is the most recent release and A the
    one before it in B's environment, or B itself when it is alone there (no differences
    rather than a 404). Empty for no release.
    """

    def environment(release: Mapping[str, Any]) -> str:
        return str(release.get("environment") or "")

    canaries = [r for r in releases if r.get("role") == "canary"]
    if canaries:
        b = canaries[0]
        baselines = [r for r in releases
                     if r.get("role") == "baseline" and environment(r) == environment(b)]
        same = [r for r in baselines if r.get("version") == b.get("version")]
        if baselines:
            return compare_form((same or baselines)[0], b)
    if not releases:
        return {}
    b = releases[0]
    beside = [r for r in releases[1:] if environment(r) == environment(b)]
    return compare_form(beside[0] if beside else b, b)


def _sort_files(files: list[dict[str, Any]], sort: str, desc: bool) -> list[dict[str, Any]]:
    """Sort file rows; unknown percentages go last either way."""
    files = sorted(files, key=lambda f: f["path"], reverse=desc and sort == "path")
    if sort == "path":
        return files
    if sort == "missed":
        return sorted(
            files,
            key=lambda f: max(0, int(f.get("lines_total") or 0) - int(f.get("lines_covered") or 0)),
            reverse=desc,
        )
    if sort == "requests":
        return sorted(files, key=lambda f: int(f.get("requests") or 0), reverse=desc)
    known = [f for f in files if f.get(sort) is not None]
    unknown = [f for f in files if f.get(sort) is None]
    return sorted(known, key=lambda f: float(f[sort]), reverse=desc) + unknown
