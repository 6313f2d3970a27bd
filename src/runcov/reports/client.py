"""HTTP client for the collector's JSON query API (standard library only)."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:4318"
_DEFAULT_TIMEOUT = 60.0
_CHUNK = 64 * 1024
#: The largest answer read: a collector's biggest documents (a release's files with detail)
#: are tens of MiB; past this, an answer is a failing or hostile server's.
MAX_ANSWER_BYTES = 256 * 1024 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the request carries the query token, which a redirect
    would hand to whatever URL it names (another host, or plain HTTP from HTTPS). The 3xx
    answer reaches :meth:`CollectorClient.get`, which names where it pointed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class CollectorError(Exception):
    """The collector answered with an error, or could not be reached."""


class CollectorUnreachable(CollectorError):
    """No HTTP answer at all: connection refused, DNS failure, timeout, server error."""


class CollectorConfigError(CollectorError):
    """The collector cannot be asked at all as configured (a URL without http://): exit code 2."""


class CollectorAnswerError(CollectorUnreachable):
    """Something answered in HTTP, but not with the JSON the collector's query API sends."""


class CollectorRequestError(CollectorError):
    """The collector rejected the request (400, 401, 403, 404): a usage or configuration error.

    ``error`` is the collector's own reason (its answer's ``error`` field, else the HTTP one).
    """

    def __init__(self, message: str, status: int, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error or message


@dataclass(frozen=True)
class ReleaseSelection:
    """The release selection parameters of docs/query-api.md."""

    service: Optional[str] = None
    version: Optional[str] = None
    environment: Optional[str] = None
    role: Optional[str] = None
    endpoint: Optional[str] = None
    since: Optional[str] = None
    until: Optional[str] = None

    def params(self) -> dict[str, str]:
        """Query parameters for this selection (unset values left out)."""
        out: dict[str, str] = {}
        for name in ("service", "version", "environment", "role", "endpoint", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _shorten_timeout(response: Any, left: float) -> None:
    """Let the next read wait no longer than what is left of the query's time (the socket's
    own timeout is the query's whole time, set once at connection)."""
    try:
        sock = response.fp.raw._sock
        current = sock.gettimeout()
        if current is None or left < current:
            sock.settimeout(max(left, 0.001))
    except AttributeError:  # (another response class: the per-read timeout stays)
        pass


@dataclass
class CollectorClient:
    """Talks to one collector; every method returns the JSON documented in docs/query-api.md."""

    base_url: str = DEFAULT_COLLECTOR_URL
    token: Optional[str] = None
    timeout: float = _DEFAULT_TIMEOUT
    on_bytes: Optional[Callable[[int], None]] = field(default=None, repr=False)
    #: Where ``base_url`` came from, for error messages: an option or a variable name.
    url_origin: str = field(default="collector URL", repr=False)

    def __post_init__(self) -> None:
        """Reject a base URL that urllib would fail on with a misleading network error."""
        problem = url_problem(self.base_url)
        if problem is not None:
            raise CollectorConfigError(
                f"bad {self.url_origin} {self.base_url!r}: {problem}; use http://HOST:PORT or "
                f"https://HOST:PORT (e.g. {DEFAULT_COLLECTOR_URL})"
            )

    @classmethod
    def from_env(
        cls, url: Optional[str] = None, token: Optional[str] = None,
        url_option: str = "collector URL",
    ) -> CollectorClient:
        """Argument, then ``RUNCOV_COLLECTOR_URL`` / ``RUNCOV_TOKEN``, then the default.

        ``url_option`` names the argument ``url`` came from (``--collector``) in errors.
        """
        origin = url_option
        if not url:
            url = os.environ.get("RUNCOV_COLLECTOR_URL")
            origin = "RUNCOV_COLLECTOR_URL" if url else "collector URL"
        return cls(
            base_url=url or DEFAULT_COLLECTOR_URL,
            token=token or os.environ.get("RUNCOV_TOKEN") or None,
            url_origin=origin,
        )

    def get(self, path: str, params: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """GET ``path`` with ``params`` and decode the JSON answer."""
        url = self.base_url.rstrip("/") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        deadline = time.monotonic() + self.timeout
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = self._read(response, deadline, path)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "") if exc.headers else ""
                raise CollectorConfigError(
                    f"the collector at {self.base_url} answered {path} with a redirect "
                    f"(HTTP {exc.code}) to {where!r}: runcov does not follow redirects (the "
                    "query token would go with it); give the URL the collector is reached at"
                ) from exc
            message = _error_message(exc)
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                hint = ""
                if exc.code == 401:
                    hint = (
                        "; the query token is --token or RUNCOV_TOKEN"
                        + (" (none was given)" if not self.token else "")
                    )
                raise CollectorRequestError(
                    f"collector rejected {path}: {message} (HTTP {exc.code}){hint}",
                    exc.code,
                    message,
                ) from exc
            raise CollectorUnreachable(
                f"collector error on {path}: {message} (HTTP {exc.code})"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CollectorUnreachable(
                f"cannot reach the collector at {self.base_url}: {reason}"
            ) from exc
        except http.client.HTTPException as exc:
            # Something answered, but not in HTTP/1.x (the gRPC port, another protocol), or
            # the answer broke off: a collector failure, like no answer at all.
            raise CollectorUnreachable(
                f"no valid HTTP answer from {self.base_url} for {path} "
                f"({type(exc).__name__}); is this the collector's HTTP port?"
            ) from exc
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError) as exc:  # (nested too deep to decode)
            raise CollectorAnswerError(
                f"collector sent invalid JSON for {path} from {self.base_url}"
            ) from exc
        problem = _problem(decoded, _SHAPES.get(path, {}), "")
        if problem is not None:
            raise CollectorAnswerError(
                f"collector sent unexpected JSON for {path} from {self.base_url}: {problem}"
            )
        return decoded

    def _read(self, response: Any, deadline: float, path: str) -> bytes:
        """Read the body in chunks (progress can be shown for large answers), within the
        query's deadline and :data:`MAX_ANSWER_BYTES`: a server that trickles its answer, or
        sends without end, fails the query (exit 3) rather than hold a pipeline."""
        chunks: list[bytes] = []
        size = 0
        late = CollectorUnreachable(
            f"the collector at {self.base_url} did not finish answering {path} within "
            f"{self.timeout:g} s"
        )
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise late
            _shorten_timeout(response, left)
            try:
                chunk = response.read1(_CHUNK)
            except TimeoutError:
                raise late from None
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise CollectorAnswerError(
                    f"the collector at {self.base_url} sent more than "
                    f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB for {path}"
                )
            chunks.append(chunk)
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
        return b"".join(chunks)

    # -- query API -------------------------------------------------------------------------

    def services(self) -> dict[str, Any]:
        """``GET /api/v1/services``."""
        return self.get("/api/v1/services")

    def releases(self, service: str) -> dict[str, Any]:
        """``GET /api/v1/releases?service=...`` (newest first)."""
        return self.get("/api/v1/releases", {"service": service})

    def endpoints(self, sel: ReleaseSelection) -> dict[str, Any]:
        """``GET /api/v1/endpoints``."""
        return self.get("/api/v1/endpoints", sel.params())

    def coverage(
        self, sel: ReleaseSelection, detail: bool = False, path_prefix: Optional[str] = None
    ) -> dict[str, Any]:
        """``GET /api/v1/coverage``, optionally with per-line detail."""
        params = sel.params()
        if detail:
            params["detail"] = "1"
        if path_prefix:
            params["path_prefix"] = path_prefix
        return self.get("/api/v1/coverage", params)

    def file(self, sel: ReleaseSelection, path: str) -> dict[str, Any]:
        """``GET /api/v1/file``: one file with detail."""
        params = sel.params()
        params["path"] = path
        return self.get("/api/v1/file", params)

    def series(self, sel: ReleaseSelection, path: Optional[str] = None) -> dict[str, Any]:
        """``GET /api/v1/series``: hourly buckets."""
        params = sel.params()
        if path:
            params["path"] = path
        return self.get("/api/v1/series", params)

    def diff(self, a: ReleaseSelection, b: ReleaseSelection) -> dict[str, Any]:
        """``GET /api/v1/diff``: what b covers that a does not, and the reverse."""
        params: dict[str, str] = {}
        for key, value in a.params().items():
            if key in ("service", "environment", "endpoint", "since", "until"):
                params[key] = value
            else:
                params[f"a_{key}"] = value
        for key, value in b.params().items():
            if key in ("version", "role"):
                params[f"b_{key}"] = value
            elif key == "environment" and "environment" not in params:
                params["environment"] = value
        return self.get("/api/v1/diff", params)

    def agent(self, sel: ReleaseSelection) -> dict[str, Any]:
        """``GET /api/v1/agent``: the running totals of the release's agents (no window)."""
        return self.get("/api/v1/agent", sel.params())


def url_problem(url: str) -> Optional[str]:
    """Why ``url`` cannot be a collector's base URL, or None when it can."""
    if "://" not in url:
        return "no http:// or https:// in front"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # urllib's "Invalid IPv6 URL": a "[" without "]" or the reverse
        if "[" in url or "]" in url:
            return "unbalanced brackets around an IPv6 address (write it as http://[::1]:4318)"
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return f"the scheme is {parts.scheme!r}, not http or https"
    if not parts.hostname:
        return "no host"
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")[2]
        if not raw.isdigit():
            return f"the port {raw!r} is not a number"
        return f"the port {raw} is out of range (1-65535)"
    if port == 0:
        return "the port 0 is out of range (1-65535)"
    return None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The ``error`` field of an error answer, or the HTTP reason."""
    try:
        body = exc.read()
        decoded = json.loads(body)
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
            return decoded["error"]
    except (ValueError, OSError):
        pass
    return str(exc.reason)


# -- the shape of the answers ----------------------------------------------------------------
#
# What the reports read from each answer of docs/query-api.md, checked once, here, so that an
# answer of another shape (another server on the port, another version of the API) is a
# collector failure naming what was unexpected, not a KeyError deep in a report. A shape is a
# dict (an object: its keys, those ending in "?" optional), a one-item list (a list of items of
# that shape), a _Row, a _Map, a JSON type (str, bool, None, or _NUMBER) or a tuple of those
# (any of them). Values the reports only print are not checked: they pass on as they came.


class _Row:
    """A list whose first items have these types, e.g. a line ``[line, hits, trace_id]``."""

    def __init__(self, *types: Any, exact: bool = False) -> None:
        self.types = types
        self.exact = exact  # exactly that many items (an arc unpacked as ``a, b``)


class _Map:
    """An object whose values all have one shape (counts by reason)."""

    def __init__(self, value: Any) -> None:
        self.value = value


_NUMBER = (int, float)
_OPT_NUMBER = (int, float, None)
_OPT_STR = (str, None)
_RELEASE = {"service": str, "version?": _OPT_STR, "environment?": _OPT_STR, "role?": _OPT_STR}
_ARC = _Row(int, int, exact=True)
_COUNTS = {
    f"{key}?": _OPT_NUMBER
    for key in ("lines_covered", "lines_total", "arcs_covered", "arcs_total", "branches_covered",
                "branches_total", "line_percent", "branch_percent", "requests")
}
_FILE = {
    "path": str, "sha?": _OPT_STR, **_COUNTS,
    "lines?": [_Row(int)], "arcs?": [_Row(int, int)], "executable_lines?": [int],
    "possible_arcs?": [_ARC], "functions?": [{"name": str, "start": int, "end": int}],
}
_DROPS = _Map(_NUMBER)
_SHAPES: dict[str, Any] = {
    "/api/v1/services": {"services": [{"service": str, "last_seen?": _OPT_STR}]},
    "/api/v1/releases": {"releases": [{
        "version?": _OPT_STR, "environment?": _OPT_STR, "role?": _OPT_STR,
        "last_seen?": _OPT_STR, "line_percent?": _OPT_NUMBER, "branch_percent?": _OPT_NUMBER,
    }]},
    "/api/v1/endpoints": {"release": _RELEASE, "endpoints": [{"endpoint": str}]},
    "/api/v1/coverage": {"release": _RELEASE, "totals?": {"files?": _OPT_NUMBER, **_COUNTS},
                         "files": [_FILE]},
    "/api/v1/file": {"release": _RELEASE, **_FILE},
    "/api/v1/series": {"release": _RELEASE, "series": [{}]},
    "/api/v1/diff": {
        "a": _RELEASE, "b": _RELEASE,
        "files": [{
            "path": str, "newly_covered_lines?": [int], "no_longer_covered_lines?": [int],
            "newly_covered_arcs?": [_ARC], "no_longer_covered_arcs?": [_ARC],
        }],
        "endpoints": [{"endpoint": str, "only_in_a?": bool, "only_in_b?": bool}],
    },
    "/api/v1/agent": {
        "release": _RELEASE, "processes": _NUMBER, "last_report?": _OPT_STR,
        "requests_seen": _NUMBER, "requests_sampled": _NUMBER, "requests_dropped": _NUMBER,
        "sampled_by_mode?": _DROPS, "dropped_by_reason?": _DROPS,
        "requests_expired?": _OPT_NUMBER, "overhead_seconds?": _OPT_NUMBER,
        "overhead_per_sampled_request_seconds?": _OPT_NUMBER,
        "overhead_per_seen_request_seconds?": _OPT_NUMBER,
        "endpoints": [{
            "endpoint": str, "dropped_by_reason?": _DROPS,
            "sample_rate?": (None, {"rate": _OPT_NUMBER, "min?": _OPT_NUMBER,
                                    "max?": _OPT_NUMBER}),
        }],
    },
}


def _problem(value: Any, shape: Any, where: str) -> Optional[str]:
    """What in ``value`` does not have ``shape`` (the first thing found), or None."""
    alternatives = shape if isinstance(shape, tuple) else (shape,)
    for alt in alternatives:
        if isinstance(alt, dict) and isinstance(value, dict):
            for key, sub in alt.items():
                name = key[:-1] if key.endswith("?") else key
                if name not in value:
                    if key.endswith("?"):
                        continue
                    return f"{_quote(_at(where, name))} is missing"
                problem = _problem(value[name], sub, _at(where, name))
                if problem is not None:
                    return problem
            return None
        if isinstance(alt, list) and isinstance(value, list):
            if _all_int_rows(value, alt[0]):
                return None
            for i, item in enumerate(value):
                problem = _problem(item, alt[0], f"{where}[{i}]")
                if problem is not None:
                    return problem
            return None
        if isinstance(alt, _Map) and isinstance(value, dict):
            for key, item in value.items():
                problem = _problem(item, alt.value, _at(where, str(key)))
                if problem is not None:
                    return problem
            return None
        if isinstance(alt, _Row) and isinstance(value, list):
            if len(value) < len(alt.types) or (alt.exact and len(value) > len(alt.types)):
                return f"{_quote(where)} has {len(value)} items, not {len(alt.types)}"
            for i, item_type in enumerate(alt.types):
                problem = _problem(value[i], item_type, f"{where}[{i}]")
                if problem is not None:
                    return problem
            return None
        if alt is None and value is None:
            return None
        if isinstance(alt, type) and isinstance(value, alt) and (
            alt is bool or not isinstance(value, bool)
        ):
            return None
    kinds = list(dict.fromkeys(_kind(alt) for alt in alternatives))
    if "a number" in kinds and "a whole number" in kinds:
        kinds.remove("a whole number")
    expected = " or ".join(kinds)
    return f"{_quote(where)} is {_describe(value)}, not {expected}"


def _all_int_rows(items: list[Any], shape: Any) -> bool:
    """The quick check of the bulk of a detail answer: a list of ints or of rows of ints.

    False means "look closer" (also for other shapes), to find and word the problem.
    """
    if shape is int:
        return all(type(x) is int for x in items)
    if not isinstance(shape, _Row) or any(t is not int for t in shape.types):
        return False
    n = len(shape.types)
    return all(
        type(row) is list and (len(row) == n if shape.exact else len(row) >= n)
        and all(type(row[k]) is int for k in range(n))
        for row in items
    )


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _quote(where: str) -> str:
    return f'"{where}"' if where else "the answer"


def _kind(shape: Any) -> str:
    """The JSON kind a shape expects, for messages."""
    if isinstance(shape, (dict, _Map)):
        return "an object"
    if isinstance(shape, (list, _Row)):
        return "a list"
    if shape is None:
        return "null"
    return {str: "a string", bool: "a boolean", int: "a whole number"}.get(shape, "a number")


def _describe(value: Any) -> str:
    """A value's JSON kind, with the value when it is short: ``a number (5)``."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, bool):
        return f"a boolean ({text})"
    if isinstance(value, str):
        return f"a string ({text})"
    return f"a number ({text})"
