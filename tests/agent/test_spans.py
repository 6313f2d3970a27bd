"""runcov's own OTLP span encoding, checked against the OpenTelemetry SDK's encoder.

The SDK's ``encode_spans`` (opentelemetry-exporter-otlp-proto-common) is the oracle: the same
span built as an SDK ``ReadableSpan`` and encoded by it must decode to the same message as
runcov's bytes (with ``flags`` aside: runcov marks the parent, the request span of the same
process, as local, and the trace as sampled).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from runcov.export.spans import SpanEncoder

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

scalars = st.one_of(
    st.text(max_size=40),
    st.text(min_size=300, max_size=3000),  # payload-sized strings (never cached)
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=10), max_size=4),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4),
)
keys = st.text(min_size=1, max_size=30)
attribute_maps = st.dictionaries(keys, values, max_size=8)
span_specs = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=30),
        "trace_id": st.integers(min_value=1, max_value=2**128 - 1),
        "span_id": st.integers(min_value=1, max_value=2**64 - 1),
        "parent": st.one_of(st.just(0), st.integers(min_value=1, max_value=2**64 - 1)),
        "start": st.integers(min_value=0, max_value=2**64 - 1),
        "duration": st.integers(min_value=0, max_value=10**12),
        "base": attribute_maps,
        "own": attribute_maps,
    }
)


def _sdk_request(resource: Resource, scope: InstrumentationScope, specs: list[Any]) -> Any:
    spans = []
    for spec in specs:
        # A span's own attributes override base ones of the same key; runcov sends the rest
        # of the base first, then its own, and the SDK encodes a dict in insertion order.
        attributes = {k: v for k, v in spec["base"].items() if k not in spec["own"]}
        attributes.update(spec["own"])
        end = min(spec["start"] + spec["duration"], 2**64 - 1)
        spans.append(
            ReadableSpan(
                spec["name"],
                context=SpanContext(spec["trace_id"], spec["span_id"], False, _SAMPLED),
                parent=(
                    SpanContext(spec["trace_id"], spec["parent"], False, _SAMPLED)
                    if spec["parent"]
                    else None
                ),
                resource=resource,
                attributes=attributes,
                kind=SpanKind.INTERNAL,
                start_time=spec["start"],
                end_time=end,
                instrumentation_scope=scope,
            )
        )
    return encode_spans(spans)


def _runcov_request(encoder: SpanEncoder, specs: list[Any]) -> Any:
    spans = []
    for spec in specs:
        # The base encoded once (without the keys the span overrides), then the span's own.
        own = dict(spec["own"])
        base = {k: v for k, v in spec["base"].items() if k not in own}
        end = min(spec["start"] + spec["duration"], 2**64 - 1)
        spans.append(
            encoder.span(
                spec["name"],
                spec["trace_id"],
                spec["span_id"],
                spec["parent"],
                spec["start"],
                end,
                encoder.attributes(base),
                own,
            )
        )
    return ExportTraceServiceRequest.FromString(encoder.request(spans))


def _without_flags(request: Any) -> Any:
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.ClearField("flags")
                span.ClearField("status")  # the SDK writes an empty (UNSET) status
    return request


@settings(max_examples=150, deadline=None)
@given(
    resource_attributes=st.dictionaries(keys, scalars, max_size=6),
    specs=st.lists(span_specs, min_size=1, max_size=5),
    version=st.text(max_size=10),
    schema_url=st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]),
)
def test_spans_decode_to_what_the_sdk_encoder_makes(
    resource_attributes: dict[str, Any], specs: list[Any], version: str, schema_url: str
) -> None:
    resource = Resource(resource_attributes, schema_url)
    scope = InstrumentationScope("runcov", version or None)
    expected = _without_flags(_sdk_request(resource, scope, specs))
    ours = _runcov_request(SpanEncoder(resource.attributes, "runcov", version, schema_url), specs)
    flags = [s.flags for s in ours.resource_spans[0].scope_spans[0].spans]
    assert _without_flags(ours) == expected
    # W3C "sampled", and "the parent's is_remote is known" (false: the parent is local).
    assert flags == [0x101] * len(specs)


def test_attribute_values_keep_their_types() -> None:
    encoder = SpanEncoder({"service.name": "shop"}, "runcov", "1.0")
    span = encoder.span(
        "runcov.coverage",
        1,
        2,
        3,
        10,
        20,
        encoder.attributes({"a": 1, "b": True, "c": "x"}),
        {"d": 1.5, "e": ["p", "q"], "f": b"\x00\x01"},
    )
    decoded = ExportTraceServiceRequest.FromString(encoder.request([span]))
    (got,) = decoded.resource_spans[0].scope_spans[0].spans
    values = {kv.key: kv.value for kv in got.attributes}
    assert values["a"].WhichOneof("value") == "int_value" and values["a"].int_value == 1
    assert values["b"].WhichOneof("value") == "bool_value" and values["b"].bool_value is True
    assert values["c"].string_value == "x"
    assert values["d"].double_value == 1.5
    assert [v.string_value for v in values["e"].array_value.values] == ["p", "q"]
    assert values["f"].bytes_value == b"\x00\x01"
    assert got.parent_span_id == (3).to_bytes(8, "big")
    assert decoded.resource_spans[0].scope_spans[0].scope.version == "1.0"
