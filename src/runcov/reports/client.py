"""HTTP client for the collector's JSON query API (standard library only)."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:4318"
_DEFAULT_TIMEOUT = 60.0
_CHUNK = 64 * 1024


class CollectorError(Exception):
    """The collector answered with an error, or could not be reached."""


class CollectorUnreachable(CollectorError):
    """No HTTP answer at all: connection refused, DNS failure, timeout, server error."""


class CollectorConfigError(CollectorError):
    """The collector cannot be asked at all as configured (a URL without http://): exit code 2."""


class CollectorRequestError(CollectorError):
    """The collector rejected the request (400, 401, 403, 404): a usage or configuration error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


@dataclass
class CollectorClient:
    """Talks to one collector; every method returns the JSON documented in docs/query-api.md."""

    base_url: str = DEFAULT_COLLECTOR_URL
    token: Optional[str] = None
    timeout: float = _DEFAULT_TIMEOUT
    on_bytes: Optional[Callable[[int], None]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """Reject a base URL that urllib would fail on with a misleading network error."""
        parts = urllib.parse.urlsplit(self.base_url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise CollectorConfigError(
                f"bad collector URL {self.base_url!r}: use http://HOST:PORT or https://HOST:PORT "
                f"(e.g. {DEFAULT_COLLECTOR_URL})"
            )

    @classmethod
    def from_env(cls, url: Optional[str] = None, token: Optional[str] = None) -> CollectorClient:
        """Argument, then ``RUNCOV_COLLECTOR_URL`` / ``RUNCOV_TOKEN``, then the default."""
        return cls(
            base_url=url or os.environ.get("RUNCOV_COLLECTOR_URL") or DEFAULT_COLLECTOR_URL,
            token=token or os.environ.get("RUNCOV_TOKEN") or None,
        )

    def get(self, path: str, params: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """GET ``path`` with ``params`` and decode the JSON answer."""
        url = self.base_url.rstrip("/") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = self._read(response)
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise CollectorRequestError(
                    f"collector rejected {path}: {message} (HTTP {exc.code})", exc.code
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
        except ValueError as exc:
            raise CollectorUnreachable(f"collector sent invalid JSON for {path}") from exc
        if not isinstance(decoded, dict):
            raise CollectorUnreachable(f"collector sent unexpected JSON for {path}")
        return decoded

    def _read(self, response: Any) -> bytes:
        """Read the body in chunks so that progress can be shown for large answers."""
        chunks: list[bytes] = []
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
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
