"""OTLP/HTTP receiver: ``POST /v1/traces`` and ``/v1/metrics`` (protobuf or JSON; gzip or
deflate)."""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from runcov_collector import decode
from runcov_collector.ingest import (
    METRICS,
    TRACES,
    Ingestor,
    Overloaded,
    StoreSchemaChanged,
    StoreUnavailable,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRANSPORT = "http"

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """The body, after decompression, is over the configured limit."""


class UnsupportedMedia(Exception):
    """Unknown Content-Type or Content-Encoding."""


class Disconnected(Exception):
    """The client closed the connection before the whole body arrived (an exporter that gave
    up at its deadline, a network that failed); the message says how much had arrived."""


def media_type(request_headers: Any) -> str:
    """The bare media type of a request's Content-Type, lower-cased."""
    raw = request_headers.get("content-type", "")
    return raw.split(";", 1)[0].strip().lower()


def wants_json(request_headers: Any) -> bool:
    """Whether error bodies for this request should be JSON (anything but protobuf)."""
    return media_type(request_headers) != PROTOBUF


def encode_message(message: Message, json_body: bool) -> Response:
    """A 200 response carrying ``message`` in the request's encoding."""
    if json_body:
        text = json_format.MessageToJson(message, indent=None)
        return Response(text, media_type=JSON)
    return Response(message.SerializeToString(), media_type=PROTOBUF)


def status_response(
    http_status: int,
    code: int,
    message: str,
    json_body: bool,
    headers: dict[str, str] | None = None,
) -> Response:
    """An OTLP error answer: a ``google.rpc.Status`` in the request's encoding."""
    status = status_pb2.Status(code=code, message=message)
    if json_body:
        body: bytes | str = json_format.MessageToJson(status, indent=None)
        media = JSON
    else:
        body = status.SerializeToString()
        media = PROTOBUF
    return Response(body, status_code=http_status, media_type=media, headers=headers)


#: zlib's window bits for each accepted Content-Encoding: gzip (RFC 1952, members may be
#: concatenated), deflate (the zlib format of RFC 1950, as RFC 9110 defines it and
#: OpenTelemetry's exporters send it).
_WBITS = {"gzip": 31, "deflate": 15}


class _Inflate:
    """Streaming decompression of a gzip or deflate body that stops as soon as the output
    passes ``limit``."""

    def __init__(self, limit: int, encoding: str = "gzip") -> None:
        self.limit = limit
        self.size = 0
        self.encoding = encoding
        self._wbits = _WBITS[encoding]
        self._chunks: list[bytes] = []
        self._d = zlib.decompressobj(wbits=self._wbits)

    def feed(self, data: bytes) -> None:
        while data:
            out = self._d.decompress(data, self.limit - self.size + 1)
            self.size += len(out)
            if self.size > self.limit:
                raise BodyTooLarge(
                    f"request body exceeds the limit of {self.limit} bytes after decompression"
                )
            self._chunks.append(out)
            if self._d.eof:
                data = self._d.unused_data
                if data and self.encoding == "gzip":  # a further member (concatenated gzip)
                    self._d = zlib.decompressobj(wbits=self._wbits)
                elif data:
                    raise decode.MalformedRequest("data follows the end of the deflate stream")
            else:
                data = self._d.unconsumed_tail

    def finish(self) -> bytes:
        if not self._d.eof:
            raise decode.MalformedRequest(f"{self.encoding} body is truncated")
        return b"".join(self._chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body with ``limit`` applied to the raw and the decompressed size; raises
    ``Disconnected`` when the client goes away before the end of the body."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_WBITS):
        raise UnsupportedMedia(
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none"
        )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(
            f"request body of {int(length)} bytes exceeds the limit of {limit} bytes"
        )
    gunzip = _Inflate(limit, encoding) if encoding in _WBITS else None
    raw = 0
    chunks: list[bytes] = []
    try:
        async for chunk in request.stream():
            raw += len(chunk)
            if raw > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            if gunzip is not None:
                try:
                    gunzip.feed(chunk)
                except zlib.error as exc:
                    raise decode.MalformedRequest(f"body is not valid {encoding}: {exc}") from exc
            else:
                chunks.append(chunk)
    except ClientDisconnect:
        of = f" of {int(length)}" if length.isdigit() else ""
        raise Disconnected(f"after sending {raw}{of} bytes") from None
    return gunzip.finish() if gunzip is not None else b"".join(chunks)


def _retry_after(request: Request) -> dict[str, str]:
    return {"Retry-After": str(request.app.state.config.retry_after_seconds)}


async def _export(request: Request, signal: str) -> Response:
    state = request.app.state
    ingestor: Ingestor = state.ingestor
    count = state.metrics.requests.inc
    media = media_type(request.headers)
    if media not in (PROTOBUF, JSON):
        count(transport=TRANSPORT, signal=signal, result="unsupported")
        return status_response(
            415,
            code_pb2.INVALID_ARGUMENT,
            f"unsupported Content-Type {media or '(none)'!r}; use {PROTOBUF} or {JSON}",
            json_body=True,
        )
    json_body = media == JSON
    try:
        body = await read_body(request, state.config.max_body_bytes)
    except UnsupportedMedia as exc:
        count(transport=TRANSPORT, signal=signal, result="unsupported")
        return status_response(415, code_pb2.INVALID_ARGUMENT, str(exc), json_body)
    except BodyTooLarge as exc:
        count(transport=TRANSPORT, signal=signal, result="too_large")
        return status_response(413, code_pb2.RESOURCE_EXHAUSTED, str(exc), json_body)
    except decode.MalformedRequest as exc:
        count(transport=TRANSPORT, signal=signal, result="invalid")
        return status_response(400, code_pb2.INVALID_ARGUMENT, str(exc), json_body)
    except Disconnected as exc:
        # Nobody reads the answer; the exporter counts its own failure.
        count(transport=TRANSPORT, signal=signal, result="disconnected")
        log.info(
            "OTLP/HTTP client disconnected from %s %s; nothing was stored", request.url.path, exc
        )
        return status_response(400, code_pb2.CANCELLED, f"client disconnected {exc}", json_body)
    try:
        ingestor.admit()
    except Overloaded as exc:
        count(transport=TRANSPORT, signal=signal, result="overloaded")
        return status_response(
            429, code_pb2.RESOURCE_EXHAUSTED, str(exc), json_body, _retry_after(request)
        )
    loop = asyncio.get_running_loop()
    try:
        outcome = await loop.run_in_executor(
            state.executor, ingestor.run_admitted, signal, TRANSPORT, body, json_body
        )
    except decode.MalformedRequest as exc:
        count(transport=TRANSPORT, signal=signal, result="invalid")
        return status_response(400, code_pb2.INVALID_ARGUMENT, str(exc), json_body)
    except StoreSchemaChanged as exc:
        # Like an unavailable store: nothing acknowledged, the exporter retries (an upgraded
        # replica takes it); the message says which collector to upgrade.
        count(transport=TRANSPORT, signal=signal, result="schema_changed")
        return status_response(
            503, code_pb2.UNAVAILABLE, str(exc), json_body, _retry_after(request)
        )
    except StoreUnavailable as exc:
        count(transport=TRANSPORT, signal=signal, result="unavailable")
        return status_response(
            503, code_pb2.UNAVAILABLE, str(exc), json_body, _retry_after(request)
        )
    result = "partial" if outcome.result.rejected else "ok"
    count(transport=TRANSPORT, signal=signal, result=result)
    return encode_message(outcome.response, json_body)


async def export_traces(request: Request) -> Response:
    """``POST /v1/traces``."""
    return await _export(request, TRACES)


async def export_metrics(request: Request) -> Response:
    """``POST /v1/metrics``."""
    return await _export(request, METRICS)


def routes() -> list[Route]:
    """The OTLP/HTTP routes."""
    return [
        Route("/v1/traces", export_traces, methods=["POST"]),
        Route("/v1/metrics", export_metrics, methods=["POST"]),
    ]
