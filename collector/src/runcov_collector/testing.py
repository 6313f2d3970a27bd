"""Test helpers: runcov OTLP export requests (protobuf, OTLP/JSON) and a collector subprocess."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from runcov_collector.decode import COVERAGE_SPAN, SCOPE_NAME, STATIC_SPAN


def new_trace_id() -> str:
    """A random 32-hex-digit trace id."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """A random 16-hex-digit span id."""
    return os.urandom(8).hex()


def payload(files: Iterable[Mapping[str, Any]]) -> str:
    """The compact JSON ``runcov.payload`` for ``files``."""
    return json.dumps({"v": 1, "files": list(files)}, separators=(",", ":"))


def file_hits(
    path: str, lines: Iterable[int], arcs: Iterable[tuple[int, int]] = (), sha: str = "0" * 16
) -> dict[str, Any]:
    """One file entry of a coverage payload."""
    return {"path": path, "sha": sha, "lines": list(lines), "arcs": [list(a) for a in arcs]}


def file_static(
    path: str,
    lines: Iterable[int],
    arcs: Iterable[tuple[int, int]] = (),
    functions: Iterable[tuple[str, int, int]] = (),
    sha: str = "0" * 16,
) -> dict[str, Any]:
    """One file entry of a static (denominator) payload."""
    entry = file_hits(path, lines, arcs, sha)
    entry["functions"] = [{"name": n, "start": s, "end": e} for n, s, e in functions]
    return entry


def coverage_attributes(
    endpoint: str,
    files: Iterable[Mapping[str, Any]],
    mode: str = "exact",
    part: int = 0,
    parts: int = 1,
    status_class: str = "2xx",
) -> dict[str, Any]:
    """Attributes of a ``runcov.coverage`` span."""
    return {
        "runcov.wire_version": 1,
        "runcov.mode": mode,
        "runcov.endpoint": endpoint,
        "runcov.status_class": status_class,
        "runcov.part": part,
        "runcov.parts": parts,
        "runcov.payload": payload(files),
    }


def static_attributes(
    files: Iterable[Mapping[str, Any]], part: int = 0, parts: int = 1
) -> dict[str, Any]:
    """Attributes of a ``runcov.static`` span."""
    return {
        "runcov.wire_version": 1,
        "runcov.part": part,
        "runcov.parts": parts,
        "runcov.payload": payload(files),
    }


def resource_attributes(
    service: str, version: str = "", environment: str = "", role: str | None = None
) -> dict[str, Any]:
    """Resource attributes of a runcov agent process."""
    attrs: dict[str, Any] = {"service.name": service, "service.version": version}
    if environment:
        attrs["deployment.environment.name"] = environment
    if role is not None:
        attrs["runcov.deployment.role"] = role
    return attrs


def any_value(value: Any) -> AnyValue:
    """``value`` as an OTLP ``AnyValue`` (bool, int, float, str, bytes or a list of those)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, (list, tuple)):
        result = AnyValue()
        result.array_value.values.extend(any_value(v) for v in value)
        return result
    return AnyValue(string_value=str(value))


@dataclass
class SpanSpec:
    """One span to put into a request."""

    name: str
    attributes: Mapping[str, Any]
    trace_id: str = field(default_factory=new_trace_id)
    span_id: str = field(default_factory=new_span_id)
    end_time_unix_nano: int = field(default_factory=time.time_ns)
    scope: str = SCOPE_NAME


def coverage_span(endpoint: str, files: Iterable[Mapping[str, Any]], **kw: Any) -> SpanSpec:
    """A ``runcov.coverage`` span spec; ``trace_id``/``span_id``/... may be given in ``kw``."""
    ids = {k: kw.pop(k) for k in ("trace_id", "span_id", "end_time_unix_nano") if k in kw}
    return SpanSpec(COVERAGE_SPAN, coverage_attributes(endpoint, files, **kw), **ids)


def static_span(files: Iterable[Mapping[str, Any]], **kw: Any) -> SpanSpec:
    """A ``runcov.static`` span spec."""
    ids = {k: kw.pop(k) for k in ("trace_id", "span_id", "end_time_unix_nano") if k in kw}
    return SpanSpec(STATIC_SPAN, static_attributes(files, **kw), **ids)


def trace_request(
    spans: Iterable[SpanSpec], resource: Mapping[str, Any] | None = None
) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` with one resource and one scope per distinct scope."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (resource or {"service.name": "shop"}).items():
        rs.resource.attributes.append(KeyValue(key=key, value=any_value(value)))
    scopes: dict[str, Any] = {}
    for spec in spans:
        if spec.scope not in scopes:
            ss = rs.scope_spans.add()
            ss.scope.name = spec.scope
            scopes[spec.scope] = ss
        span = scopes[spec.scope].spans.add()
        span.trace_id = bytes.fromhex(spec.trace_id)
        span.span_id = bytes.fromhex(spec.span_id)
        span.name = spec.name
        span.kind = Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = max(spec.end_time_unix_nano - 1000, 0)
        span.end_time_unix_nano = spec.end_time_unix_nano
        for key, value in spec.attributes.items():
            span.attributes.append(KeyValue(key=key, value=any_value(value)))
    return request


def _ids_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def to_otlp_json(request: Any) -> bytes:
    """A request message as OTLP/JSON: lowerCamelCase names, hex ids, int64 as strings."""
    doc = json_format.MessageToDict(request)
    _ids_to_hex(doc)
    return json.dumps(doc).encode("utf-8")


LISTENING = re.compile(r"runcov-collector listening http=([\d.]+):(\d+) grpc=(\S+)")


class ServerProcess:
    """``python -m runcov_collector serve --http-port 0 ...`` as a subprocess.

    ``http_port`` is parsed from the line the server prints once it listens.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runcov_collector", "serve", "--http-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.stderr_lines: list[str] = []
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        self.http_port = 0
        ready = threading.Event()
        self._found: list[Any] = []

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                match = LISTENING.search(line)
                if match and not ready.is_set():
                    self._found.append(match)
                    ready.set()
            ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        ready.wait(timeout)
        if not self._found:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("collector did not start:\n" + "".join(self.stderr_lines))
        self.http_port = int(self._found[0].group(2))
        self.base = f"http://127.0.0.1:{self.http_port}"

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def wait(self, timeout: float = 60) -> int:
        """Wait for exit; returns the exit code."""
        code = self.proc.wait(timeout)
        self._stderr_reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
