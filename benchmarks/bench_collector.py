"""Ingest throughput and latency of the runcov collector on SQLite and PostgreSQL.

The payloads are the agent's own: the Flask example shop runs with runcov sampling every
request and exports to a small recording OTLP receiver in this process; the recorded
``runcov.coverage`` and ``runcov.static`` spans (real line/arc sets of real requests, as the
agent encoded them) are then replayed to ``runcov-collector serve`` as raw OTLP/HTTP protobuf
POSTs from several client threads, each span with fresh trace and span ids (so that the
collector's per-part idempotency cannot drop them). Clients honour 429/503 + Retry-After as an
OTLP exporter does.

Reported per (store, spans per request): coverage spans stored per second (sustained over the
run, acknowledged = durably stored), POST latency p50/p99, retries, and a check that the
collector's request count equals the traces sent.

    python benchmarks/bench_collector.py                       # SQLite, and PostgreSQL when
                                                               # RUNCOV_BENCH_PG_URL is set
    python benchmarks/bench_collector.py --pg "$(.ci/pg start)"
    python benchmarks/bench_collector.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import http.client
import http.server
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200 (fails when the process exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, by nearest rank."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# -- recording the agent's real spans ---------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps every ``/v1/traces`` body and answers success."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            self.bodies.append(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def record_spans(requests: int, workdir: Path) -> tuple[Resource, list[Span], list[Span]]:
    """Run the Flask shop with runcov at 100 % against a recorder; its resource and spans."""
    _Recorder.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOV_", "OTEL_"))}
    env.update({
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "RUNCOV_MAX_PER_SECOND": "0",
        "RUNCOV_SATURATION": "0",
        "RUNCOV_METRICS_INTERVAL": "0",
    })
    log = open(workdir / "shop.log", "wb")  # noqa: SIM115 - closed right after
    shop = subprocess.Popen(
        [sys.executable, "-m", "shop_flask", "--port", str(port), "--sample-rate", "1"],
        cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_ready(shop, f"http://127.0.0.1:{port}/health")
        sys.path.insert(0, str(EXAMPLES))
        from traffic import drive

        drive("127.0.0.1", port, requests, threads=4, seed=11)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/flush", data=b"{}",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as response:
            response.read()
    finally:
        stop(shop)
        server.shutdown()
    resource: Optional[Resource] = None
    coverage: list[Span] = []
    static: list[Span] = []
    for body in _Recorder.bodies:
        message = ExportTraceServiceRequest.FromString(body)
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                if ss.scope.name != "runcov":
                    continue
                resource = rs.resource
                for span in ss.spans:
                    (coverage if span.name == "runcov.coverage" else static).append(span)
    if resource is None or not coverage or not static:
        raise RuntimeError(f"recorded no runcov spans ({len(_Recorder.bodies)} bodies); "
                           f"see {workdir / 'shop.log'}")
    return resource, coverage, static


def payload_bytes(span: Span) -> int:
    """Size of a span's ``runcov.payload`` attribute."""
    return sum(len(kv.value.string_value) for kv in span.attributes if kv.key == "runcov.payload")


# -- replaying them ---------------------------------------------------------------------------


def _resource_for(resource: Resource, service: str) -> Resource:
    out = Resource()
    out.CopyFrom(resource)
    del out.attributes[:]
    for kv in resource.attributes:
        if kv.key != "service.name":
            out.attributes.append(kv)
    out.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    return out


def build_bodies(resource: Resource, coverage: list[Span], static: list[Span], service: str,
                 batches: int, per_batch: int, seed: int) -> tuple[bytes, list[bytes]]:
    """The static spans as one body, and ``batches`` bodies of ``per_batch`` coverage spans."""
    rng = random.Random(seed)
    res = _resource_for(resource, service)

    def body(spans: list[Span]) -> bytes:
        scope_spans = ScopeSpans(spans=spans)
        scope_spans.scope.name = "runcov"
        message = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=res, scope_spans=[scope_spans])])
        return message.SerializeToString()

    statics = []
    for span in static:
        fresh = Span()
        fresh.CopyFrom(span)
        fresh.span_id = rng.getrandbits(64).to_bytes(8, "big")
        statics.append(fresh)
    out = []
    for _ in range(batches):
        spans = []
        for _ in range(per_batch):
            fresh = Span()
            fresh.CopyFrom(rng.choice(coverage))
            fresh.trace_id = rng.getrandbits(128).to_bytes(16, "big")
            fresh.span_id = rng.getrandbits(64).to_bytes(8, "big")
            fresh.parent_span_id = rng.getrandbits(64).to_bytes(8, "big")
            now = time.time_ns()
            fresh.start_time_unix_nano = now
            fresh.end_time_unix_nano = now + 1000
            spans.append(fresh)
        out.append(body(spans))
    return body(statics), out


class Sender(threading.Thread):
    """One client connection posting its share of the bodies."""

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.bodies = bodies
        self.latencies: list[float] = []
        self.retries = 0
        self.rejected = 0
        self.failures = 0

    def run(self) -> None:
        """POST every body until it is accepted (honouring Retry-After)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/x-protobuf"}
        try:
            for body in self.bodies:
                for _attempt in range(50):
                    started = time.perf_counter()
                    try:
                        conn.request("POST", "/v1/traces", body=body, headers=headers)
                        response = conn.getresponse()
                        payload = response.read()
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                        self.retries += 1
                        continue
                    if response.status == 200:
                        self.latencies.append(time.perf_counter() - started)
                        answer = ExportTraceServiceResponse.FromString(payload)
                        self.rejected += answer.partial_success.rejected_spans
                        break
                    if response.status in (429, 503):
                        self.retries += 1
                        time.sleep(min(1.0, float(response.headers.get("Retry-After", "1"))))
                        continue
                    self.failures += 1
                    break
                else:
                    self.failures += 1
        finally:
            conn.close()


def releases(url: str, service: str) -> list[dict[str, Any]]:
    """The collector's releases of ``service``."""
    with urllib.request.urlopen(f"{url}/api/v1/releases?service={service}", timeout=30) as r:
        return list(json.loads(r.read())["releases"])


def run_store(store_url: str, label: str, workdir: Path, recorded: tuple[Any, Any, Any],
              batch_sizes: list[int], spans: int, threads: int) -> list[dict[str, Any]]:
    """Start a collector on ``store_url`` and replay the spans for each batch size."""
    port = free_port()
    log = open(workdir / f"collector-{label}.log", "wb")  # noqa: SIM115 - closed right after
    collector = subprocess.Popen(
        [str(BIN / "runcov-collector"), "serve", "--http-port", str(port), "--grpc-port", "-1",
         "--store", store_url, "--no-auth", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        wait_ready(collector, url + "/readyz")
        for per_batch in batch_sizes:
            service = f"bench-{label}-{per_batch}-{uuid.uuid4().hex[:8]}"
            batches = max(threads, spans // per_batch)
            static_body, bodies = build_bodies(*recorded, service, batches, per_batch, per_batch)
            warm = Sender(port, [static_body])
            warm.run()
            senders = [Sender(port, bodies[i::threads]) for i in range(threads)]
            started = time.perf_counter()
            for s in senders:
                s.start()
            for s in senders:
                s.join()
            seconds = time.perf_counter() - started
            latencies = sorted(x for s in senders for x in s.latencies)
            sent = batches * per_batch
            stored = sum(r["requests"] for r in releases(url, service))
            result = {
                "store": label,
                "spans_per_request": per_batch,
                "threads": threads,
                "spans": sent,
                "seconds": round(seconds, 3),
                "spans_per_second": sent / seconds,
                "p50_ms": percentile(latencies, 0.5) * 1e3,
                "p99_ms": percentile(latencies, 0.99) * 1e3,
                "retries": sum(s.retries for s in senders),
                "rejected": sum(s.rejected for s in senders),
                "failures": sum(s.failures for s in senders) + warm.failures,
                "requests_stored": stored,
            }
            results.append(result)
            print(f"{label:<10} {per_batch:>4} spans/request: {result['spans_per_second']:8.0f} "
                  f"spans/s, p50 {result['p50_ms']:7.2f} ms, p99 {result['p99_ms']:7.2f} ms, "
                  f"retries {result['retries']}, stored {stored}/{sent}",
                  file=sys.stderr, flush=True)
    finally:
        stop(collector)
    return results


def fresh_database(url: str) -> tuple[str, str]:
    """Create an empty database next to ``url``'s; returns its URL and name.

    The benchmark never writes into a database others may use (test suites reset theirs).
    """
    import psycopg

    name = f"runcov_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}", name


def drop_database(url: str, name: str) -> None:
    """Drop a database made by :func:`fresh_database`."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A Markdown table of the results."""
    lines = [
        f"Python {meta['python']}, {meta['cpus']} CPUs, {meta['date']}; {meta['threads']} client "
        f"threads, raw OTLP/HTTP protobuf POSTs of recorded agent spans "
        f"(median coverage span payload {meta['median_payload_bytes']} bytes)",
        "",
        "| store | spans/request | spans | spans/s | POST p50 ms | POST p99 ms | 429/503 retries "
        "| stored/sent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['store']} | {r['spans_per_request']} | {r['spans']} "
            f"| {r['spans_per_second']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['retries']} | {r['requests_stored']}/{r['spans']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; non-zero when the collector lost or rejected spans."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pg", default=os.environ.get("RUNCOV_BENCH_PG_URL"),
                        help="PostgreSQL URL (e.g. from `.ci/pg start`) whose user may create "
                             "databases: the run uses a fresh database, dropped at the end; "
                             "skipped when unset")
    parser.add_argument("--spans", type=int, default=20_000, help="coverage spans per run")
    parser.add_argument("--batch-sizes", default="10,100",
                        help="coverage spans per OTLP request, comma-separated")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke run (2,000 spans)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.spans = 2_000
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="runcov-bench-collector-"))
    try:
        recorded = record_spans(300, workdir)
        sizes = sorted(payload_bytes(span) for span in recorded[1])
        print(f"recorded {len(recorded[1])} coverage spans and {len(recorded[2])} static spans "
              "from the Flask shop", file=sys.stderr, flush=True)
        results = run_store(f"sqlite:///{workdir / 'collector.db'}", "sqlite", workdir, recorded,
                            batch_sizes, args.spans, args.threads)
        if args.pg:
            pg_url, pg_name = fresh_database(args.pg)
            try:
                results += run_store(pg_url, "postgresql", workdir, recorded, batch_sizes,
                                     args.spans, args.threads)
            finally:
                drop_database(args.pg, pg_name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": args.threads,
        "median_payload_bytes": sizes[len(sizes) // 2],
    }
    print(render(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lost = [r for r in results if r["requests_stored"] != r["spans"] or r["failures"]
            or r["rejected"]]
    if lost:
        print(f"collector lost or rejected spans in {len(lost)} run(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
