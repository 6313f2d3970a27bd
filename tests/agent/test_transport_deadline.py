"""The OTLP/HTTP transport's deadline holds whatever the receiver does.

``requests``' timeout bounds each socket operation, not an exchange: these receivers (real
HTTP/1.1 servers on loopback, written with sockets so that they can misbehave on purpose)
trickle their headers or body, send a body without end, or never answer, and every send must
still come back by the configured OTLP timeout.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import certifi
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from runcov.config import Config, load_config
from runcov.export import exporter as exporter_module
from runcov.export import transport as transport_module
from runcov.export.exporter import CoverageExporter
from runcov.export.transport import HttpTransport
from runcov.resource import build_resource
from tests.agent.test_exporter import record

#: The OTLP timeout of these tests (seconds), and how much later than it a send may return on
#: a loaded machine.
TIMEOUT = 1.0
MARGIN = 1.5
#: A trickling receiver sends one byte this often (seconds)...
TRICKLE_EVERY = 0.2
#: ...for at most this long, then closes the connection (so that a transport without an
#: overall deadline fails these tests in seconds rather than hanging on them).
TRICKLE_FOR = 5.0
#: Abandoned senders alive at once, at most.
BOUND = getattr(transport_module, "MAX_ABANDONED_SENDERS", 2)
REPLY = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
BODY = b"\x0a\x00" * 100


class Receiver:
    """An HTTP/1.1 receiver on ``127.0.0.1`` that answers each request as ``mode`` says:

    * ``ok``: 200 with an empty ``ExportTraceServiceResponse``, connection kept alive;
    * ``trickle_headers``: the status line and headers one byte every TRICKLE_EVERY seconds;
    * ``trickle_body``: the headers at once, then the body one byte at a time;
    * ``endless_body``: a 200 whose body never ends, as fast as the client reads it;
    * ``endless_redirect``: the same with a 307 to ``/elsewhere``;
    * ``redirect``: a 307 to ``/elsewhere``, which answers ``ok``;
    * ``silent``: reads the request and never answers.
    """

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.mode = "ok"
        self.tls = tls
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        #: Paths of the requests, in order.
        self.paths: list[str] = []
        #: Bytes of endless bodies sent, and set when the client stopped reading one.
        self.endless_sent = 0
        self.endless_cut = threading.Event()
        self.stopping = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        scheme = "https" if tls is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self._server.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Receiver:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering and close every connection (what a stuck client waits on ends)."""
        self.stopping.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as rfile:
                while True:
                    path = self._read_request(conn, rfile)
                    if path is None:
                        return
                    with self.lock:
                        self.requests += 1
                        self.paths.append(path)
                    conn.settimeout(0.05)  # (sending: to notice a stop or a client gone)
                    if not self._answer(conn, path):
                        return
        except OSError:
            pass

    def _read_request(self, conn: socket.socket, rfile: Any) -> Optional[str]:
        """Read one request, and return its path; None when the client closed the connection
        (or on stop). An idle kept-alive connection is waited on with ``select``: a timeout
        inside the file object would leave it unusable (a read after one raises), which
        closed connections that sat idle for a moment."""
        while not self.stopping.is_set():
            pending = conn.pending() if isinstance(conn, ssl.SSLSocket) else 0  # decrypted
            if not pending and not select.select([conn], [], [], 0.05)[0]:
                continue
            conn.settimeout(5.0)  # the request itself arrives at once
            line = rfile.readline()
            if not line:
                return None
            path = line.split()[1].decode("latin-1")
            length = 0
            while line not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                line = rfile.readline()
            body = b""
            while len(body) < length:
                chunk = rfile.read(length - len(body))
                if not chunk:
                    return None
                body += chunk
            return path
        return None

    def _answer(self, conn: socket.socket, path: str) -> bool:
        """Answer one request; False when the connection is done with."""
        mode = "ok" if path == "/elsewhere" else self.mode
        status = b"200 OK"
        if mode in ("redirect", "endless_redirect"):
            status = b"307 Temporary Redirect\r\nLocation: /elsewhere"
        head = (
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/x-protobuf\r\nX-Padding: "
            + b"p" * 200
            + b"\r\nContent-Length: %d\r\n\r\n"
        )
        if mode == "redirect":
            conn.sendall(head % 0)
            return True
        if mode == "ok":
            conn.sendall(head % len(REPLY) + REPLY)
            return True
        if mode == "silent":
            self.stopping.wait()
            return False
        if mode == "trickle_headers":
            self._trickle(conn, head % len(REPLY) + REPLY)
            return False
        if mode == "trickle_body":
            conn.sendall(head % 1000)
            self._trickle(conn, b"\x00" * 1000)
            return False
        if mode in ("endless_body", "endless_redirect"):
            conn.sendall(head % 10**12)
            chunk = b"\x00" * 65536
            end = time.monotonic() + TRICKLE_FOR
            while not self.stopping.is_set() and time.monotonic() < end:
                try:
                    conn.sendall(chunk)
                except socket.timeout:
                    continue
                except OSError:  # the client closed the connection
                    self.endless_cut.set()
                    break
                self.endless_sent += len(chunk)
            return False
        raise AssertionError(f"unknown mode {mode}")

    def _trickle(self, conn: socket.socket, data: bytes) -> None:
        end = time.monotonic() + TRICKLE_FOR
        for i in range(len(data)):
            if self.stopping.wait(TRICKLE_EVERY) or time.monotonic() >= end:
                return
            conn.sendall(data[i : i + 1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make_config(receiver: Receiver, **kw: Any) -> Config:
    kw.setdefault("exporter_timeout", TIMEOUT)
    return load_config(
        environ={},
        exporter_endpoint=receiver.endpoint,
        exporter_protocol="http/protobuf",
        **kw,
    )


def timed_send(transport: HttpTransport, body: bytes = BODY) -> tuple[bool, float]:
    start = time.monotonic()
    ok = transport.send(body)
    return ok, time.monotonic() - start


def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "runcov-otlp-http"]


def non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()}


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("mode", ["trickle_headers", "trickle_body"])
def test_a_trickled_answer_fails_the_send_at_the_deadline(receiver: Receiver, mode: str) -> None:
    receiver.mode = mode
    transport = HttpTransport(make_config(receiver))
    try:
        ok, elapsed = timed_send(transport)
        assert ok is False
        assert elapsed < TIMEOUT + MARGIN, elapsed
        assert receiver.requests == 1  # a timeout is not retried: the deadline is spent
    finally:
        transport.close()


@pytest.mark.parametrize("mode", ["endless_body", "endless_redirect"])
def test_an_endless_answer_is_cut_off(
    receiver: Receiver, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The answer is read up to MAX_ANSWER_BYTES (a redirect's too, which requests would read
    # in full): no receiver holds the sender or its memory by sending more, and such an answer
    # is no OTLP answer (a failure, not retried).
    receiver.mode = mode
    transport = HttpTransport(make_config(receiver))
    try:
        with caplog.at_level(logging.WARNING, logger="runcov"):
            ok, elapsed = timed_send(transport)
        assert ok is False
        assert elapsed < TIMEOUT + MARGIN, elapsed
        assert receiver.requests == 1
        assert any("more than" in r.getMessage() for r in caplog.records), caplog.records
        # The client stopped reading (what it did not read filled the sockets' buffers).
        assert receiver.endless_cut.wait(TRICKLE_FOR / 2)
        assert receiver.endless_sent < 64 * 1024 * 1024
    finally:
        transport.close()


def test_a_redirect_is_still_followed(receiver: Receiver) -> None:
    receiver.mode = "redirect"
    transport = HttpTransport(make_config(receiver))
    try:
        assert transport.send(BODY)
    finally:
        transport.close()
    assert receiver.paths == ["/v1/traces", "/elsewhere"]


def test_a_healthy_receiver_answers_over_one_kept_alive_connection(receiver: Receiver) -> None:
    transport = HttpTransport(make_config(receiver))
    try:
        assert all(transport.send(BODY) for _ in range(5))
    finally:
        transport.close()
    assert receiver.requests == 5
    assert receiver.connections == 1


def test_after_an_abandoned_send_the_next_one_succeeds(receiver: Receiver) -> None:
    receiver.mode = "trickle_headers"
    transport = HttpTransport(make_config(receiver))
    try:
        ok, elapsed = timed_send(transport)
        assert ok is False and elapsed < TIMEOUT + MARGIN, elapsed
        receiver.mode = "ok"
        ok, elapsed = timed_send(transport)
        assert ok is True and elapsed < TIMEOUT, elapsed
        assert transport.send(BODY)
    finally:
        transport.close()
    # The abandoned exchange's connection stays with its sender; the next ones share a new one.
    assert receiver.connections == 2
    assert receiver.requests == 3


def test_an_abandoned_sender_is_cut_loose_at_once(receiver: Receiver) -> None:
    receiver.mode = "trickle_headers"
    before = len(sender_threads())
    transport = HttpTransport(make_config(receiver))
    try:
        ok, elapsed = timed_send(transport)
        assert ok is False and elapsed < TIMEOUT + MARGIN, elapsed
        # Its connection was shut down: the sender ends now, not when the receiver stops
        # trickling (TRICKLE_FOR after the request).
        start = time.monotonic()
        assert wait_until(lambda: len(sender_threads()) <= before, MARGIN), sender_threads()
        assert time.monotonic() - start < TRICKLE_FOR - TIMEOUT
    finally:
        transport.close()


def test_sends_succeed_once_a_trickling_receiver_answers_again(receiver: Receiver) -> None:
    # More failed sends in a row than abandoned senders may run: each still reaches the
    # receiver, and the first send after it recovers succeeds while the connections it
    # trickled on would still be trickling.
    receiver.mode = "trickle_headers"
    transport = HttpTransport(make_config(receiver))
    try:
        start = time.monotonic()
        for _ in range(BOUND + 1):
            ok, elapsed = timed_send(transport)
            assert ok is False and elapsed > TIMEOUT / 2, elapsed
        assert receiver.requests == BOUND + 1
        receiver.mode = "ok"
        ok, elapsed = timed_send(transport)
        assert ok is True, elapsed
        assert time.monotonic() - start < (BOUND + 1) * (TIMEOUT + MARGIN)
    finally:
        transport.close()
    assert receiver.requests == BOUND + 2


def test_an_abandoned_tls_sender_is_cut_loose_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    command += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
    # A CA bundle named for requests in general does not replace the OTLP one.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    before = len(sender_threads())
    with Receiver(tls=context) as receiver:
        transport = HttpTransport(make_config(receiver))
        try:
            assert transport.send(BODY)  # the receiver's certificate is trusted
            receiver.mode = "trickle_headers"
            ok, elapsed = timed_send(transport)
            assert ok is False and elapsed < TIMEOUT + MARGIN, elapsed
            assert wait_until(lambda: len(sender_threads()) <= before, MARGIN), sender_threads()
            receiver.mode = "ok"
            assert transport.send(BODY)
        finally:
            transport.close()
        assert receiver.requests == 3 and receiver.connections == 2


def test_abandoned_senders_are_bounded_and_end_with_their_exchange(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Senders whose sockets cannot be shut down (a SOCKS proxy's, one still connecting).
    monkeypatch.setattr(transport_module._HttpSender, "cut", lambda self: None)
    receiver.mode = "trickle_headers"
    before = len(sender_threads())
    transport = HttpTransport(make_config(receiver))
    try:
        for _ in range(BOUND):
            ok, elapsed = timed_send(transport)
            assert ok is False and elapsed < TIMEOUT + MARGIN, elapsed
        # Every sender is stuck: the next attempt fails at once, without another thread.
        ok, elapsed = timed_send(transport)
        assert ok is False and elapsed < TIMEOUT / 2, elapsed
        assert receiver.requests == BOUND
        assert len(sender_threads()) - before <= BOUND
    finally:
        transport.close()
        receiver.stop()  # closes the trickling connections: the stuck senders return
    assert wait_until(lambda: len(sender_threads()) <= before, 5), sender_threads()


def test_close_wakes_a_send_that_waits_for_a_silent_receiver(receiver: Receiver) -> None:
    receiver.mode = "silent"
    transport = HttpTransport(make_config(receiver))
    try:
        ok, elapsed = timed_send(transport)
        assert ok is False and elapsed < TIMEOUT + MARGIN, elapsed
    finally:
        transport.close()
    # A long timeout, and the transport closed (as the exporter's shutdown does) mid-send.
    transport = HttpTransport(make_config(receiver, exporter_timeout=8))
    result: list[Optional[bool]] = [None]
    thread = threading.Thread(target=lambda: result.__setitem__(0, transport.send(BODY)))
    thread.start()
    try:
        assert wait_until(lambda: receiver.requests == 2, 5)
        start = time.monotonic()
        transport.close()
        thread.join(MARGIN)
        assert not thread.is_alive()
        assert result[0] is False
        assert time.monotonic() - start < MARGIN
        assert transport.send(BODY) is False  # closed
    finally:
        receiver.stop()
        thread.join(10)


def test_exporter_shutdown_with_a_stuck_sender_keeps_its_budget(
    receiver: Receiver, tmp_path: Path
) -> None:
    src = tmp_path / "app"
    (src / "shop").mkdir(parents=True)
    (src / "shop" / "views.py").write_text("def checkout(cart):\n    return 1\n" * 4)
    receiver.mode = "trickle_headers"
    config = make_config(receiver, exporter_timeout=10, source=[str(src)])
    threads_before = non_daemon_threads()
    exporter = CoverageExporter(config, build_resource(config))
    assert exporter.submit(record(src))
    assert exporter.flush(0.5) is False  # the worker now waits for a trickling receiver
    assert wait_until(lambda: receiver.requests == 1, 5)
    worker = exporter._worker
    assert worker is not None
    start = time.monotonic()
    exporter.shutdown(1.0)
    assert time.monotonic() - start < 1.0 + MARGIN
    # The worker is free at once (not when the receiver lets go), and no thread that would
    # keep the interpreter from exiting was left behind.
    worker.join(MARGIN)
    assert not worker.is_alive()
    assert non_daemon_threads() <= threads_before
    assert exporter.counters()["export_failed"] == 1


def test_exporter_flush_is_bounded_by_the_timeout(receiver: Receiver, tmp_path: Path) -> None:
    src = tmp_path / "app"
    (src / "shop").mkdir(parents=True)
    (src / "shop" / "views.py").write_text("def checkout(cart):\n    return 1\n" * 4)
    receiver.mode = "trickle_body"
    config = make_config(receiver, source=[str(src)])
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src))
        start = time.monotonic()
        assert exporter.flush(30) is False
        assert time.monotonic() - start < TIMEOUT + MARGIN
        receiver.mode = "ok"
        assert exporter.submit(record(src))
        assert exporter.flush(30) is True
    finally:
        exporter.shutdown(5)
    counters = exporter.counters()
    assert counters["export_failed"] == 1 and counters["requests_exported"] == 1


def test_a_forked_child_sends_over_its_own_connection(receiver: Receiver) -> None:
    transport = HttpTransport(make_config(receiver))
    try:
        assert transport.send(BODY)
        with warnings.catch_warnings():
            # CPython warns that forking a threaded process may deadlock; the transport's
            # fork hook exists precisely for this.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child: the parent's sender thread and connection are not its own
            code = 1
            try:
                code = 0 if transport.send(BODY) and transport.send(BODY) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert done == pid and os.waitstatus_to_exitcode(status) == 0
        assert transport.send(BODY)  # the parent goes on over its connection
    finally:
        transport.close()
    assert receiver.requests == 4
    assert receiver.connections == 2


def test_a_hanging_receiver_costs_one_timeout_per_round_of_sends(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One span per export request: the round has four (three coverage spans, one static).
    monkeypatch.setattr(exporter_module, "MAX_EXPORT_SPANS", 1)
    src = tmp_path / "app"
    (src / "shop").mkdir(parents=True)
    (src / "shop" / "views.py").write_text("def checkout(cart):\n    return 1\n" * 4)
    receiver.mode = "trickle_headers"
    config = make_config(receiver, source=[str(src)])
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert all(exporter.submit(record(src, trace_id=i + 1)) for i in range(3))
        start = time.monotonic()
        assert exporter.flush(30) is False
        assert time.monotonic() - start < TIMEOUT + MARGIN
        assert receiver.requests == 1  # the rest of the round was not sent
        counters = exporter.counters()
        assert counters["export_failed"] == 3 and counters["spans_failed"] == 4
    finally:
        exporter.shutdown(5)


EXIT_SCRIPT = """
import atexit, sys
from runcov.config import load_config
from runcov.export.transport import HttpTransport

transport = HttpTransport(load_config(exporter_endpoint=sys.argv[1], exporter_timeout=5.0))

def last_send():
    # At exit, as the agent's final flush: CPython 3.12+ starts no thread any more.
    print("sent" if transport.send(bytes.fromhex(sys.argv[2])) else "failed", flush=True)

atexit.register(last_send)
"""


def test_a_send_at_interpreter_exit_is_made_on_the_callers_thread() -> None:
    """The agent's last flush runs from an atexit handler, when CPython 3.12+ refuses to start
    threads: the exchange is then made on the caller's thread instead of failing."""
    from tests.fresh import run_python

    with Receiver() as receiver:
        done = run_python("-c", EXIT_SCRIPT, receiver.endpoint, BODY.hex(), timeout=60)
        assert done.stdout.strip() == "sent", done.stdout + done.stderr
        assert receiver.requests == 1
