"""Sends encoded OTLP trace export requests over HTTP or gRPC, with the OTLP retry rules.

runcov encodes its spans itself (:mod:`runcov.export.spans`), so it sends the bytes itself too;
the behaviour follows the OTLP specification
(https://opentelemetry.io/docs/specs/otlp/#otlphttp-throttling) and the SDK exporters'
configuration variables:

* HTTP: ``POST`` of ``application/x-protobuf`` to the traces URL, gzip-compressed unless
  compression is ``none``. 2xx is delivered (a ``partial_success`` in the answer is logged: the
  receiver has decided about those spans, sending them again would not change its mind).
  429, 502, 503 and 504 are retried after the ``Retry-After`` the server gave, else with
  exponential backoff and jitter; so is a connection that fails. Any other answer is final.
* gRPC: the ``TraceService/Export`` method with the request's bytes as they are. UNAVAILABLE,
  RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE and DATA_LOSS are
  retried as above; other codes are final.
* Each attempt and all retries together stay within the configured timeout, whatever the
  receiver does: over HTTP the exchange runs on a sender thread that the caller waits for with
  the deadline (see :class:`HttpTransport`), and an answer is read up to
  :data:`MAX_ANSWER_BYTES`; gRPC calls carry the deadline themselves.
* TLS: ``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`` / ``OTEL_EXPORTER_OTLP_CERTIFICATE`` (trusted
  roots), ``..._CLIENT_KEY`` and ``..._CLIENT_CERTIFICATE`` (mutual TLS); headers from the
  configuration, else ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import weakref
import zlib
from typing import Any, Callable, Optional, Protocol
from urllib.parse import urlparse

from runcov._fork import in_forked_child
from runcov.config import Config, header_pairs, shown_endpoint

__all__ = [
    "MAX_ANSWER_BYTES",
    "GrpcTransport",
    "HttpTransport",
    "Transport",
    "make_transport",
]

log = logging.getLogger("runcov.export")

#: gzip level of request bodies: coverage payloads (JSON of line numbers) compress about as
#: well at level 1 as at 9 (within 2 % on the Flask shop's spans), at a third of the CPU.
GZIP_LEVEL = 1
_RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
_RETRYABLE_GRPC = frozenset(
    (
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "CANCELLED",
        "OUT_OF_RANGE",
        "DATA_LOSS",
    )
)
_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 32.0
#: Seconds of the deadline kept for the last attempt (at most half of what is left).
_LAST_ATTEMPT = 1.0
_TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Transport(Protocol):
    """Delivers one encoded ``ExportTraceServiceRequest``."""

    def send(self, body: bytes) -> bool:
        """True when the receiver accepted the request (retries included), else False."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


def _env(name: str) -> Optional[str]:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    for key in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = os.environ.get(key, "").strip()
        if value:
            return value
    return None


def _headers(config: Config) -> dict[str, str]:
    if config.exporter_headers:
        return dict(config.exporter_headers)
    # As the SDK's exporters read it: items that are not name=value are left out.
    return header_pairs(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""))[0]


class _Retrying:
    """The retry loop both transports share: ``attempt(timeout)`` returns ``(done, ok, wait)``
    — done: no retry (ok tells the outcome); else retry after ``wait`` seconds if given."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._closed = threading.Event()

    def run(self, attempt: Callable[[float], tuple[bool, bool, Optional[float]]]) -> bool:
        deadline = time.monotonic() + self.timeout
        backoff = _FIRST_BACKOFF
        last = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return False
            done, ok, wait = attempt(remaining)
            if done or last:
                return ok
            left = deadline - time.monotonic()
            if wait is not None:
                if wait >= left:
                    return False  # the receiver asked for a retry later than the deadline
            else:
                wait = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                if wait >= left:
                    # The next backoff runs past the deadline: one last attempt before it,
                    # with what is left for its exchange, so that a receiver back by then
                    # (a collector restarting) gets the export.
                    wait = left - min(_LAST_ATTEMPT, left / 2)
                    last = True
            if self._closed.wait(wait):
                return False

    def stop(self) -> None:
        self._closed.set()


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class _Sender:
    """What both transports share: the retry loop, closing, and the last failure's cause."""

    _retry: _Retrying
    #: Why the last failed attempt failed ("" before any): for the exporter's warning.
    last_error = ""
    #: Whether that attempt got an answer of the protocol (a refusal), rather than none.
    last_answered = False

    def _failed(self, error: str, answered: bool) -> None:
        self.last_error = error
        self.last_answered = answered

    def _release(self) -> None:
        """Close the connection (session, channel)."""

    def close(self) -> None:
        self._retry.stop()
        try:
            self._release()
        except Exception:
            pass


#: Most bytes of an HTTP answer that are read (after content decoding). An OTLP answer is an
#: ``ExportTraceServiceResponse`` (a count and a message) or a short error text: a receiver that
#: sends more is not answering OTLP, and reading on would let it hold memory and the sender.
MAX_ANSWER_BYTES = 256 * 1024
_ANSWER_CHUNK = 16 * 1024
#: HTTP senders given up on (their exchange overstayed its deadline) that may still be running,
#: at most; while this many are, an attempt fails at once instead of starting another thread.
MAX_ABANDONED_SENDERS = 2


class _Answer:
    """An HTTP answer read in full: status, ``Retry-After``, body and its content type."""

    __slots__ = ("body", "content_type", "encoding", "retry_after", "status")

    def __init__(
        self,
        status: int,
        retry_after: Optional[str],
        body: bytes,
        encoding: Optional[str],
        content_type: str = "",
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.encoding = encoding
        self.content_type = content_type

    def text(self, limit: int) -> str:
        """The answer's message for a log line: a protobuf ``google.rpc.Status`` body's (OTLP
        encodes an error like its request), else the body as text; control characters
        escaped either way."""
        if self.content_type.split(";")[0].strip().lower() in _PROTOBUF_TYPES:
            try:
                from google.rpc import status_pb2

                message = status_pb2.Status.FromString(self.body).message
                if message:
                    return _printable(message[:limit])
            except Exception:  # not a Status after all: shown as text
                pass
        try:
            text = self.body[: 4 * limit].decode(self.encoding or "utf-8", "replace")[:limit]
        except LookupError:  # an encoding Python does not know
            text = self.body[: 4 * limit].decode("utf-8", "replace")[:limit]
        return _printable(text)


_PROTOBUF_TYPES = frozenset(("application/x-protobuf", "application/protobuf"))


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x08``): one log line, no terminal
    control."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class _Failure:
    """An HTTP exchange that brought no answer: ``final`` when it is not worth retrying (the
    deadline is spent, or the receiver does not speak OTLP), ``warn`` when it says so."""

    __slots__ = ("final", "message", "warn")

    def __init__(self, message: str, final: bool, warn: bool = False) -> None:
        self.message = message
        self.final = final
        self.warn = warn


class _Job:
    """One HTTP exchange handed to a sender thread. ``done`` (a lock, held from the start: a
    cheaper signal between two threads than an event) is released once, under the senders'
    lock: when ``outcome`` is set, or when the transport is closed under the exchange (with no
    outcome)."""

    __slots__ = ("data", "deadline", "done", "headers", "outcome", "url")

    def __init__(self, url: str, headers: dict[str, str], data: bytes, deadline: float) -> None:
        self.url = url
        self.headers = headers
        self.data = data
        self.deadline = deadline
        self.done = threading.Lock()
        self.done.acquire()
        self.outcome: Optional[_Answer | _Failure] = None


class _AnswerTooLarge(Exception):
    pass


def _too_large(status: int) -> _Failure:
    return _Failure(
        f"HTTP {status} with an answer of more than {MAX_ANSWER_BYTES} bytes, which is no OTLP "
        "answer",
        final=True,
        warn=True,
    )


def _read_redirect(response: Any, **_: Any) -> Any:
    """A response hook: ``requests`` reads the body of a redirect in full before it follows
    it, so it is read here first, up to MAX_ANSWER_BYTES (then there is nothing left)."""
    if (
        response.is_redirect
        and len(response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=False)) > MAX_ANSWER_BYTES
    ):
        raise _AnswerTooLarge(response.status_code)
    return response


def _exchange(session: Any, job: _Job) -> _Answer | _Failure:
    """POST ``job`` with ``session`` and read the answer: an :class:`_Answer` or a
    :class:`_Failure`, never an exception. Runs on a sender thread."""
    import requests

    remaining = job.deadline - time.monotonic()
    if remaining <= 0:
        return _Failure("no time left", final=True)
    try:
        # stream=True: the body is read below, within MAX_ANSWER_BYTES. The trusted roots and
        # client certificate are given with the request, as the SDK's exporter does: on the
        # session alone, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in the environment would replace
        # the roots the OTLP configuration names.
        response = session.post(
            job.url,
            data=job.data,
            headers=job.headers,
            timeout=remaining,
            stream=True,
            hooks=_HOOKS,
            verify=session.verify,
            cert=session.cert,
        )
    except _AnswerTooLarge as error:
        return _too_large(error.args[0])
    except requests.exceptions.Timeout:
        return _Failure("timed out", final=True)
    except requests.exceptions.RequestException as error:
        return _Failure(_reason(error), final=False)  # connection refused or reset: retried
    except Exception as error:
        return _Failure(repr(error), final=True)
    try:
        body = bytearray()
        for chunk in response.iter_content(_ANSWER_CHUNK):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                return _too_large(response.status_code)
            if time.monotonic() >= job.deadline:
                return _Failure("timed out reading the answer", final=True)
        return _Answer(
            response.status_code,
            response.headers.get("Retry-After"),
            bytes(body),
            response.encoding,
            response.headers.get("Content-Type", ""),
        )
    except requests.exceptions.RequestException as error:  # reset, read timeout, bad framing
        return _Failure(_reason(error), final=False)
    except Exception as error:
        return _Failure(repr(error), final=True)
    finally:
        # Read in full, the connection goes back to the pool for the next send; otherwise
        # (too long, too late, broken) it is closed.
        response.close()


_HOOKS = {"response": [_read_redirect]}
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_QUERY = re.compile(r"\?[^\s'\")]+")


def _reason(error: BaseException) -> str:
    """What failed, shortly: the operating system's words when a socket call failed
    ("Connection refused"), else ``requests``' message (which nests urllib3's), cut short."""
    text = _QUERY.sub("?***", str(error))  # (a URL's query string may carry a secret)
    found = _OS_ERROR.search(text)
    if found:
        return found.group(1).strip().rstrip(".")
    return shortened(text)


def shortened(text: str) -> str:
    """An error's text as a log line carries it: a URL's query string (which may carry a
    secret) masked, and cut at 300 characters."""
    text = _QUERY.sub("?***", text)
    return text if len(text) <= 300 else text[:297] + "..."


class _Inline:
    """:meth:`_HttpSenders.hand_over`'s answer when the exchange must run on the caller."""


INLINE = _Inline()


class _HttpSender:
    """A daemon thread with its own ``requests`` session that makes the exchanges it is
    handed, one at a time. Once given up on (``abandoned``) it drops the outcome of the
    exchange it is in, closes its session and ends; :meth:`cut` makes that happen at once."""

    def __init__(self, lock: threading.Lock, session: Any) -> None:
        self._lock = lock
        self.session = session
        self.jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        #: The last job handed over (in flight while it has no outcome).
        self.job: Optional[_Job] = None
        self.abandoned = False
        #: Set (under the lock) once the session is closed: its sockets are no longer cut.
        self.finished = False
        self.thread = threading.Thread(target=self._run, name="runcov-otlp-http", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                outcome = _exchange(self.session, job)
                with self._lock:
                    if self.abandoned:
                        return
                    job.outcome = outcome
                    job.done.release()
        finally:
            with self._lock:
                self.finished = True
                try:
                    self.session.close()
                except Exception:
                    pass

    def cut(self) -> None:
        """Shut down the sockets of this (abandoned) sender's connections, so that the
        exchange it is stuck in fails now rather than when the receiver lets go: its next read
        finds the connection ended. Called with the senders' lock held, which the sender takes
        to close its session, so no socket is shut down once closed (its descriptor could
        belong to another socket by then). A connection still connecting has no socket yet;
        its connect timeout bounds it."""
        if self.finished:
            return
        for connection in _connections_of(self.session):
            sock = getattr(connection, "sock", None)
            if isinstance(sock, socket.socket):
                try:
                    # The plain socket's shutdown (for TLS too): the file descriptor's, without
                    # a TLS closing exchange that would need the stuck thread's connection.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # closed or never connected meanwhile


def _connections_of(session: Any) -> list[Any]:
    adapters = getattr(session, "adapters", None) or {}
    found: list[Any] = []
    for adapter in adapters.values():
        found.extend(getattr(adapter, "connections", ()))
    return found


def _tracking_pool(base: type, connections: weakref.WeakSet[Any]) -> type:
    """``base`` (a ``urllib3`` connection pool class) filing each connection it makes in
    ``connections``."""

    def _new_conn(self: Any) -> Any:
        connection = base._new_conn(self)  # type: ignore[attr-defined]
        try:
            connections.add(connection)
        except TypeError:  # not weakly referenceable: left uncut
            pass
        return connection

    return type("Tracked" + base.__name__, (base,), {"_new_conn": _new_conn})


def _tracking_adapter() -> Any:
    """A ``requests`` adapter as the default one, whose connections can be found (to be cut
    when their sender is abandoned). Only the plain HTTP and HTTPS pools of ``urllib3`` are
    tracked, direct or through an HTTP proxy; any other pool (SOCKS) is left as it is, and its
    abandoned senders end when their exchange does."""
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    plain = {HTTPConnectionPool, HTTPSConnectionPool}

    class TrackingAdapter(HTTPAdapter):
        def __init__(self) -> None:
            self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
            self._pools: dict[type, type] = {}
            super().__init__()

        def _track(self, manager: Any) -> Any:
            classes = getattr(manager, "pool_classes_by_scheme", None)
            if isinstance(classes, dict):
                tracked = dict(classes)
                for scheme, cls in classes.items():
                    if cls in plain:
                        if cls not in self._pools:
                            self._pools[cls] = _tracking_pool(cls, self.connections)
                        tracked[scheme] = self._pools[cls]
                manager.pool_classes_by_scheme = tracked
            return manager

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self._track(self.poolmanager)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            known = proxy in self.proxy_manager
            manager = super().proxy_manager_for(proxy, **kwargs)
            return manager if known else self._track(manager)

    return TrackingAdapter()


def _new_session(verify: Any, cert: Any) -> Any:
    import requests

    session = requests.Session()
    session.verify = verify
    if cert is not None:
        session.cert = cert
    try:
        adapter = _tracking_adapter()
    except Exception:  # another requests or urllib3 than expected: connections left uncut
        log.debug("runcov: abandoned HTTP exchanges will not be cut", exc_info=True)
    else:
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session


class _HttpSenders:
    """The sender threads of one :class:`HttpTransport`: the current one, and those given up
    on that may still be running. Holds nothing of the transport (which it outlives while a
    sender runs), so that a transport dropped without ``close()`` is still collected."""

    def __init__(self, new_session: Callable[[], Any]) -> None:
        self.new_session = new_session
        self._init_process_state()
        self.closed = False

    def _init_process_state(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.current: Optional[_HttpSender] = None
        self.abandoned: list[_HttpSender] = []

    def after_fork_in_child(self) -> None:
        # No sender thread exists in the child, and the parent's connections are not the
        # child's to use (nor to close: a socket closed here stays open in the parent).
        self._init_process_state()

    def hand_over(self, job: _Job) -> Optional[_HttpSender | _Inline]:
        """Give ``job`` to the current sender (started if there is none); None when the
        transport is closed or too many abandoned senders still run; :data:`INLINE` when no
        thread can be started (the interpreter is exiting: the exchange is the caller's)."""
        if self.pid != os.getpid():  # forked without the hook having run
            self._init_process_state()
        with self.lock:
            if self.closed:
                return None
            sender = self.current
            if sender is None:
                self.abandoned = [s for s in self.abandoned if s.thread.is_alive()]
                if len(self.abandoned) >= MAX_ABANDONED_SENDERS:
                    return None
                sender = _HttpSender(self.lock, self.new_session())
                try:
                    sender.thread.start()
                except RuntimeError:
                    # CPython 3.12+ starts no thread once the interpreter is finalizing (the
                    # agent's flush at exit): the last export is made by the caller itself.
                    sender.session.close()
                    return INLINE
                self.current = sender
            sender.job = job
            sender.jobs.put(job)
            return sender

    def give_up(self, sender: _HttpSender, job: _Job) -> Optional[_Answer | _Failure]:
        """The deadline passed: abandon ``sender`` unless ``job`` has just got its outcome
        (returned then; else None)."""
        with self.lock:
            if job.outcome is not None:
                return job.outcome
            self._abandon(sender)
            return None

    def _abandon(self, sender: _HttpSender) -> None:
        if not sender.abandoned:
            sender.abandoned = True
            self.abandoned.append(sender)
            try:
                sender.cut()
            except Exception:
                log.debug("runcov: could not cut an abandoned HTTP exchange", exc_info=True)
        if self.current is sender:
            self.current = None

    def close(self) -> None:
        """Stop the current sender: at once when idle, else when its exchange returns, whose
        caller is woken now (with no outcome: a failure)."""
        with self.lock:
            self.closed = True
            sender, self.current = self.current, None
            if sender is None:
                return
            job = sender.job
            if job is not None and job.outcome is None:
                self._abandon(sender)  # so that the sender does not release it again
                job.done.release()
            sender.jobs.put(None)


class HttpTransport(_Sender):
    """OTLP/HTTP (protobuf) with ``requests``, one keep-alive session per sender thread.

    ``requests``' timeout bounds each socket operation (connecting, then each read), not the
    exchange: a receiver that trickles its answer a byte at a time, or sends one without end,
    would hold the caller (the exporter's worker, which also publishes tallies and feedback)
    for as long as it likes. The exchange therefore runs on a sender thread, and the caller
    waits for it with the deadline: whatever the receiver does, the caller is back by then.
    A sender still in its exchange at the deadline is abandoned: its connections' sockets are
    shut down, so that the exchange fails at its next read and the sender closes its session
    and ends, and the next attempt starts a fresh sender with a fresh session. A receiver that
    keeps trickling on the connections it was given thus holds no sender, and the next
    exchange, on a new connection, succeeds as soon as the receiver answers again. Where a
    socket cannot be reached (a connection still connecting, a SOCKS proxy's), the sender ends
    when its exchange does, which its own timeouts, the answer's size bound and the receiver
    decide; at most :data:`MAX_ABANDONED_SENDERS` abandoned senders run at once, and beyond,
    attempts fail at once rather than pile up threads on a receiver that holds every
    connection.

    This uses ``requests``' session as it is, so its TLS settings, proxies from the
    environment, keep-alive connections and content decoding stay as they are, and it costs a
    thread handoff per attempt; its adapter only files the connections its ``urllib3`` pools
    make (:func:`_tracking_adapter`). Per-read timeouts shrinking to the deadline cannot reach
    the status line and headers, which ``http.client`` reads before ``requests`` returns. One
    caller at a time (the export worker).
    """

    def __init__(self, config: Config) -> None:
        import requests  # noqa: F401  (fail here, not on the first send, when it is missing)

        self.url = config.traces_endpoint()
        #: The URL as messages show it (no credentials, no query string).
        self.shown = shown_endpoint(self.url)
        self._compression = config.exporter_compression
        self._headers = {
            **_headers(config),
            "Content-Type": "application/x-protobuf",
            "User-Agent": "runcov",
        }
        if self._compression != "none":
            self._headers["Content-Encoding"] = self._compression
        certificate = _env("CERTIFICATE")
        verify: Any = certificate if certificate else True
        client_cert, client_key = _env("CLIENT_CERTIFICATE"), _env("CLIENT_KEY")
        cert: Any = None
        if client_cert:
            cert = (client_cert, client_key) if client_key else client_cert
        self._senders = _HttpSenders(functools.partial(_new_session, verify, cert))
        self._retry = _Retrying(config.exporter_timeout)
        in_forked_child(self._after_fork_in_child)
        # A transport dropped without close() still stops its idle sender thread.
        weakref.finalize(self, self._senders.close).atexit = False

    def _after_fork_in_child(self) -> None:
        self._senders.after_fork_in_child()

    def send(self, body: bytes) -> bool:
        data = (
            gzip.compress(body, GZIP_LEVEL)
            if self._compression == "gzip"
            else zlib.compress(body, GZIP_LEVEL)
            if self._compression == "deflate"
            else body
        )

        def attempt(remaining: float) -> tuple[bool, bool, Optional[float]]:
            outcome = self._exchange(data, remaining)
            if isinstance(outcome, _Failure):
                self._failed(outcome.message, answered=False)
                if outcome.warn:
                    log.warning(
                        "runcov: span export to %s failed: %s", self.shown, outcome.message
                    )
                else:
                    log.debug("runcov: span export to %s failed: %s", self.shown, outcome.message)
                return outcome.final, False, None
            status = outcome.status
            if 200 <= status < 300:
                _log_partial_success(outcome.body)
                return True, True, None
            self._failed(f"HTTP {status} {outcome.text(200)}".strip(), answered=True)
            if status in _RETRYABLE_HTTP:
                return False, False, _retry_after(outcome.retry_after)
            log.warning(
                "runcov: the receiver at %s refused coverage spans: HTTP %d %s",
                self.shown,
                status,
                outcome.text(200),
            )
            return True, False, None

        return self._retry.run(attempt)

    def _exchange(self, data: bytes, remaining: float) -> _Answer | _Failure:
        """One POST of ``data``, its answer read, within ``remaining`` seconds."""
        job = _Job(self.url, self._headers, data, time.monotonic() + remaining)
        senders = self._senders
        sender = senders.hand_over(job)
        if isinstance(sender, _Inline):
            # Only the socket operations' own timeouts bound it: at exit, with no thread to
            # wait on, this is the last chance for what the process measured to leave.
            session = senders.new_session()
            try:
                return _exchange(session, job)
            finally:
                session.close()
        if sender is None:
            if senders.closed:
                return _Failure("the transport is closed", final=True)
            return _Failure(
                f"{MAX_ABANDONED_SENDERS} earlier exchanges with it still hang", final=True
            )
        answered = job.done.acquire(timeout=min(remaining, threading.TIMEOUT_MAX))
        outcome = job.outcome if answered else senders.give_up(sender, job)
        if outcome is None:
            if senders.closed:
                return _Failure("the transport was closed during the exchange", final=True)
            return _Failure(f"no answer within {remaining:.3g} s", final=True)
        return outcome

    def _release(self) -> None:
        self._senders.close()


class GrpcTransport(_Sender):
    """OTLP/gRPC: the trace service's Export method, fed the encoded bytes unchanged."""

    def __init__(self, config: Config) -> None:
        import grpc

        self._grpc = grpc
        endpoint = config.traces_endpoint()
        parsed = urlparse(endpoint if "://" in endpoint else "//" + endpoint)
        target = parsed.netloc or endpoint
        insecure = config.exporter_insecure()
        if insecure is None:
            env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or os.environ.get(
                "OTEL_EXPORTER_OTLP_INSECURE", ""
            )
            insecure = env.strip().lower() == "true"
        compression = {
            "gzip": grpc.Compression.Gzip,
            "deflate": grpc.Compression.Deflate,
        }.get(config.exporter_compression, grpc.Compression.NoCompression)
        if insecure:
            self._channel = grpc.insecure_channel(target, compression=compression)
        else:
            self._channel = grpc.secure_channel(
                target, _grpc_credentials(grpc), compression=compression
            )
        self.target = target
        self._call = self._channel.unary_unary(
            _TRACE_EXPORT_METHOD,
            request_serializer=None,  # the request is already bytes
            response_deserializer=None,
        )
        self._metadata = tuple(_headers(config).items())
        self._retry = _Retrying(config.exporter_timeout)

    def send(self, body: bytes) -> bool:
        grpc = self._grpc

        def attempt(remaining: float) -> tuple[bool, bool, Optional[float]]:
            try:
                reply = self._call(body, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                name = getattr(code, "name", str(code))
                details = error.details() if hasattr(error, "details") else ""
                # UNAVAILABLE and UNIMPLEMENTED are what a receiver of another protocol, or
                # none, brings; any other code is the receiver's own answer.
                self._failed(
                    f"{name} {details or ''}".strip(),
                    answered=name not in ("UNAVAILABLE", "UNIMPLEMENTED", "DEADLINE_EXCEEDED"),
                )
                if name in _RETRYABLE_GRPC:
                    delay = _grpc_retry_delay(error)
                    # RESOURCE_EXHAUSTED is retried only when the receiver says when (OTLP:
                    # RetryInfo); without it (a message over the receiver's size limit) it is
                    # final, as HTTP 413 is.
                    if name != "RESOURCE_EXHAUSTED" or delay is not None:
                        return False, False, delay
                log.warning(
                    "runcov: the receiver at %s refused coverage spans: %s %s",
                    shown_endpoint(self.target),
                    name,
                    error.details() if hasattr(error, "details") else "",
                )
                return True, False, None
            _log_partial_success(reply)
            return True, True, None

        return self._retry.run(attempt)

    def _release(self) -> None:
        self._channel.close()


def _grpc_retry_delay(error: Any) -> Optional[float]:
    """The delay (seconds) of the ``RetryInfo`` in a gRPC error's status details
    (``grpc-status-details-bin``), None when it carries none."""
    try:
        trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailers or ():
            if key != "grpc-status-details-bin" or not isinstance(value, bytes):
                continue
            from google.rpc import error_details_pb2, status_pb2

            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    delay = info.retry_delay
                    return max(0.0, delay.seconds + delay.nanos / 1e9)
    except Exception:  # a malformed detail: as if none
        return None
    return None


def _grpc_credentials(grpc: Any) -> Any:
    def read(name: str) -> Optional[bytes]:
        path = _env(name)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read("CERTIFICATE"),
        private_key=read("CLIENT_KEY"),
        certificate_chain=read("CLIENT_CERTIFICATE"),
    )


def _log_partial_success(reply: bytes) -> None:
    if not reply:
        return
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        answer = ExportTraceServiceResponse.FromString(reply)
    except Exception:
        return
    partial = answer.partial_success
    if partial.rejected_spans or partial.error_message:
        log.warning(
            "runcov: the receiver rejected %d coverage span(s): %s",
            partial.rejected_spans,
            partial.error_message,
        )


def make_transport(config: Config) -> Transport:
    """The transport for the configured protocol and endpoint."""
    if config.exporter_protocol == "grpc":
        return GrpcTransport(config)
    return HttpTransport(config)
