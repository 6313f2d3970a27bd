"""Wires the collector together: store, ingest pipeline, HTTP app, gRPC receiver, retention."""

from __future__ import annotations

import errno
import functools
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterable
from urllib.parse import unquote

import uvicorn
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from runcov_collector import api, limits, receiver_http
from runcov_collector.auth import TokenCheck
from runcov_collector.config import ENV_PREFIX, Config, ListenError
from runcov_collector.connections import bounded_protocol
from runcov_collector.ingest import Ingestor
from runcov_collector.metrics import CONTENT_TYPE, CollectorMetrics
from runcov_collector.model import Selection, Store
from runcov_collector.receiver_grpc import GrpcReceiver, host_port
from runcov_collector.store.errors import SchemaChanged, is_unavailable, unavailable_reason

log = logging.getLogger("runcov_collector")

_RELEASE_LABELS = ("service", "version", "environment", "role")
GAUGES_WAIT_SECONDS = 1.0
"""How long a ``/metrics`` scrape waits for the per-release series to be read from the store
before it answers with those of the last read (``_ReleaseGauges``)."""
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def open_configured_store(config: Config) -> Store:
    """Open the store named by ``config.store_url`` (the store package's ``open_store``), its
    requests bounded by ``config.store_timeout_seconds`` and the schema migration run now by
    ``config.migration_timeout_seconds`` (0: unbounded).

    A migration past its limit raises ``MigrationTimeout`` naming the store (password masked)
    and the setting, which ``runcov-collector serve`` prints before exiting 1.
    """
    from runcov_collector.store import MigrationTimeout, open_store

    try:
        return open_store(
            config.store_url,
            timeout=config.store_timeout_seconds,
            migration_timeout=config.migration_timeout_seconds or None,
        )
    except MigrationTimeout as exc:
        raise MigrationTimeout(
            exc.limit,
            exc.reason,
            store=redact_url(config.store_url),
            setting=f"--migration-timeout, {ENV_PREFIX}MIGRATION_TIMEOUT",
        ) from exc


# A query parameter whose name holds one of these carries a secret: libpq's password and
# sslpassword, and whatever a later libpq adds (oauth_client_secret...).
_SECRET_NAMES = ("password", "passwd", "secret", "token")


def _is_secret(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(word in lowered for word in _SECRET_NAMES)


def _split_url(url: str) -> tuple[str, str | None, str, str | None] | None:
    """``scheme://``, the user information before ``@`` (None without), what follows up to
    the query, and the query (None without); None for a plain path.

    Parsed by hand: ``urlsplit`` raises on some URLs that libpq then refuses with a message,
    and a URL that cannot be used must still be reported without its password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    slash = rest.find("/")
    at = (rest if slash < 0 else rest[:slash]).rfind("@")
    userinfo = rest[:at] if at >= 0 else None
    main, question, query = rest[at + 1 :].partition("?")
    return scheme + sep, userinfo, main, query if question else None


def _query_parameters(query: str | None) -> list[tuple[str, str, str]]:
    """(name, "=", value) of each parameter of ``query``, in order."""
    return [parameter.partition("=") for parameter in query.split("&")] if query else []


def _url_secrets(url: str) -> list[str]:
    """The secrets written in ``url``: the password of ``user:password@`` and the value of
    each password-like query parameter, as written there."""
    parts = _split_url(url)
    if parts is None:
        return []
    _, userinfo, _, query = parts
    found = [userinfo.split(":", 1)[1]] if userinfo and ":" in userinfo else []
    found += [value for name, _, value in _query_parameters(query) if _is_secret(name)]
    return [secret for secret in found if secret]


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***`` (for logs): the one of
    ``user:password@`` and the value of each password-like query parameter (``password``,
    ``sslpassword``...), which libpq accepts as well."""
    parts = _split_url(url)
    if parts is None:
        return url
    prefix, userinfo, main, query = parts
    if userinfo is not None and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    if query is not None:
        query = "&".join(
            f"{name}=***" if equals and value and _is_secret(name) else f"{name}{equals}{value}"
            for name, equals, value in _query_parameters(query)
        )
    user = "" if userinfo is None else userinfo + "@"
    return f"{prefix}{user}{main}" + ("" if query is None else f"?{query}")


def redact_secrets(text: str, url: str) -> str:
    """``text`` (an error message) with the secrets of the store URL ``url`` masked: the URL
    itself as ``redact_url`` prints it, then each password, as written in the URL and
    decoded (libpq quotes the part of a URL it cannot parse, password included)."""
    text = text.replace(url, redact_url(url))
    for secret in _url_secrets(url):
        for form in {secret, unquote(secret)}:
            text = text.replace(form, "***")
    return text


class AuthMiddleware:
    """Checks bearer tokens before any route runs: ingest token for ``/v1/*``, query token for
    ``/api/*`` and the dashboard; health and metrics endpoints stay open."""

    def __init__(self, app: ASGIApp, config: Config, metrics: CollectorMetrics) -> None:
        self.app = app
        # A validated config has both tokens, or none with no_auth: never one to ignore.
        self.ingest = TokenCheck(config.ingest_token or None)
        self.query = TokenCheck(config.query_token or None)
        self.browser = TokenCheck(config.query_token or None, allow_basic=True)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        response: Response | None = None
        if path.startswith("/v1/"):
            if not self.ingest.allows(authorization):
                signal_name = path[len("/v1/") :] or "unknown"
                if signal_name not in ("traces", "metrics"):
                    signal_name = "unknown"
                self.metrics.requests.inc(
                    transport="http", signal=signal_name, result="unauthorized"
                )
                response = receiver_http.status_response(
                    401,
                    code_pb2.UNAUTHENTICATED,
                    "missing or invalid bearer token",
                    receiver_http.wants_json(headers),
                    {"WWW-Authenticate": "Bearer"},
                )
        elif path.startswith("/api/"):
            if not self.query.allows(authorization):
                response = api.error(401, "missing or invalid bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
        elif path not in OPEN_PATHS and not self.browser.allows(authorization):
            response = Response(
                "authentication required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Basic realm="runcov", charset="UTF-8"'},
            )
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _ReleaseGauges:
    """Coverage ratio per release for ``/metrics``, re-read from the store at most every
    ``ttl`` seconds (scrapes must not turn into a query storm).

    The store is read in a thread of its own, and a scrape waits for it at most ``wait``
    seconds: past that (the store is slow, or does not answer) it serves the rows of the last
    read that succeeded, so that the collector's own metrics (ingest counters above all) are
    scraped during a store outage too. ``failures`` counts the reads that failed and ``age``
    tells how old the rows served are.

    Ratios are computed from the covered and total counts, not from the API's percentages
    (rounded to 0.1): covered lines over statements of the files whose denominators are known,
    as ``line_percent`` counts them, and covered over possible branch exits. A release without
    denominators has no ratio, and one measured by census only (its covered branches are
    null) no branch ratio: their series are left out rather than reading 0.
    """

    def __init__(
        self,
        store: Store,
        ttl: float,
        wait: float = GAUGES_WAIT_SECONDS,
        max_releases: int = limits.METRICS_MAX_RELEASES,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.wait = wait
        self.max_releases = max_releases
        self.failures = 0
        """Reads of the store that failed."""
        self.omitted = 0
        """Releases of the last read left without series (past ``max_releases``)."""
        self._at = -float("inf")  # when the rows served were read
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reading: threading.Event | None = None  # set when the running read ends
        self._read_started = 0.0

    def _read(self) -> tuple[list[dict[str, Any]], int]:
        """The rows of the ``max_releases`` releases seen last, and how many were left out.

        Every release an ingest client sends stays in the store, so without a cap a client
        inventing services, or a version per process, would grow every scrape (and this read,
        a coverage query per release) without bound.
        """
        releases = [
            (service.get("service"), release)
            for service in self.store.services().get("services", [])
            for release in self.store.releases(service.get("service")).get("releases", [])
        ]
        # Latest span time first (ISO strings of one format sort as times); releases that
        # sent only agent metrics have none and come last.
        releases.sort(key=lambda item: item[1].get("last_seen") or "", reverse=True)
        rows: list[dict[str, Any]] = []
        for name, release in releases[: self.max_releases]:
            sel = Selection(name, release["version"], release["environment"], release["role"])
            answer = self.store.coverage(sel)
            known = [f for f in answer.get("files", []) if f["lines_total"] > 0]
            sums = answer.get("totals", {})
            rows.append(
                {
                    "labels": {k: str(release.get(k, "")) for k in _RELEASE_LABELS},
                    "agent": _agent_totals(release),
                    "line": _ratio(
                        sum(f["lines_covered"] for f in known),
                        sum(f["lines_total"] for f in known),
                    ),
                    "branch": _ratio(
                        sums.get("branches_covered"), sums.get("branches_total", 0)
                    ),
                }
            )
        return rows, len(releases) - len(rows)

    def _refresh(self, done: threading.Event) -> None:
        """Read the store (in the reading thread); keep the rows, or count the failure."""
        rows: list[dict[str, Any]] | None = None
        omitted = 0
        try:
            rows, omitted = self._read()
        except SchemaChanged as exc:
            log.warning("cannot read releases for /metrics: %s", exc)
        except Exception as exc:  # a scrape must answer even when the store does not
            if is_unavailable(exc):
                reason = unavailable_reason(exc)
                log.warning("cannot read releases for /metrics: store unavailable: %s", reason)
            else:
                log.warning("cannot read releases for /metrics", exc_info=True)
        with self._lock:
            if rows is None:
                self.failures += 1
            else:
                self._rows = rows
                self.omitted = omitted
                self._at = time.monotonic()
            self._reading = None
        done.set()

    def refresh(self) -> None:
        """Start a read when the rows are older than ``ttl`` and none is running, and wait for
        the running read until ``wait`` seconds after it started. Called once per scrape,
        before its series are rendered: the several series of one scrape share one read and
        one wait, also when that read fails at once."""
        with self._lock:
            done = self._reading
            if done is None and time.monotonic() - self._at >= self.ttl:
                done = self._reading = threading.Event()
                self._read_started = time.monotonic()
                threading.Thread(
                    target=self._refresh, args=(done,), name="runcov-release-gauges", daemon=True
                ).start()
            started = self._read_started
        if done is not None:
            done.wait(max(0.0, started + self.wait - time.monotonic()))

    def rows(self) -> list[dict[str, Any]]:
        """The rows of the last read that succeeded."""
        with self._lock:
            return list(self._rows)

    def age(self) -> Iterable[tuple[dict[str, str], float]]:
        """Seconds since the rows served were read; nothing before a read succeeded."""
        with self._lock:
            at = self._at
        if at != -float("inf"):
            yield {}, time.monotonic() - at

    def ratio(self, key: str) -> Iterable[tuple[dict[str, str], float]]:
        """(labels, ratio) of each release with a ``key`` ("line" or "branch") ratio."""
        for row in self.rows():
            if row[key] is not None:
                yield dict(row["labels"]), row[key]

    def agent(self, key: str) -> Iterable[tuple[dict[str, str], float]]:
        """(labels, total) of an agent counter (``_agent_totals``) of each release whose agents
        reported any; drops have one series per reason."""
        for row in self.rows():
            totals = row["agent"]
            if totals is None:
                continue
            if key == "dropped":
                for reason, count in sorted(totals["dropped"].items()):
                    yield {**row["labels"], "reason": reason}, float(count)
            else:
                yield dict(row["labels"]), float(totals[key])


def _agent_totals(release: dict[str, Any]) -> dict[str, Any] | None:
    """The agent counters of a release as ``releases`` lists them; None when all are 0."""
    totals = {
        "seen": release.get("requests_seen", 0),
        "sampled": release.get("requests_sampled", 0),
        "dropped": dict(release.get("requests_dropped_by_reason") or {}),
        "overhead": release.get("overhead_seconds", 0.0),
    }
    if not (totals["seen"] or totals["sampled"] or totals["overhead"]) and not any(
        totals["dropped"].values()
    ):
        return None
    return totals


def _ratio(covered: int | None, total: int) -> float | None:
    """covered / total; None without a total, or when covered is unknown (null: a release
    measured by census only has no arcs, so its branch coverage is unknown, not 0)."""
    return None if covered is None or total <= 0 else covered / total


def _probe_bind(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound, found by binding a plain socket there (gRPC's own
    bind error does not say); None when it can be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc
    return None


def listen_error(listener: str, host: str, port: int, exc: BaseException) -> ListenError:
    """A failure to bind the ``listener`` ("HTTP" or "gRPC") as a message that names it, the
    address, the cause, and the option (and environment variable) to change."""
    option = "http_port" if listener == "HTTP" else "grpc_port"
    host_option = f"--host ({ENV_PREFIX}HOST)"
    port_option = f"--{option.replace('_', '-')} ({ENV_PREFIX}{option.upper()})"
    where = f"cannot listen for {listener} on {host_port(host, port)}"
    if isinstance(exc, socket.gaierror):
        return ListenError(
            f"{where}: host {host!r} of {host_option} is neither an IP address nor a name that "
            f"resolves ({exc.strerror or exc})"
        )
    code = exc.errno if isinstance(exc, OSError) else None
    if code == errno.EADDRINUSE:
        return ListenError(
            f"{where}: the address is already in use (another process, or another collector, "
            f"listens on port {port}); choose another {port_option}"
        )
    if code == errno.EADDRNOTAVAIL:
        return ListenError(
            f"{where}: {host!r} is not an address of this machine; check {host_option} "
            "(0.0.0.0 listens on all of them)"
        )
    if code == errno.EACCES:
        return ListenError(
            f"{where}: permission denied (ports below 1024 need privileges); choose another "
            f"{port_option}"
        )
    return ListenError(f"{where} ({host_option}, {port_option}): {exc}")


def _dashboard_routes(store: Store, config: Config) -> list[BaseRoute]:
    try:
        from runcov_collector import dashboard
    except ImportError as exc:
        if exc.name != "runcov_collector.dashboard":
            log.warning("dashboard not available: %s", exc)
        return []
    make = getattr(dashboard, "routes", None)
    if make is None:
        return []
    return list(make(store, config))


class Collector:
    """All parts of one collector process. ``start()`` binds and serves in background threads
    (ports 0 → the actual ports land in ``http_port``/``grpc_port``); ``stop()`` shuts down
    gracefully and closes the store."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        config.validate()
        self.config = config
        self.close_on_shutdown = False
        """Set by ``create_app``: the ASGI lifespan's shutdown closes the store and thread pool."""
        self.owns_store = store is None
        self.store: Store = store if store is not None else open_configured_store(config)
        self.metrics = CollectorMetrics()
        self.ingestor = Ingestor(self.store, self.metrics, config.max_inflight_ingests)
        self.executor = ThreadPoolExecutor(
            max_workers=config.store_threads, thread_name_prefix="runcov-store"
        )
        self._gauges = _ReleaseGauges(
            self.store, config.metrics_cache_seconds, max_releases=config.metrics_max_releases
        )
        self.metrics.add_gauge(
            "runcov_collector_ingests_in_flight",
            "Store ingests admitted and not finished.",
            lambda: [({}, float(self.ingestor.inflight))],
        )
        self.metrics.add_gauge(
            "runcov_collector_release_line_coverage_ratio",
            "Covered/executable lines per release (cumulative), from the store.",
            lambda: self._gauges.ratio("line"),
        )
        self.metrics.add_gauge(
            "runcov_collector_release_branch_coverage_ratio",
            "Covered/possible branch exits per release (cumulative), from the store.",
            lambda: self._gauges.ratio("branch"),
        )
        for key, name, help_text in (
            ("seen", "requests_seen", "Requests of selected endpoints the agents saw"),
            ("sampled", "requests_sampled", "Requests the agents measured"),
            ("dropped", "requests_dropped", "Sampled requests whose coverage was lost, by reason"),
            ("overhead", "overhead_seconds", "CPU time the agents spent"),
        ):
            self.metrics.add_counter(
                f"runcov_collector_release_agent_{name}",
                f"{help_text} per release (the agents' cumulative counters), from the store.",
                functools.partial(self._gauges.agent, key),
            )
        self.metrics.add_gauge(
            "runcov_collector_release_series_age_seconds",
            "Seconds since the per-release series were read from the store: a scrape serves "
            "the last read that succeeded when the store does not answer within a second.",
            self._gauges.age,
        )
        self.metrics.add_gauge(
            "runcov_collector_release_series_omitted",
            "Releases left without per-release series: past the metrics_max_releases seen last "
            "(--metrics-max-releases).",
            lambda: [({}, float(self._gauges.omitted))],
        )
        self.metrics.add_counter(
            "runcov_collector_release_series_read_failures",
            "Reads of the per-release series from the store that failed (store unavailable).",
            lambda: [({}, float(self._gauges.failures))],
        )
        self.app = self._build_app()
        self.grpc: GrpcReceiver | None = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._server: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._retention_stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    # -- HTTP application ----------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes: list[BaseRoute] = [
            *receiver_http.routes(),
            *api.routes(),
            Route("/healthz", self._healthz),
            Route("/readyz", self._readyz),
            Route("/metrics", self._metrics),
            *_dashboard_routes(self.store, self.config),
        ]

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            if self.close_on_shutdown:
                await run_in_threadpool(self.close)

        app = Starlette(
            routes=routes, lifespan=lifespan, exception_handlers={HTTPException: api.http_error}
        )
        app.state.config = self.config
        app.state.store = self.store
        app.state.ingestor = self.ingestor
        app.state.metrics = self.metrics
        app.state.executor = self.executor
        app.state.collector = self
        app.add_middleware(AuthMiddleware, config=self.config, metrics=self.metrics)
        return app

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        """200 when the store answers; 503 when it does not, or when a newer collector migrated
        its schema (``ping`` raises ``SchemaChanged``, whose message says to upgrade this
        collector): the replica must not take traffic any more. ``/healthz`` stays 200 then:
        restarting this collector would not help, as it refuses to open a newer schema.

        A store that can tell why it is not ready (``check_ready``) has the reason in
        ``error`` (``store unavailable: <reason>``, as the query API says it)."""
        check_ready = getattr(self.store, "check_ready", None)
        try:
            if callable(check_ready):
                await run_in_threadpool(check_ready)
                ready = True
            else:
                ready = await run_in_threadpool(self.store.ping)
        except SchemaChanged as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        except Exception as exc:
            error = f"store unavailable: {unavailable_reason(exc)}"
            return JSONResponse({"status": "unavailable", "error": error}, status_code=503)
        if not ready:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    def render_metrics(self) -> str:
        """The ``/metrics`` text: the per-release series read from the store once (or the
        last read served, see ``_ReleaseGauges``), then every metric rendered."""
        self._gauges.refresh()
        return self.metrics.render()

    async def _metrics(self, request: Request) -> Response:
        text = await run_in_threadpool(self.render_metrics)
        return Response(text, media_type=CONTENT_TYPE)

    # -- lifecycle -----------------------------------------------------------------------------

    def _bind_http(self) -> socket.socket:
        """The HTTP listening socket; ``ListenError`` when it cannot be bound."""
        host, port = self.config.host, self.config.http_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise listen_error("HTTP", host, port, exc) from exc
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    def start(self, timeout: float = 30.0) -> Collector:
        """Bind both ports, start serving in background threads; returns ``self``.

        A port that cannot be bound raises ``ListenError`` naming the listener and address.
        """
        sock = self._bind_http()
        self.http_port = sock.getsockname()[1]
        if self.config.grpc_port >= 0:
            self.grpc = GrpcReceiver(
                self.ingestor,
                self.metrics,
                TokenCheck(self.config.ingest_token or None),
                self.config.max_body_bytes,
                self.config.retry_after_seconds,
                header_timeout_seconds=self.config.header_timeout_seconds,
                max_connections=self.config.max_connections,
            )
            host, port = self.config.host, self.config.grpc_port
            # Probed first: gRPC's core logs its own bind failure to stderr before it raises.
            taken = _probe_bind(host, port) if port else None
            if taken is not None:
                sock.close()
                raise listen_error("gRPC", host, port, taken) from taken
            try:
                self.grpc_port = self.grpc.start(host, port)
            except (OSError, RuntimeError) as exc:  # grpc says "Failed to bind to address"
                sock.close()
                raise listen_error("gRPC", host, port, _probe_bind(host, port) or exc) from exc
            except Exception:
                sock.close()
                raise
        server_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            http=bounded_protocol(
                self.config.header_timeout_seconds,
                self.config.max_connections,
                on_timeout=self.metrics.header_timeouts.inc,
                on_refused=self.metrics.connections_refused.inc,
            ),
        )
        self._server = uvicorn.Server(server_config)
        self._http_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="runcov-http", daemon=True
        )
        self._http_thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        if self.config.retention_hours > 0:
            self._retention_thread = threading.Thread(
                target=self._retention_loop, name="runcov-retention", daemon=True
            )
            self._retention_thread.start()
        return self

    def expire_once(self) -> int:
        """Expire hourly data older than the retention period now; returns rows removed."""
        cutoff = time.time() - self.config.retention_hours * 3600
        # Counted batch by batch: a sweep that fails part-way still counts what it deleted.
        return int(self.store.expire(cutoff, on_batch=self.metrics.expired.inc))

    def _retention_loop(self) -> None:
        """Sweep every ``retention_interval_seconds`` until stopped.

        A sweep runs in batches each bounded by the store timeout (``SqlStore.expire``), so a
        database that stops answering fails it within about that time: it is logged with the
        reason and counted (``runcov_collector_retention_failures_total``), and the next
        interval's sweep goes on from where it stopped.
        """
        interval = self.config.retention_interval_seconds
        while True:
            try:
                removed = self.expire_once()
                if removed:
                    log.info("retention: expired %d rows", removed)
            except SchemaChanged as exc:
                log.warning("retention job skipped: %s", exc)
            except Exception as exc:
                if self._retention_stop.is_set():  # the store closed under a sweep at shutdown
                    return
                self.metrics.retention_failures.inc()
                if is_unavailable(exc):
                    log.warning(
                        "retention sweep failed, retried in %g s: store unavailable: %s",
                        interval,
                        unavailable_reason(exc),
                    )
                else:
                    log.warning("retention sweep failed, retried in %g s", interval, exc_info=True)
            if self._retention_stop.wait(interval):
                return

    def stop(self, grace: float = 5.0) -> None:
        """Stop receiving, let in-flight requests finish, then close the store."""
        self._retention_stop.set()
        if self._retention_thread is not None:
            self._retention_thread.join(grace)
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self._server is not None:
            self._server.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(grace + 10)
        self.close()

    def close(self) -> None:
        """Release the thread pool and (if opened here) the store. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.executor.shutdown(wait=True)
        if self.owns_store:
            self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def listening(self) -> str:
        """One line saying where this collector listens (printed by ``serve``)."""
        host = self.config.host
        grpc_part = f"grpc={host_port(host, self.grpc_port)}" if self.grpc_port else "grpc=off"
        return (
            f"runcov-collector listening http={host_port(host, self.http_port)} {grpc_part} "
            f"store={redact_url(self.config.store_url)}"
        )


def create_app(config: Config, store: Store | None = None) -> Starlette:
    """The collector's HTTP application (OTLP/HTTP, query API, metrics, dashboard).

    gRPC and the retention job are not part of it; use ``serve``/``Collector`` for those. The
    app's lifespan shutdown closes the thread pool and (if opened here) the store.
    """
    collector = Collector(config, store)
    collector.close_on_shutdown = True
    return collector.app


def serve(
    config: Config,
    store: Store | None = None,
    on_ready: Callable[[Collector], None] | None = None,
) -> None:
    """Run a collector until SIGTERM or SIGINT, then shut down gracefully (blocking)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        log.info("received signal %d, shutting down", signum)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
    collector = Collector(config, store)
    try:
        collector.start()
        if on_ready is not None:
            on_ready(collector)
        while not stop.wait(0.5):
            thread = collector._http_thread
            if thread is not None and not thread.is_alive():
                log.error("the HTTP server stopped unexpectedly")
                break
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
