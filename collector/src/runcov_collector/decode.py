"""Decode OTLP export requests (protobuf or OTLP/JSON) into validated ``model.Batch`` objects."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from runcov_collector import limits
from runcov_collector.model import (
    ROLES,
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    FunctionRange,
    MetricPoint,
    Release,
    StaticPart,
)

SCOPE_NAME = "runcov"
COVERAGE_SPAN = "runcov.coverage"
STATIC_SPAN = "runcov.static"
MODES = ("exact", "census")
MAX_ERROR_MESSAGES = 5
"""How many individual rejection messages the partial_success error_message spells out."""

_SHA_RE = re.compile(r"[0-9a-f]{8,64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Control characters, refused in every name and path: C0, DEL and C1 (U+009B is the 8-bit
CSI, which terminals that honour C1 act on like ``ESC [``), and Unicode's Bidi_Control
characters (marks, embeddings, overrides and isolates), which reorder how a path or name is
displayed: ``pkg/adm<U+202E>nig.py`` shows as another file name, on the dashboard and in the CLI."""
_DRIVE_RE = re.compile(r"[A-Za-z]:")

M = TypeVar("M", bound=Message)


class MalformedRequest(ValueError):
    """The request body does not parse as an OTLP export request (HTTP 400, INVALID_ARGUMENT)."""


class Rejected(ValueError):
    """One runcov span or data point is invalid; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodeResult:
    """What one export request yielded: the batch to store and the accounting of the rest."""

    batch: Batch = field(default_factory=Batch)
    accepted: int = 0
    """runcov spans (or data points) kept."""
    rejected: int = 0
    """runcov spans (or data points) refused; reported in ``partial_success``."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Items ignored without error, by why (``foreign_scope``, ``unknown_span``...)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Rejections by reason."""
    messages: list[str] = field(default_factory=list)

    def reject(self, what: str, exc: Rejected) -> None:
        """Record one rejected item with its message."""
        self.rejected += 1
        self.reasons[exc.reason] += 1
        if len(self.messages) < MAX_ERROR_MESSAGES:
            self.messages.append(f"{what}: {exc}")

    @property
    def error_message(self) -> str:
        """The ``partial_success.error_message``: the first few rejections, then a count."""
        if not self.rejected:
            return ""
        text = "; ".join(self.messages)
        more = self.rejected - len(self.messages)
        if more > 0:
            text += f"; and {more} more rejected"
        return text


IdErrors = dict[tuple[int, ...], str]
"""Why an OTLP/JSON id of a span or of one of its links could not be read (``trace_id 'zz' is
not hex``, ``links[1].span_id 'zz' is not hex``), by the indexes of the span in
``resource_spans``, ``scope_spans`` and ``spans``; for metrics, why an exemplar id of a data
point could not be read, by the indexes of the point in ``resource_metrics``,
``scope_metrics``, ``metrics`` and its ``data_points``."""


# ---------------------------------------------------------------------------------------------
# Parsing bodies


def parse_traces(
    body: bytes, json_body: bool, id_errors: IdErrors | None = None
) -> ExportTraceServiceRequest:
    """Parse an ``ExportTraceServiceRequest`` from protobuf bytes or OTLP/JSON.

    OTLP/JSON writes ids in hex. A span's ``traceId``, ``spanId`` or ``parentSpanId``, or a
    ``traceId`` or ``spanId`` of one of its links, that is not hex is read as empty, and said
    so in ``id_errors`` (when given): ``decode_traces`` rejects that span with it.
    """
    return _parse(
        body, json_body, ExportTraceServiceRequest, lambda doc: _fix_trace_json(doc, id_errors)
    )


def parse_metrics(
    body: bytes, json_body: bool, id_errors: IdErrors | None = None
) -> ExportMetricsServiceRequest:
    """Parse an ``ExportMetricsServiceRequest`` from protobuf bytes or OTLP/JSON.

    An exemplar's ``traceId`` or ``spanId`` that is not hex is read as empty, and said so in
    ``id_errors`` (when given): ``decode_metrics`` rejects the exemplar's data point with it.
    """
    return _parse(
        body,
        json_body,
        ExportMetricsServiceRequest,
        lambda doc: _fix_metrics_json(doc, id_errors),
    )


def _parse(body: bytes, json_body: bool, cls: type[M], fix: Callable[[Any], None]) -> M:
    msg = cls()
    if not json_body:
        try:
            msg.ParseFromString(body)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            raise MalformedRequest(f"body is not a valid {cls.__name__} protobuf: {exc}") from exc
        return msg
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedRequest(
            f"body must be a JSON object ({cls.__name__}), not {type(doc).__name__}"
        )
    try:
        _check_shape(doc, cls.DESCRIPTOR)
        fix(doc)
        json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedRequest(f"body is not a valid OTLP/JSON {cls.__name__}: {exc}") from exc
    return msg


_JSON_TYPES = ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"))


def _json_type(value: Any) -> str:
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return "an array" if isinstance(value, list) else "an object"


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5; older ones only have ``label``
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _json_fields(descriptor: Any) -> dict[str, Any]:
    """A message's fields by the names OTLP/JSON may use: the lowerCamelCase and the proto one."""
    fields = {f.json_name: f for f in descriptor.fields}
    fields.update((f.name, f) for f in descriptor.fields)
    return fields


def _check_shape(doc: dict[str, Any], descriptor: Any) -> None:
    """Require a JSON object wherever the request has a message (or an array of them).

    ``json_format`` reads a string or number given for a message as an object of unknown keys,
    so ``"spans": ["x"]`` would become an empty span and be skipped with a 200. Raises
    ``ValueError`` naming the first misplaced value; nulls are left to ``json_format``.
    """
    pending: list[tuple[dict[str, Any], Any, str]] = [(doc, descriptor, "")]
    while pending:
        node, desc, where = pending.pop()
        known = _json_fields(desc)
        given: dict[str, str] = {}
        for key, value in node.items():
            field = known.get(key)
            if field is None:
                continue
            name = f"{where}.{key}" if where else key
            twice = given.setdefault(field.name, key)
            if twice != key:
                # json_format would keep one of the two without a word.
                raise ValueError(f"{name} is given twice, also as {twice!r}")
            if field.message_type is None or value is None:
                continue
            if not _is_repeated(field):
                if not isinstance(value, dict):
                    raise ValueError(f"{name} must be a JSON object, not {_json_type(value)}")
                pending.append((value, field.message_type, name))
                continue
            if not isinstance(value, list):
                continue  # json_format refuses a non-array for a repeated field itself
            for index, item in enumerate(value):
                if item is not None and not isinstance(item, dict):
                    raise ValueError(
                        f"{name}[{index}] must be a JSON object, not {_json_type(item)}"
                    )
                if item is not None:
                    pending.append((item, field.message_type, f"{name}[{index}]"))


def _hex_to_b64(value: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64 for bytes fields.
    Raises ``ValueError`` for a string that is not hex."""
    if not isinstance(value, str):
        return value
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


_ID_KEYS = {
    "traceId": "trace_id",
    "spanId": "span_id",
    "trace_id": "trace_id",
    "span_id": "span_id",
}
"""The id fields of links and exemplars, by their OTLP/JSON names."""
_SPAN_ID_KEYS = {**_ID_KEYS, "parentSpanId": "parent_span_id", "parent_span_id": "parent_span_id"}
"""The id fields of spans."""


def _fix_ids(obj: Any, keys: dict[str, str] = _ID_KEYS) -> str | None:
    """Turn the hex ids of ``obj`` (the fields ``keys`` names) into base64; returns why the
    first id that is not hex could not be read, None when all could.

    An id that is not hex becomes empty bytes, and the span or data point it belongs to (if
    the collector keeps it) is rejected on its own with the returned reason, instead of
    failing the whole request.
    """
    error = None
    if isinstance(obj, dict):
        for key, name in keys.items():
            if key not in obj:
                continue
            if obj[key] is None:  # (json_format would read it as an absent id)
                error = error or f"{name} is null"
                obj[key] = ""
                continue
            try:
                obj[key] = _hex_to_b64(obj[key])
            except ValueError:
                error = error or f"{name} {_show(obj[key])} is not hex"
                obj[key] = ""
    return error


def _fix_ids_of(items: list[Any], label: str) -> str | None:
    """:func:`_fix_ids` of each of ``items`` (a span's links, a point's exemplars): why the
    first id that is not hex could not be read, named by its item (``links[1].span_id 'zz'
    is not hex``), None when all could. Every item's ids are turned: one left in hex would
    fail the whole request's parsing."""
    error = None
    for n, item in enumerate(items):
        item_error = _fix_ids(item)
        if item_error is not None:
            error = error or f"{label}[{n}].{item_error}"
    return error


def _items(obj: Any, *keys: str) -> list[Any]:
    """``obj[key]`` for the first present key if it is a list of objects, else []."""
    if not isinstance(obj, dict):
        return []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return value
    return []


def _fix_trace_json(doc: Any, id_errors: IdErrors | None) -> None:
    for i, rs in enumerate(_items(doc, "resourceSpans", "resource_spans")):
        for j, ss in enumerate(_items(rs, "scopeSpans", "scope_spans")):
            for k, span in enumerate(_items(ss, "spans")):
                error = _fix_ids(span, _SPAN_ID_KEYS)
                # A link id that is not hex makes the span as malformed as its own id would:
                # the span is rejected naming the link, rather than kept with a link to nothing.
                # (The links are turned even when the span's own id failed: one left in hex
                # would fail the whole request's parsing.)
                link_error = _fix_ids_of(_items(span, "links"), "links")
                error = error or link_error
                if error is not None and id_errors is not None:
                    id_errors[i, j, k] = error


def _fix_metrics_json(doc: Any, id_errors: IdErrors | None) -> None:
    kinds = ("sum", "gauge", "histogram", "exponentialHistogram", "exponential_histogram")
    for i, rm in enumerate(_items(doc, "resourceMetrics", "resource_metrics")):
        for j, sm in enumerate(_items(rm, "scopeMetrics", "scope_metrics")):
            for k, metric in enumerate(_items(sm, "metrics")):
                if not isinstance(metric, dict):
                    continue
                for kind in kinds:
                    points = _items(metric.get(kind), "dataPoints", "data_points")
                    for p, point in enumerate(points):
                        error = _fix_ids_of(_items(point, "exemplars"), "exemplars")
                        # Only the point is rejected (its metric's other points, and the rest
                        # of the request, are kept): an exemplar is no part of what is stored.
                        if error is not None and id_errors is not None:
                            id_errors[i, j, k, p] = f"data_points[{p}].{error}"


# ---------------------------------------------------------------------------------------------
# Resource → Release


def _attr_map(attributes: Any) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in attributes}


def _resource_str(attrs: dict[str, AnyValue], key: str, default: str) -> str:
    value = attrs.get(key)
    if value is None:
        return default
    if value.WhichOneof("value") != "string_value":
        raise Rejected("resource", f"resource attribute {key} must be a string")
    return _check_name(value.string_value, f"resource attribute {key}", "resource")


def release_of(resource: Resource) -> Release:
    """The release key of a resource (wire format "Resource"); raises ``Rejected``."""
    attrs = _attr_map(resource.attributes)
    service = _resource_str(attrs, "service.name", "") or "unknown_service"
    version = _resource_str(attrs, "service.version", "")
    if "deployment.environment.name" in attrs:
        environment = _resource_str(attrs, "deployment.environment.name", "")
    else:
        environment = _resource_str(attrs, "deployment.environment", "")
    role = _resource_str(attrs, "runcov.deployment.role", "") or "baseline"
    if role not in ROLES:
        raise Rejected(
            "role", f"runcov.deployment.role {_show(role)} is not one of {', '.join(ROLES)}"
        )
    return Release(service=service, version=version, environment=environment, role=role)


def _instance_of(resource: Resource) -> str:
    attrs = _attr_map(resource.attributes)
    return _resource_str(attrs, "service.instance.id", "")


# ---------------------------------------------------------------------------------------------
# Traces


def decode_traces(
    request: ExportTraceServiceRequest,
    now_ns: int | None = None,
    id_errors: IdErrors | None = None,
) -> DecodeResult:
    """Turn a parsed trace export into a ``DecodeResult``.

    Spans of other instrumentation scopes are counted and skipped without looking at them.
    Each invalid runcov span is rejected on its own, as is one with an id in ``id_errors``
    (from ``parse_traces``); the rest of the request is kept.
    Raises ``MalformedRequest`` when the request holds more spans than allowed.
    """
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if total > limits.MAX_SPANS_PER_REQUEST:
        raise MalformedRequest(
            f"request has {total} spans, more than the limit of {limits.MAX_SPANS_PER_REQUEST}"
        )
    now_ns = now_ns if now_ns is not None else time.time_ns()
    result = DecodeResult(batch=Batch(received_unix_nano=now_ns))
    for i, rs in enumerate(request.resource_spans):
        release: Release | None = None
        release_error: Rejected | None = None
        for j, ss in enumerate(rs.scope_spans):
            if ss.scope.name != SCOPE_NAME:
                result.skipped["foreign_scope"] += len(ss.spans)
                continue
            if release is None and release_error is None:
                try:
                    release = release_of(rs.resource)
                except Rejected as exc:
                    release_error = exc
            for k, span in enumerate(ss.spans):
                if span.name not in (COVERAGE_SPAN, STATIC_SPAN):
                    result.skipped["unknown_span"] += 1
                    continue
                what = _describe(span)
                try:
                    if release_error is not None:
                        raise release_error
                    if id_errors and (i, j, k) in id_errors:
                        raise Rejected("ids", id_errors[i, j, k])
                    assert release is not None
                    _decode_span(span, release, now_ns, result.batch)
                except Rejected as exc:
                    result.reject(what, exc)
                else:
                    result.accepted += 1
    return result


def _describe(span: Any) -> str:
    # Hostile ids can be of any length; the message shows at most 32 bytes of each.
    trace_id, span_id = span.trace_id[:32].hex() or "-", span.span_id[:32].hex() or "-"
    return f"span {trace_id}/{span_id} ({span.name})"


def _decode_span(span: Any, release: Release, now_ns: int, batch: Batch) -> None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise Rejected("ids", "trace_id must be 16 bytes and not all zero")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise Rejected("ids", "span_id must be 8 bytes and not all zero")
    if len(span.attributes) > limits.MAX_ATTRIBUTES_PER_SPAN:
        raise Rejected(
            "limit",
            f"span has {len(span.attributes)} attributes, "
            f"more than the limit of {limits.MAX_ATTRIBUTES_PER_SPAN}",
        )
    attrs = _attr_map(span.attributes)
    version = _int_attr(attrs, "runcov.wire_version", None)
    if version != limits.WIRE_VERSION:
        raise Rejected(
            "wire_version",
            f"runcov.wire_version {version} is not supported (this collector reads "
            f"{limits.WIRE_VERSION})",
        )
    part = _int_attr(attrs, "runcov.part", 0)
    parts = _int_attr(attrs, "runcov.parts", 1)
    if not 1 <= parts <= limits.MAX_PARTS:
        raise Rejected("attribute", f"runcov.parts {parts} is out of range 1..{limits.MAX_PARTS}")
    if not 0 <= part < parts:
        raise Rejected("attribute", f"runcov.part {part} is out of range 0..{parts - 1}")
    payload = _str_attr(attrs, "runcov.payload", None)
    time_ns = _span_time(span, now_ns)
    trace_id = span.trace_id.hex()
    span_id = span.span_id.hex()
    if span.name == STATIC_SPAN:
        statics = _parse_payload(payload, static=True)
        batch.static.append(
            StaticPart(
                release=release,
                trace_id=trace_id,
                span_id=span_id,
                time_unix_nano=time_ns,
                files=statics,  # type: ignore[arg-type]
            )
        )
        return
    mode = _str_attr(attrs, "runcov.mode", "exact")
    if mode not in MODES:
        raise Rejected("attribute", f"runcov.mode {_show(mode)} is not one of exact, census")
    endpoint = _check_name(_str_attr(attrs, "runcov.endpoint", None), "runcov.endpoint")
    if not endpoint:
        raise Rejected("attribute", "runcov.endpoint is empty")
    status_class = _str_attr(attrs, "runcov.status_class", "")
    if len(status_class) > 16 or _CONTROL_RE.search(status_class):
        raise Rejected("attribute", f"runcov.status_class {_show(status_class)} is not valid")
    hits = _parse_payload(payload, static=False)
    if mode == "census" and any(f.arcs for f in hits):
        raise Rejected("payload", "a census payload must not carry arcs")
    batch.coverage.append(
        CoveragePart(
            release=release,
            trace_id=trace_id,
            span_id=span_id,
            endpoint=endpoint,
            mode=mode,
            status_class=status_class,
            time_unix_nano=time_ns,
            part=part,
            parts=parts,
            files=hits,  # type: ignore[arg-type]
        )
    )


def _checked_time(value: int, what: str) -> int:
    if value > limits.MAX_TIME_UNIX_NANO:
        raise Rejected(
            "time", f"{what} {value} is not a time: unix nanoseconds must be below 2**63 (2262)"
        )
    return value


def _span_time(span: Any, now_ns: int) -> int:
    """The time a span is kept under: its end (else its start, else ``now_ns``), no later than
    ``now_ns``, the receive time: a clock running ahead must not date coverage in the future
    (nor make its release the one most recently seen for years)."""
    end = _checked_time(span.end_time_unix_nano, "end_time_unix_nano")
    start = _checked_time(span.start_time_unix_nano, "start_time_unix_nano")
    return min(end or start or now_ns, now_ns)


def _int_attr(attrs: dict[str, AnyValue], key: str, default: int | None) -> int:
    value = attrs.get(key)
    if value is None:
        if default is None:
            raise Rejected("attribute", f"missing attribute {key}")
        return default
    if value.WhichOneof("value") != "int_value":
        raise Rejected("attribute", f"attribute {key} must be an int")
    return int(value.int_value)


def _str_attr(attrs: dict[str, AnyValue], key: str, default: str | None) -> str:
    value = attrs.get(key)
    if value is None:
        if default is None:
            raise Rejected("attribute", f"missing attribute {key}")
        return default
    if value.WhichOneof("value") != "string_value":
        raise Rejected("attribute", f"attribute {key} must be a string")
    return str(value.string_value)


def _show(text: str, limit: int = 60) -> str:
    """A safe, short rendering of a hostile string for error messages."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _check_name(text: str, what: str, reason: str = "attribute") -> str:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise Rejected(reason, f"{what} is not valid UTF-8") from exc
    if size > limits.MAX_NAME_BYTES:
        raise Rejected(reason, f"{what} is {size} bytes, more than {limits.MAX_NAME_BYTES}")
    if _CONTROL_RE.search(text):
        raise Rejected(reason, f"{what} {_show(text)} contains control characters")
    return text


def check_path(path: Any, where: str = "path") -> str:
    """Validate a source path of the wire format: relative, ``/``-separated, no ``..``."""
    if not isinstance(path, str):
        raise Rejected("path", f"{where} must be a string")
    if not path:
        raise Rejected("path", f"{where} is empty")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise Rejected("path", f"{where} is not valid UTF-8") from exc
    if size > limits.MAX_PATH_BYTES:
        raise Rejected("path", f"{where} is {size} bytes, more than {limits.MAX_PATH_BYTES}")
    if _CONTROL_RE.search(path):
        raise Rejected("path", f"{where} {_show(path)} contains NUL or control characters")
    if path.startswith("/") or _DRIVE_RE.match(path):
        raise Rejected("path", f"{where} {_show(path)} is absolute; paths must be relative")
    if "\\" in path:
        raise Rejected("path", f"{where} {_show(path)} contains '\\'; paths are '/'-separated")
    for segment in path.split("/"):
        if segment == "..":
            raise Rejected("path", f"{where} {_show(path)} contains a '..' segment")
        if segment in ("", "."):
            raise Rejected("path", f"{where} {_show(path)} has an empty or '.' segment")
    return path


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_payload(text: str, static: bool) -> list[FileHits] | list[FileStatic]:
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Rejected("payload", f"runcov.payload is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Rejected("payload", "runcov.payload must be a JSON object")
    version = doc.get("v", limits.WIRE_VERSION)
    if not _is_int(version) or version != limits.WIRE_VERSION:
        raise Rejected("wire_version", f"runcov.payload v={_show(str(version))} is not 1")
    files = doc.get("files")
    if not isinstance(files, list):
        raise Rejected("payload", "runcov.payload.files must be a list")
    if len(files) > limits.MAX_FILES_PER_PAYLOAD:
        raise Rejected(
            "limit",
            f"runcov.payload has {len(files)} files, more than {limits.MAX_FILES_PER_PAYLOAD}",
        )
    out: list[Any] = []
    for index, item in enumerate(files):
        where = f"files[{index}]"
        if not isinstance(item, dict):
            raise Rejected("payload", f"{where} must be an object")
        path = check_path(item.get("path"), f"{where}.path")
        sha = item.get("sha")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise Rejected("payload", f"{where}.sha must be lowercase hex digits")
        lines = _lines(item.get("lines", []), f"{where}.lines")
        arcs = _arcs(item.get("arcs", []), f"{where}.arcs")
        if static:
            functions = _functions(item.get("functions", []), f"{where}.functions")
            out.append(FileStatic(path=path, sha=sha, lines=lines, arcs=arcs, functions=functions))
        else:
            out.append(FileHits(path=path, sha=sha, lines=lines, arcs=arcs))
    return out


def _is_int(value: Any) -> bool:
    return type(value) is int


def _bounded_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise Rejected("payload", f"{where} must be a list")
    if len(value) > limits.MAX_ITEMS_PER_FILE:
        raise Rejected(
            "limit", f"{where} has {len(value)} items, more than {limits.MAX_ITEMS_PER_FILE}"
        )
    return value


def _only_ints(values: list[Any]) -> bool:
    # ``map(type, ...)`` keeps the per-item work in C; ``bool`` is its own type, so it fails.
    return set(map(type, values)) <= {int}


def _lines(value: Any, where: str) -> list[int]:
    lines = _bounded_list(value, where)
    if not _only_ints(lines):
        raise Rejected("payload", f"{where} must hold integers only")
    if lines and (min(lines) < 1 or max(lines) > limits.MAX_LINE):
        bad = next(n for n in lines if not 1 <= n <= limits.MAX_LINE)
        raise Rejected("line", f"{where} has line {_show(str(bad))} outside 1..{limits.MAX_LINE}")
    return sorted(set(lines))


def _arcs(value: Any, where: str) -> list[tuple[int, int]]:
    arcs = _bounded_list(value, where)
    if not arcs:
        return []
    if not (set(map(type, arcs)) <= {list} and set(map(len, arcs)) == {2}):
        raise Rejected("payload", f"{where} must hold [from, to] integer pairs")
    ends = [n for arc in arcs for n in arc]
    if not _only_ints(ends):
        raise Rejected("payload", f"{where} must hold [from, to] integer pairs")
    magnitudes = list(map(abs, ends))
    if min(magnitudes) < 1 or max(magnitudes) > limits.MAX_LINE:
        a, b = next(arc for arc in arcs if not all(1 <= abs(n) <= limits.MAX_LINE for n in arc))
        raise Rejected("line", f"{where} has arc [{_show(str(a))}, {_show(str(b))}] out of bounds")
    return sorted({(a, b) for a, b in arcs})


def _functions(value: Any, where: str) -> list[FunctionRange]:
    items = _bounded_list(value, where)
    out: list[FunctionRange] = []
    for item in items:
        if not isinstance(item, dict):
            raise Rejected("payload", f"{where} must hold objects")
        name: Any = item.get("name")
        start: Any = item.get("start")
        end: Any = item.get("end")
        if not isinstance(name, str) or not name:
            raise Rejected("payload", f"{where} name must be a non-empty string")
        _check_name(name, f"{where} name", "payload")
        if not (_is_int(start) and _is_int(end) and 1 <= start <= end <= limits.MAX_LINE):
            raise Rejected("line", f"{where} {_show(name)} has an invalid line range")
        out.append(FunctionRange(name=name, start=start, end=end))
    return out


# ---------------------------------------------------------------------------------------------
# Metrics


def decode_metrics(
    request: ExportMetricsServiceRequest,
    now_ns: int | None = None,
    id_errors: IdErrors | None = None,
) -> DecodeResult:
    """Turn a parsed metrics export into a ``DecodeResult`` of runcov ``MetricPoint`` values.

    Only counters (sums) and gauges of the ``runcov`` scope are kept; other scopes and kinds are
    skipped. ``accepted``/``rejected`` count data points. The store keeps each series' latest
    value, which is the total only for cumulative sums: data points of delta sums (and of sums
    whose temporality is unspecified) are rejected rather than stored as their last increment.
    Adding deltas up instead would count a retried export twice. A data point with an
    exemplar id in ``id_errors`` (from ``parse_metrics``) is rejected with it.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    result = DecodeResult(batch=Batch(received_unix_nano=now_ns))
    for i, rm in enumerate(request.resource_metrics):
        release: Release | None = None
        release_error: Rejected | None = None
        instance = ""
        for j, sm in enumerate(rm.scope_metrics):
            if sm.scope.name != SCOPE_NAME:
                result.skipped["foreign_scope"] += len(sm.metrics)
                continue
            if release is None and release_error is None:
                try:
                    release = release_of(rm.resource)
                    instance = _instance_of(rm.resource)
                except Rejected as exc:
                    release_error = exc
            for k, metric in enumerate(sm.metrics):
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "gauge"):
                    result.skipped["unsupported_metric"] += 1
                    continue
                points = getattr(metric, kind).data_points
                temporality_error = _temporality_error(metric) if kind == "sum" else None
                flavour = _kind_of(metric) if kind == "sum" else "gauge"
                for p, point in enumerate(points):
                    what = f"metric {_show(metric.name)}"
                    try:
                        if release_error is not None:
                            raise release_error
                        if temporality_error is not None:
                            raise temporality_error
                        if id_errors and (i, j, k, p) in id_errors:
                            raise Rejected("ids", id_errors[i, j, k, p])
                        assert release is not None
                        result.batch.metrics.append(
                            _decode_point(metric.name, point, release, instance, now_ns, flavour)
                        )
                    except Rejected as exc:
                        result.reject(what, exc)
                    else:
                        result.accepted += 1
    return result


def _temporality_error(metric: Any) -> Rejected | None:
    """Why a sum's data points cannot be kept, or None for a cumulative sum."""
    temporality = metric.sum.aggregation_temporality
    if temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE:
        return None
    if temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA:
        what = "delta aggregation temporality"
    elif temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_UNSPECIFIED:
        what = "unspecified aggregation temporality"
    else:
        what = f"unknown aggregation temporality {int(temporality)}"
    return Rejected(
        "temporality",
        f"sum with {what}: the collector keeps cumulative sums only "
        "(runcov agents export cumulative; set the exporter's temporality to cumulative)",
    )


def _kind_of(metric: Any) -> str:
    """``counter`` for a monotonic sum (its largest value is its total), else ``sum``."""
    return "counter" if metric.sum.is_monotonic else "sum"


def _decode_point(
    name: str, point: Any, release: Release, instance: str, now_ns: int, kind: str
) -> MetricPoint:
    _check_name(name, "metric name")
    if len(point.attributes) > limits.MAX_METRIC_ATTRIBUTES:
        raise Rejected(
            "limit",
            f"data point has {len(point.attributes)} attributes, "
            f"more than {limits.MAX_METRIC_ATTRIBUTES}",
        )
    time_ns = _checked_time(point.time_unix_nano, "time_unix_nano")
    # Only an identity for the run of a sum (never a date): kept as a BIGINT, never refused.
    start_ns = min(point.start_time_unix_nano, limits.MAX_TIME_UNIX_NANO)
    which = point.WhichOneof("value")
    value = float(point.as_int) if which == "as_int" else float(point.as_double)
    if not math.isfinite(value):
        raise Rejected("value", "data point value is not finite")
    if abs(value) > limits.MAX_METRIC_VALUE:
        # Sums over processes would overflow to infinity (PostgreSQL: an error) and take every
        # query of the release's service down with them.
        raise Rejected("value", f"data point value is beyond ±2**53: {value:g}")
    if kind == "counter" and value < 0:
        raise Rejected("value", f"monotonic sum with a negative value: {value:g}")
    attributes = {kv.key: _scalar(kv) for kv in point.attributes}
    return MetricPoint(
        release=release,
        instance=instance,
        name=name,
        attributes=attributes,
        value=value,
        time_unix_nano=min(time_ns or now_ns, now_ns),
        # Gauges have no runs; a sum's start time tells one run of its counter from the next.
        start_time_unix_nano=0 if kind == "gauge" else start_ns,
        kind=kind,
    )


def _scalar(kv: KeyValue) -> str:
    _check_name(kv.key, "attribute name")
    kind = kv.value.WhichOneof("value")
    if kind == "string_value":
        return _check_name(kv.value.string_value, f"attribute {_show(kv.key)}")
    if kind == "bool_value":
        return "true" if kv.value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(kv.value, kind))
    raise Rejected("attribute", f"attribute {_show(kv.key)} must be a scalar")


__all__ = [
    "COVERAGE_SPAN",
    "SCOPE_NAME",
    "STATIC_SPAN",
    "DecodeResult",
    "IdErrors",
    "MalformedRequest",
    "Rejected",
    "check_path",
    "decode_metrics",
    "decode_traces",
    "parse_metrics",
    "parse_traces",
    "release_of",
]
