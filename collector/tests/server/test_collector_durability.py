"""kill -9 loses nothing acknowledged: a collector process on SQLite is SIGKILLed mid-stream."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Iterator

import httpx

from runcov_collector.testing import ServerProcess, coverage_span, file_hits, trace_request

FILES = 8


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}
    env["RUNCOV_COLLECTOR_NO_AUTH"] = "1"
    return env


def _ingest_until_killed(
    base: str, acked: list[tuple[str, int, str]], stop: threading.Event, numbers: Iterator[int]
) -> None:
    """Send one batch after another; record (path, line, trace id) of every 200."""
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            n = next(numbers)  # unique line per batch across all senders
            path, line = f"svc/mod{n % FILES}.py", n
            span = coverage_span("POST /ingest", [file_hits(path, [line])])
            body = trace_request([span], {"service.name": "durable"}).SerializeToString()
            try:
                response = client.post(
                    "/v1/traces", content=body, headers={"content-type": "application/x-protobuf"}
                )
            except httpx.TransportError:
                return  # the server is gone
            if response.status_code == 200:
                acked.append((path, line, span.trace_id))


def test_every_acknowledged_batch_survives_sigkill(tmp_path):
    db = tmp_path / "durable.db"
    args = ("--grpc-port", "-1", "--store", f"sqlite:///{db}", "--retention-hours", "0")
    server = ServerProcess(*args, env=_env())
    acked: list[tuple[str, int, str]] = []
    stop = threading.Event()
    numbers = itertools.count(1)
    senders = [
        threading.Thread(target=_ingest_until_killed, args=(server.base, acked, stop, numbers))
        for _ in range(3)
    ]
    try:
        for sender in senders:
            sender.start()
        while len(acked) < 150 and server.proc.poll() is None:
            threading.Event().wait(0.01)
        server.proc.kill()  # SIGKILL while the senders are still sending
        server.proc.wait(30)
    finally:
        stop.set()
        for sender in senders:
            sender.join(60)
        server.stop()
    assert len(acked) >= 150

    restarted = ServerProcess(*args, env=_env())
    try:
        with httpx.Client(base_url=restarted.base, timeout=30) as client:
            for index in range(FILES):
                path = f"svc/mod{index}.py"
                detail = client.get(
                    "/api/v1/file", params={"service": "durable", "path": path}
                ).json()
                stored = {line: trace for line, _, trace in detail["lines"]}
                for acked_path, line, trace_id in acked:
                    if acked_path == path:
                        assert stored.get(line) == trace_id, (path, line)
            releases = client.get("/api/v1/releases", params={"service": "durable"}).json()
            assert releases["releases"][0]["requests"] >= len(acked)
    finally:
        restarted.stop()
