"""Turns measured requests into ``runcov.coverage``/``runcov.static`` spans and sends them.

runcov's spans never pass through the application's tracer provider, so its span limits,
sampler and processors never touch them: the exporter encodes them to OTLP itself
(:mod:`runcov.export.spans`) and batches and sends them itself over HTTP or gRPC
(:mod:`runcov.export.transport`), as chosen by the configuration. :meth:`CoverageExporter.submit`
only appends to a bounded queue; a daemon worker does everything else — relativizing and
redacting paths, static analysis, encoding, batching, sending — so a request never waits for
runcov and an OTLP endpoint that is down or hangs costs requests nothing: when a queue is full
the record is dropped and counted. Each send returns within the OTLP timeout whatever the
receiver does, and a receiver that hangs costs one timeout per round of sends, not one per
request of it (:meth:`CoverageExporter._send_outbox`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from runcov._fork import in_forked_child
from runcov.config import Config, shown_endpoint
from runcov.export import wire
from runcov.export.spans import SpanEncoder
from runcov.export.transport import Transport, make_transport
from runcov.redaction import Redactor
from runcov.resource import with_new_instance
from runcov.selectors import WEBSOCKET
from runcov.static import StaticAnalyzer, present
from runcov.tracing._base import CoverageData

__all__ = ["MAX_EXPORT_BYTES", "SCOPE_NAME", "CoverageExporter", "RequestRecord"]

log = logging.getLogger("runcov.export")

#: Instrumentation scope of every runcov span.
SCOPE_NAME = "runcov"
#: Upper bound of payload bytes in one OTLP export request (spans are split across requests).
MAX_EXPORT_BYTES = 4 * 1024 * 1024
_NON_HTTP_KINDS = ("job", "consumer")


def _agent_version() -> str:
    try:
        from runcov import __version__

        return str(__version__)
    except Exception:
        return ""


#: The export worker handles queued records at least this often (seconds)... (records handled
#: in batches cost less each: measured 295 µs per record every 0.2 s, 240-250 µs every 1 s, on the
#: Flask shop at 1 %; the spans wait for OpenTelemetry's 5 s batch interval anyway)
WAKE_INTERVAL = 1.0
#: ...and at once when this many are waiting.
WAKE_BATCH = 64
#: The worker handles records in slices of about this much time (seconds), each followed by a
#: short pause that lets the application's threads (an event loop above all) take the GIL at
#: once, instead of waiting out the interpreter's switch interval (5 ms) behind a whole round.
WORKER_SLICE = 0.001
WORKER_PAUSE = 50e-6
#: Seconds between two warnings that exports failed.
EXPORT_WARNING_INTERVAL = 60.0
#: Encodings kept for requests that repeat an earlier request's lines and arcs on the same
#: endpoint (most requests of steady traffic do): a repeat skips building the per-file sets,
#: the novelty bookkeeping and the encoding, about two thirds of the worker's cost per record.
#: (The Flask shop's traffic mix makes ~280 distinct records on its endpoints in 10 s at 100 %:
#: 97 % of records are repeats with room for 2048 encodings, 92 % with 128. A kept record takes
#: ~15 kB, mostly its key, so the byte bound below is what holds at 512.)
REPEAT_CACHE_SIZE = 512
#: ...and at most this many bytes for them, counted roughly (the records' fingerprints and the
#: encoded payloads); larger requests are simply not kept.
REPEAT_CACHE_BYTES = 8 * 1024 * 1024

@dataclass
class RequestRecord:
    """One measured request, as handed to :meth:`CoverageExporter.submit`."""

    trace_id: int
    span_id: int
    endpoint: str
    method: Optional[str]
    route: Optional[str]
    status_class: str
    mode: str
    data: CoverageData
    start_ns: int
    end_ns: int
    #: Called on the exporter's thread before the record is encoded (the agent's per-request
    #: accounting: metrics, novelty); returning False skips the record (nothing to send).
    before: Optional[Callable[[RequestRecord], bool]] = None
    #: Set by the exporter before ``before`` runs when the record's lines and arcs equal those
    #: of an earlier record of the same endpoint (so they hold nothing new for it).
    repeat: bool = False
    #: Attributes that this request's coverage spans carry besides the usual ones (the agent's
    #: ``runcov.scope.expired`` on a request measured only until its scope's maximum age).
    attributes: Optional[dict[str, Any]] = None


@dataclass
class _Repeat:
    """The encoding of a record, kept for the records that repeat it."""

    payloads: list[str]
    #: (absolute path, sha) of each file the payloads describe, as when encoded.
    shas: tuple[tuple[str, str], ...]
    #: (relative path, sha) of the files whose static facts the collector needs.
    statics: tuple[tuple[str, str], ...]
    #: Bytes it and its key hold, roughly.
    size: int = 0


class _Flush:
    """A flush request travelling through the worker."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


#: Ids of runcov's spans (and of the denominators' own traces), made as the SDK makes them.
_IDS = RandomIdGenerator()
#: Transports of parent processes, kept referenced in a forked child (see _after_fork_in_child).
_INHERITED_TRANSPORTS: list[Transport] = []
#: Spans in one export request at most (and MAX_EXPORT_BYTES of them).
MAX_EXPORT_SPANS = 512
#: OpenTelemetry's batch interval, in milliseconds, when ``OTEL_BSP_SCHEDULE_DELAY`` is unset.
DEFAULT_SCHEDULE_DELAY_MS = 5000


def _schedule_delay() -> float:
    """Seconds between sends: ``OTEL_BSP_SCHEDULE_DELAY`` (milliseconds), as the SDK reads it."""
    text = os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "").strip()
    if text:
        try:
            value = float(text)
            if value >= 0:
                return value / 1000.0
        except ValueError:
            pass
        log.warning(
            "runcov: OTEL_BSP_SCHEDULE_DELAY=%r is not a number of milliseconds; using %d",
            text,
            DEFAULT_SCHEDULE_DELAY_MS,
        )
    return DEFAULT_SCHEDULE_DELAY_MS / 1000.0


class CoverageExporter:
    """Sends measured requests as OTLP spans without ever blocking or raising into the app.

    ``metrics`` (an :class:`~runcov.metrics.AgentMetrics`, optional, may also be set later as the
    ``metrics`` attribute) is told about drops. ``transport_factory`` replaces the OTLP
    transport (it is called once per process, lazily, in the worker thread).
    """

    def __init__(
        self,
        config: Config,
        resource: Resource,
        *,
        metrics: Any = None,
        redactor: Optional[Redactor] = None,
        static: Optional[StaticAnalyzer] = None,
        transport_factory: Optional[Callable[[], Transport]] = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._resource = resource
        self._redactor = redactor or Redactor(config.source, config.exclude, config.redact)
        self._static = static or StaticAnalyzer()
        self._factory = transport_factory or (lambda: make_transport(config))
        self._queue_size = int(config.queue_size)
        #: Encoded spans waiting for the next send, at most this many (more are dropped).
        self._outbox_limit = max(2048, 2 * self._queue_size)
        self._schedule_delay = _schedule_delay()
        self._closed = False
        #: Called by the worker after each round of records (the agent reports its request
        #: paths' overhead from there).
        self.on_round: Optional[Callable[[], None]] = None
        self._init_process_state()
        in_forked_child(self._after_fork_in_child)
        ref_exit = weakref.WeakMethod(self._at_exit)
        atexit.register(lambda: (m := ref_exit()) and m())

    # -- state that belongs to one process ----------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: deque[RequestRecord] = deque()
        self._flushes: list[_Flush] = []
        self._worker: Optional[threading.Thread] = None
        self._stopping = False
        #: Encoder and transport, made by the worker at its first span in this process.
        self._encoder: Optional[SpanEncoder] = None
        self._transport: Optional[Transport] = None
        #: (encoded span, span id) waiting for the next send; only the worker touches it.
        self._outbox: list[tuple[bytes, int]] = []
        self._outbox_bytes = 0
        self._last_send = time.monotonic()
        #: When the last failed export was reported (``_warn_export_failed``).
        self._warned_at = -EXPORT_WARNING_INTERVAL
        #: Spans encoded and not yet delivered or failed.
        self._inflight = 0
        self._static_sent: set[tuple[str, str]] = set()
        self._static_spans: dict[int, list[tuple[str, str]]] = {}
        self._coverage_spans: dict[int, str] = {}
        #: (endpoint, fingerprint of the records) -> encoding; least recently used first.
        self._repeats: OrderedDict[Any, _Repeat] = OrderedDict()
        self._repeats_bytes = 0
        self._stats: dict[str, int] = {
            "submitted": 0,
            "queue_full": 0,
            "processed": 0,
            "repeats": 0,
            "empty": 0,
            "no_known_files": 0,
            "requests_exported": 0,
            "export_failed": 0,
            "spans_exported": 0,
            "spans_failed": 0,
            "static_files": 0,
            "internal_error": 0,
            "closed": 0,
        }

    def _after_fork_in_child(self) -> None:
        # The parent's transport is left alone, never closed nor collected here (a gRPC
        # channel must not be torn down in a forked child): the child makes its own.
        if self._transport is not None:
            _INHERITED_TRANSPORTS.append(self._transport)
        self._init_process_state()
        self._resource = with_new_instance(self._resource)

    def counters(self) -> dict[str, int]:
        """A snapshot of the exporter's counters (submitted, drops by reason, exported...)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] = self._stats.get(name, 0) + n

    def _drop(self, endpoint: str, reason: str) -> None:
        try:
            if self.metrics is not None:
                self.metrics.dropped(endpoint, reason)
        except Exception:
            pass

    # -- request path ---------------------------------------------------------------------------

    def is_full(self) -> bool:
        """Whether a record submitted now would be dropped for want of room (a lock-free read:
        the agent asks before it measures a request, so that a receiver too slow to keep up,
        or a worker stuck on it, does not make the service measure what cannot leave)."""
        return len(self._queue) >= self._queue_size

    def submit(self, record: RequestRecord) -> bool:
        """Queue a measured request for export. Never blocks, never raises.

        Returns False (and counts a ``queue_full`` drop) when the queue is full or the exporter
        is shut down.
        """
        try:
            if self._pid != os.getpid():  # forked without the hook having run
                self._after_fork_in_child()
            with self._lock:
                if self._closed:
                    self._stats["closed"] += 1
                    return False
                if len(self._queue) >= self._queue_size:
                    self._stats["queue_full"] += 1
                    full = True
                else:
                    self._queue.append(record)
                    self._stats["submitted"] += 1
                    full = False
                worker = self._worker
                # The worker wakes by itself every WAKE_INTERVAL seconds; waking it for each
                # record would cost a thread switch per measured request.
                wake = len(self._queue) >= WAKE_BATCH
            if full:
                self._drop(record.endpoint, "queue_full")
                return False
            if worker is None:
                self._start_worker()
            if wake:
                self._wake.set()
            return True
        except Exception:
            self._count("internal_error")
            return False

    def prepare(self) -> None:
        """Start the worker now: a short-lived process (a script, a job) may otherwise first
        need it at interpreter exit, when no thread can start any more."""
        try:
            if self._pid != os.getpid():
                self._after_fork_in_child()
            self._start_worker()
        except Exception:
            self._count("internal_error")

    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is not None:
                return
            self._worker = threading.Thread(target=self._run, name="runcov-exporter", daemon=True)
            self._worker.start()

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:  # keep the worker alive whatever happens
                self._count("internal_error")

    def _step(self) -> bool:
        """Export what is queued and answer flushes; True when the worker should stop."""
        self._wake.wait(WAKE_INTERVAL)
        with self._lock:
            self._wake.clear()
            items = list(self._queue)
            self._queue.clear()
            flushes, self._flushes = self._flushes, []
            stopping = self._stopping
        cpu = time.thread_time()
        with self._deferred_metrics():
            slice_end = time.perf_counter() + WORKER_SLICE
            for item in items:
                try:
                    self._process(item)
                except Exception:
                    log.debug("runcov: could not export a request", exc_info=True)
                    self._count("internal_error")
                    self._drop(getattr(item, "endpoint", ""), "internal_error")
                if time.perf_counter() >= slice_end:
                    time.sleep(WORKER_PAUSE)  # blocks: the GIL goes to a waiting thread now
                    slice_end = time.perf_counter() + WORKER_SLICE
        if items and self.metrics is not None:
            # The worker's CPU is agent overhead too (encoding, static analysis, spans).
            try:
                self.metrics.overhead(time.thread_time() - cpu)
            except Exception:
                pass
        on_round = self.on_round
        if on_round is not None:
            try:
                on_round()
            except Exception:
                pass
        if flushes or stopping:
            with self._lock:
                failed_before = self._stats["spans_failed"]
            self._send_outbox()
            with self._lock:
                ok = self._inflight == 0 and self._stats["spans_failed"] == failed_before
            for f in flushes:
                f.ok = ok
                f.done.set()
        elif self._outbox and (
            time.monotonic() - self._last_send >= self._schedule_delay
            or len(self._outbox) >= MAX_EXPORT_SPANS
            or self._outbox_bytes >= MAX_EXPORT_BYTES
        ):
            self._send_outbox()
        return stopping

    def _deferred_metrics(self) -> Any:
        """The metrics' batching block for one round of records (a no-op without metrics)."""
        deferred = getattr(self.metrics, "deferred", None)
        if deferred is None:
            return contextlib.nullcontext()
        try:
            return deferred()
        except Exception:
            return contextlib.nullcontext()

    def _ensure_encoder(self) -> SpanEncoder:
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = SpanEncoder(
                self._resource.attributes,
                SCOPE_NAME,
                _agent_version(),
                self._resource.schema_url or "",
            )
        return encoder

    def _emit(
        self,
        name: str,
        trace_id: int,
        parent_span_id: int,
        base: bytes,
        attributes: dict[str, Any],
        start: int,
        end: int,
        span_id: int,
    ) -> None:
        """Encode one span into the outbox (the caller picks the span id, and files it
        before the span can be sent). ``base`` holds attributes encoded once for several
        spans (:meth:`SpanEncoder.attributes`), ``attributes`` this span's own."""
        encoded = self._ensure_encoder().span(
            name, trace_id, span_id, parent_span_id, start, end, base, attributes
        )
        self._outbox.append((encoded, span_id))
        self._outbox_bytes += len(encoded)

    def _send_outbox(self) -> None:
        """Send every span in the outbox, in requests of bounded size.

        Each request may take the OTLP timeout; once one has failed and the round has spent
        that timeout, the rest of the round fails without being sent (a receiver that hangs
        would otherwise hold the worker one timeout per request, records and feedback
        waiting behind it). A refusal that comes quickly does not stop the others.
        """
        outbox, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        round_start = self._last_send = time.monotonic()
        timeout = float(self.config.exporter_timeout)
        given_up = False
        start = 0
        while start < len(outbox):
            end, size = start, 0
            while end < len(outbox) and end - start < MAX_EXPORT_SPANS:
                n = len(outbox[end][0])
                if end > start and size + n > MAX_EXPORT_BYTES:
                    break
                size += n
                end += 1
            chunk = outbox[start:end]
            start = end
            ok = False
            if not given_up:
                try:
                    transport = self._transport
                    if transport is None:
                        transport = self._transport = self._factory()
                    body = self._ensure_encoder().request(span for span, _ in chunk)
                    ok = bool(transport.send(body))
                except Exception:
                    log.debug("runcov: span export raised", exc_info=True)
                given_up = not ok and time.monotonic() - round_start >= timeout
            if not ok:
                self._warn_export_failed(len(chunk))
            self._exported([span_id for _, span_id in chunk], ok)

    def _warn_export_failed(self, spans: int) -> None:
        """Say, at most once a minute, that coverage spans could not be delivered: the
        receiver did not answer, stayed busy past the timeout or refused them (each counted as
        a drop, ``export_failed``). A receiver of the other protocol (gRPC sent to an OTLP/HTTP
        port, as ``opentelemetry-instrument``'s default protocol does) fails this way too."""
        now = time.monotonic()
        if now - self._warned_at < EXPORT_WARNING_INTERVAL:
            return
        self._warned_at = now
        config = self.config
        cause = getattr(self._transport, "last_error", "") or "no answer"
        if getattr(self._transport, "last_answered", False):
            hint = "The receiver refused them (its answer in parentheses)"
        elif config.exporter_protocol == "grpc" and any(
            word in cause.lower() for word in ("handshake", "ssl", "tls")
        ):
            hint = (
                "The TLS handshake failed: for a receiver without TLS, write the endpoint as "
                "http://host:port (one without a scheme uses TLS unless "
                "OTEL_EXPORTER_OTLP_INSECURE=true)"
            )
        else:
            hint = (
                "Check the receiver, and that it speaks this protocol "
                "(RUNCOV_EXPORTER_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL)"
            )
        log.warning(
            "runcov: could not export %d coverage span(s) to %s over %s (%s); they are dropped "
            "and counted (export_failed). %s",
            spans,
            shown_endpoint(config.traces_endpoint()),
            config.exporter_protocol,
            cause,
            hint,
        )

    def _process(self, record: RequestRecord) -> None:
        # A request whose records equal an earlier one's on the same endpoint (the common case
        # in steady traffic) reuses that one's encoded payloads: nothing to build, nothing new.
        key = self._repeat_key(record)
        repeat = self._repeats.get(key) if key is not None else None
        if repeat is not None and not self._still_current(repeat):
            self._forget_repeat(key)
            repeat = None
        if repeat is not None:
            self._repeats.move_to_end(key)
            record.repeat = True
        if record.before is not None and not record.before(record):
            self._count("processed")
            self._count("empty")
            return
        if repeat is not None:
            self._count("processed")
            self._count("repeats")
            self._send(record, repeat.payloads, [], [])
            return
        scrub = self._redactor.scrub
        census = record.mode == "census"
        files: list[dict[str, Any]] = []
        statics: list[dict[str, Any]] = []
        new_keys: list[tuple[str, str]] = []
        shas: list[tuple[str, str]] = []
        factual: list[tuple[str, str]] = []
        data = record.data
        for abs_path in sorted(set(data.lines) | set(data.arcs)):
            lines = data.lines.get(abs_path) or ()
            arcs = () if census else (data.arcs.get(abs_path) or ())
            if not lines and not arcs:
                continue
            rel = self._redactor.relpath(abs_path)
            if rel is None:
                continue
            info = self._static.analyze(abs_path)
            if info is None:
                continue
            sha, facts = info
            lines, arcs = present(lines, arcs, facts)  # in the terms of the static facts
            files.append({"path": rel, "sha": sha, "lines": lines, "arcs": arcs})
            shas.append((abs_path, sha))
            key_static = (rel, sha)
            if facts is not None:
                factual.append(key_static)
            if (
                facts is not None
                and key_static not in new_keys
                and key_static not in self._static_sent
            ):
                new_keys.append(key_static)
                statics.append(
                    {
                        "path": rel,
                        "sha": sha,
                        "lines": facts["lines"],
                        "arcs": facts["arcs"],
                        "functions": [
                            {"name": scrub(f["name"]), "start": f["start"], "end": f["end"]}
                            for f in facts["functions"]
                        ],
                    }
                )
        self._count("processed")
        if not files:
            # Hits were recorded, but no file could be reported (unreadable or redacted).
            self._count("no_known_files")
            return
        payloads = wire.encode_coverage(files)
        static_payloads = wire.encode_static(statics) if statics else []
        if self._send(record, payloads, static_payloads, new_keys) and key is not None:
            self._keep_repeat(key, _Repeat(payloads, tuple(shas), tuple(factual)))

    def _keep_repeat(self, key: Any, repeat: _Repeat) -> None:
        """Keep an encoding for later repeats, within the cache's count and byte bounds."""
        # The key's records (a frozenset of tuples) take about ten times the bytes of their
        # encoding ("[12,13]," per arc).
        repeat.size = 12 * sum(len(p) for p in repeat.payloads)
        if repeat.size > REPEAT_CACHE_BYTES // 16:
            return
        self._forget_repeat(key)
        self._repeats[key] = repeat
        self._repeats_bytes += repeat.size
        while self._repeats and (
            len(self._repeats) > REPEAT_CACHE_SIZE or self._repeats_bytes > REPEAT_CACHE_BYTES
        ):
            self._forget_repeat(next(iter(self._repeats)))

    def _forget_repeat(self, key: Any) -> None:
        old = self._repeats.pop(key, None)
        if old is not None:
            self._repeats_bytes -= old.size

    def _repeat_key(self, record: RequestRecord) -> Any:
        """The key under which ``record`` may repeat an earlier record (None: never)."""
        if record.mode != "exact" or not REPEAT_CACHE_SIZE:
            return None
        try:
            fingerprint = record.data.fingerprint()
        except Exception:
            return None
        return None if fingerprint is None else (record.endpoint, fingerprint)

    def _still_current(self, repeat: _Repeat) -> bool:
        """Whether a cached encoding still describes the files as they are on disk, and their
        static facts were delivered (a failed ``runcov.static`` export is sent again)."""
        analyze = self._static.analyze
        for abs_path, sha in repeat.shas:
            info = analyze(abs_path)
            if info is None or info[0] != sha:
                return False
        sent = self._static_sent
        return all(key in sent for key in repeat.statics)

    def _send(
        self,
        record: RequestRecord,
        payloads: list[str],
        static_payloads: list[str],
        new_keys: list[tuple[str, str]],
    ) -> bool:
        """Create the record's spans (and pending static spans); False when dropped."""
        scrub = self._redactor.scrub
        census = record.mode == "census"
        endpoint = scrub(record.endpoint)
        with self._lock:
            room = self._inflight + len(payloads) + len(static_payloads) <= self._outbox_limit
            if room:
                self._inflight += len(payloads) + len(static_payloads)
            else:
                self._stats["queue_full"] += 1
        if not room:
            self._drop(endpoint, "queue_full")
            return False
        with self._lock:
            self._static_sent.update(new_keys)
        now = time.time_ns()
        for i, payload in enumerate(static_payloads):
            attributes = {
                "runcov.wire_version": wire.WIRE_VERSION,
                "runcov.part": i,
                "runcov.parts": len(static_payloads),
                "runcov.payload": payload,
            }
            # Denominators belong to no request: a trace of their own. Known by span id before
            # they are sent (their outcome is looked up by it).
            span_id = _IDS.generate_span_id()
            with self._lock:
                self._static_spans[span_id] = new_keys
            self._emit(
                "runcov.static", _IDS.generate_trace_id(), 0, b"", attributes, now, now, span_id
            )
        self._count("static_files", len(new_keys))
        base: dict[str, Any] = {
            "runcov.wire_version": wire.WIRE_VERSION,
            "runcov.mode": "census" if census else "exact",
            "runcov.endpoint": endpoint,
            "runcov.status_class": record.status_class,
            "runcov.parts": len(payloads),
        }
        method = record.method
        if method and method.lower() not in _NON_HTTP_KINDS:
            if method.upper() != WEBSOCKET:  # (a websocket's endpoint method is no HTTP one)
                base["http.request.method"] = scrub(method.upper())
            if record.route:
                base["http.route"] = scrub(record.route)
        start = record.start_ns or now
        end = max(record.end_ns or now, start)
        encoded_base = self._ensure_encoder().attributes(base)
        extra = record.attributes or {}
        for i, payload in enumerate(payloads):
            span_id = _IDS.generate_span_id()
            if i == 0:
                with self._lock:
                    self._coverage_spans[span_id] = endpoint
            self._emit(
                "runcov.coverage",
                record.trace_id,
                record.span_id,
                encoded_base,
                {**extra, "runcov.part": i, "runcov.payload": payload},
                start,
                end,
                span_id,
            )
        return True

    def _exported(self, span_ids: Sequence[int], ok: bool) -> None:
        """The outcome of one export request of the spans ``span_ids``."""
        failed_endpoints: list[str] = []
        with self._lock:
            self._inflight = max(0, self._inflight - len(span_ids))
            self._stats["spans_exported" if ok else "spans_failed"] += len(span_ids)
            for span_id in span_ids:
                endpoint = self._coverage_spans.pop(span_id, None)
                keys = self._static_spans.pop(span_id, None)
                if endpoint is not None:
                    if ok:
                        self._stats["requests_exported"] += 1
                    else:
                        self._stats["export_failed"] += 1
                        failed_endpoints.append(endpoint)
                if keys is not None and not ok:
                    # Denominators that did not arrive are sent again with the next coverage.
                    self._static_sent.difference_update(keys)
        for endpoint in failed_endpoints:
            self._drop(endpoint, "export_failed")

    # -- flush / shutdown -----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Export everything submitted so far; True if it was sent within ``timeout`` seconds."""
        try:
            marker = _Flush()
            with self._lock:
                if self._closed:
                    return not self._queue
                self._flushes.append(marker)
            if self._worker is None:
                self._start_worker()
            self._wake.set()
            return marker.done.wait(max(0.0, timeout)) and marker.ok
        except Exception:
            self._count("internal_error")
            return False

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Flush (within ``timeout``), stop the worker and release the exporter. Idempotent."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._closed:
                return True
            worker = self._worker
        ok = self.flush(timeout) if worker is not None else True
        with self._lock:
            self._closed = True
            self._stopping = True
        self._wake.set()
        if worker is not None:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._warn_undelivered(timeout)
        transport = self._transport
        if transport is not None:
            try:
                transport.close()
            except Exception:
                log.debug("runcov: closing the span transport raised", exc_info=True)
        return ok

    def _warn_undelivered(self, timeout: float) -> None:
        """Say what a shutdown leaves behind when its time ran out with the worker still at
        it (a send retrying a receiver that is down): at exit the process ends before the
        worker's own warning could come."""
        with self._lock:
            spans, queued = self._inflight, len(self._queue)
        if not spans and not queued:
            return
        log.warning(
            "runcov: stopping with coverage not delivered after %.1f s: %d coverage span(s) "
            "still being sent to %s (%s) and %d request(s) not yet encoded; they are lost",
            timeout,
            spans,
            shown_endpoint(self.config.traces_endpoint()),
            getattr(self._transport, "last_error", "") or "no answer yet",
            queued,
        )

    def _at_exit(self) -> None:
        try:
            if not self._closed and self._pid == os.getpid():
                self.shutdown(min(5.0, self.config.exporter_timeout))
        except Exception:
            pass
