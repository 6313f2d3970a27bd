"""OTLP protobuf encoding of runcov's own spans, without building SDK span objects.

runcov's spans are few in kind and fixed in shape: a name, ids, two timestamps and a handful of
attributes, one of them the (large) payload. The SDK's OTLP encoder turns each ``ReadableSpan``
into protobuf message objects attribute by attribute (~35-40 µs per span on the Flask shop,
the largest part of exporting a sampled request). Written directly in the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/) a span costs a few byte joins, and the
resource and instrumentation scope, the same for every span of the process, are encoded once.

The bytes are an ``ExportTraceServiceRequest`` of opentelemetry-proto's
``collector/trace/v1/trace_service.proto``; any OTLP receiver decodes them. Field numbers:

* ExportTraceServiceRequest: 1 resource_spans
* ResourceSpans: 1 resource, 2 scope_spans, 3 schema_url
* Resource: 1 attributes
* ScopeSpans: 1 scope, 2 spans
* InstrumentationScope: 1 name, 2 version
* Span: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start_time_unix_nano,
  8 end_time_unix_nano, 9 attributes, 16 flags
* KeyValue: 1 key, 2 value; AnyValue: 1 string, 2 bool, 3 int, 4 double, 5 array, 7 bytes;
  ArrayValue: 1 values
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Mapping, Optional, Sequence

__all__ = ["SpanEncoder", "encode_attributes"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: Span.kind SPAN_KIND_INTERNAL.
_KIND_INTERNAL = 1
#: Span.flags: the W3C trace flags (sampled), and "the parent's is_remote is known" (it is
#: false: a coverage span's parent is the request span of the same process).
_FLAGS_SAMPLED = 0x01
_FLAGS_HAS_IS_REMOTE = 0x100

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 in two's complement, 10 bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    return _tag(field, _LEN) + _varint(len(payload)) + payload


# Tags used on every span, computed once.
_T_TRACE_ID = _tag(1, _LEN) + bytes((16,))
_T_SPAN_ID = _tag(2, _LEN) + bytes((8,))
_T_PARENT_ID = _tag(4, _LEN) + bytes((8,))
_T_KIND = _tag(6, _VARINT) + _varint(_KIND_INTERNAL)
_T_START = _tag(7, _I64)
_T_END = _tag(8, _I64)
_FLAGS = _tag(16, _I32) + _pack_fixed32(_FLAGS_SAMPLED | _FLAGS_HAS_IS_REMOTE)


def _any_value(value: Any) -> bytes:
    """An AnyValue message (its content, without tag and length)."""
    if isinstance(value, str):
        return _field(1, value.encode("utf-8"))
    if isinstance(value, bool):
        return _tag(2, _VARINT) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _tag(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _I64) + _pack_double(value)
    if isinstance(value, (bytes, bytearray)):
        return _field(7, bytes(value))
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    raise TypeError(f"cannot encode an attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message (its content)."""
    return _field(1, key.encode("utf-8")) + _field(2, _any_value(value))


#: Encoded attributes of low cardinality (endpoint, mode, status class, part numbers...),
#: the same on most spans: (field, key, type, value) -> bytes. Bounded: cleared when full.
_CACHE: dict[tuple[int, str, type, Any], bytes] = {}
_CACHE_SIZE = 4096
#: Values longer than this (payloads) are encoded each time, not kept.
_CACHE_VALUE_LIMIT = 256


def encode_attributes(attributes: Mapping[str, Any], field: int) -> bytes:
    """``attributes`` as repeated KeyValue fields number ``field`` (None values are left out)."""
    cache = _CACHE
    out = []
    for key, value in attributes.items():
        if value is None:
            continue
        kind = value.__class__
        ident: Optional[tuple[int, str, type, Any]] = None
        encoded = None
        if kind is not str or len(value) <= _CACHE_VALUE_LIMIT:
            ident = (field, key, kind, value)
            try:
                encoded = cache.get(ident)
            except TypeError:  # unhashable (a list): encoded each time
                ident = None
        if encoded is None:
            encoded = _field(field, _key_value(key, value))
            if ident is not None:
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[ident] = encoded
        out.append(encoded)
    return b"".join(out)


class SpanEncoder:
    """Encodes runcov's spans and wraps them into export requests for one resource and scope."""

    def __init__(
        self,
        resource_attributes: Mapping[str, Any],
        scope_name: str,
        scope_version: str = "",
        schema_url: str = "",
    ) -> None:
        resource = _field(1, encode_attributes(resource_attributes, 1))
        self._resource_head = resource
        self._resource_tail = _field(3, schema_url.encode("utf-8")) if schema_url else b""
        scope = _field(1, scope_name.encode("utf-8"))
        if scope_version:
            scope += _field(2, scope_version.encode("utf-8"))
        self._scope = _field(1, scope)

    @staticmethod
    def attributes(attributes: Mapping[str, Any]) -> bytes:
        """Span attributes, encoded once and reusable for several spans (:meth:`span`'s
        ``encoded_attributes``)."""
        return encode_attributes(attributes, 9)

    @staticmethod
    def span(
        name: str,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        start_ns: int,
        end_ns: int,
        encoded_attributes: bytes = b"",
        attributes: Optional[Mapping[str, Any]] = None,
    ) -> bytes:
        """One INTERNAL, sampled span as a ``spans`` field of ScopeSpans (tag included).

        ``encoded_attributes`` (from :meth:`attributes`) and ``attributes`` are both sent, the
        encoded ones first. A parent span id of 0 makes a root span.
        """
        parts = [
            _T_TRACE_ID,
            trace_id.to_bytes(16, "big"),
            _T_SPAN_ID,
            span_id.to_bytes(8, "big"),
        ]
        if parent_span_id:
            parts.append(_T_PARENT_ID)
            parts.append(parent_span_id.to_bytes(8, "big"))
        parts.append(_field(5, name.encode("utf-8")))
        parts.append(_T_KIND)
        parts.append(_T_START)
        parts.append(_pack_fixed64(start_ns))
        parts.append(_T_END)
        parts.append(_pack_fixed64(end_ns))
        if encoded_attributes:
            parts.append(encoded_attributes)
        if attributes:
            parts.append(encode_attributes(attributes, 9))
        parts.append(_FLAGS)
        return _field(2, b"".join(parts))

    def request(self, spans: Iterable[bytes]) -> bytes:
        """An ExportTraceServiceRequest holding ``spans`` (each from :meth:`span`)."""
        scope_spans = _field(2, self._scope + b"".join(spans))
        resource_spans = self._resource_head + scope_spans + self._resource_tail
        return _field(1, resource_spans)
