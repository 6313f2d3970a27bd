"""A SpanProcessor that measures the code run by sampled SERVER and CONSUMER spans."""

from __future__ import annotations

import enum
import logging
from types import MethodType
from typing import TYPE_CHECKING, Any, Final, Literal, Optional, Union

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from runcov.agent import _RANDOMNESS_MASK, status_class
from runcov.middleware import KNOWN_METHODS, _claimed
from runcov.selectors import WEBSOCKET

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from runcov.agent import Agent, RequestTicket

log = logging.getLogger("runcov")

__all__ = ["RuncovSpanProcessor", "request_identity"]

_MEASURED_KINDS = (SpanKind.SERVER, SpanKind.CONSUMER)
_SERVER = SpanKind.SERVER


class _Mark(enum.Enum):
    """What ``_in_flight`` holds for a SERVER span started in a request that a runcov
    middleware or framework hook claimed (and measures and counts): its end is ignored."""

    CLAIMED = "claimed"


_CLAIMED: Final = _Mark.CLAIMED

#: The URL schemes of a websocket connection (an ASGI websocket scope's ``scheme``).
_WEBSOCKET_SCHEMES = ("ws", "wss")


def _normalize_route(route: Any) -> Optional[str]:
    """The route template as a string starting with ``/`` (Django reports ``items/<id>``)."""
    if not route or not isinstance(route, str):
        return None
    return route if route.startswith("/") else "/" + route


def request_identity(
    kind: SpanKind, name: str, attributes: Any
) -> tuple[Optional[str], Optional[str]]:
    """``(method, route)`` of a span, from either generation of the HTTP semantic conventions.

    HTTP spans use ``http.request.method`` (stable conventions) or ``http.method`` (old ones)
    and ``http.route`` (None while unknown); a consumer span is ``("consumer", span name)``,
    which names the endpoint ``"consumer <span name>"``. A websocket connection's span (no
    method; a ``ws``/``wss`` ``url.scheme`` or ``http.scheme``, or ``network.protocol.name``
    ``websocket``) is ``("WEBSOCKET", http.route)``: never named by its span name, which holds
    the URL path when the ASGI instrumentation knows no route. Any other server span (gRPC...)
    is known by its span name alone.
    """
    attributes = attributes or {}
    method = attributes.get("http.request.method") or attributes.get("http.method")
    if method:
        # Called for every request (on_end): the usual case inline, without helper calls.
        route = attributes.get("http.route")
        if route.__class__ is not str or not route:
            route = _normalize_route(route)
        elif route[0] != "/":
            route = "/" + route
        if method not in KNOWN_METHODS:  # (an old instrumentation's raw, client-chosen one)
            method = "_OTHER"
        return method, route
    if kind == SpanKind.CONSUMER:
        return "consumer", name
    scheme = attributes.get("url.scheme") or attributes.get("http.scheme")
    if scheme in _WEBSOCKET_SCHEMES or attributes.get("network.protocol.name") == "websocket":
        return WEBSOCKET, _normalize_route(attributes.get("http.route"))
    return None, name


def _attributes(span: Any) -> Any:
    """The span's attributes as a plain mapping, cheaply.

    The SDK keeps them in a ``BoundedAttributes`` whose ``get`` runs through Python-level
    mapping methods behind a read-only proxy; its inner dict answers the same lookups several
    times faster. Any other span falls back to the public ``attributes``.
    """
    try:
        inner = span._attributes._dict
    except AttributeError:
        return span.attributes
    return inner if inner.__class__ is dict else span.attributes


class RuncovSpanProcessor(SpanProcessor):
    """Opens a coverage scope when a selected request span starts, emits it when it ends.

    ``on_start`` runs in the context that starts the span (before it becomes current), which
    is the context the request's code then runs in, so the scope is bound there. Routes that
    an instrumentation sets only after start (Django) are decided on the method and checked
    again at ``on_end``. The request span itself is never written to.

    A SERVER span started where a runcov middleware or framework hook of the same agent has
    claimed the request (the middleware outside OpenTelemetry's instrumentation) is that
    request's own span: the layer that claimed it measures and counts it, so the span is
    neither decided, measured nor counted here. That is decided at its start, in the context
    the claim is read from, and remembered (``_in_flight``) for its end, which may run
    elsewhere (OpenTelemetry's WSGI middleware ends its span when the server closes the
    response, after runcov's middleware returned). CONSUMER spans started within a claimed
    request are work of their own, measured as usual.
    """

    def __init__(self, agent: Agent, *, accel: Any = True) -> None:
        self._agent = agent
        #: span id -> ticket of the sampled spans in flight, or ``_CLAIMED`` for a server span
        #: of a request a runcov middleware or hook claimed.
        self._in_flight: dict[int, Union[RequestTicket, Literal[_Mark.CLAIMED]]] = {}
        self._gate = None
        if accel is True:
            from runcov.tracing._scope import load_accel

            accel = load_accel()
        gate_type = getattr(accel, "SpanGate", None)
        cls = type(self)
        own = cls.on_start is RuncovSpanProcessor.on_start and (
            cls.on_end is RuncovSpanProcessor.on_end
        )
        if gate_type is not None and own:
            # The per-request path in C: it returns at once where these methods would do
            # nothing (not a request span, not sampled) or only count the request as seen,
            # and calls them for everything else. Set on the instance, so that the SDK's
            # calls reach it without a Python frame. (A subclass that overrides them sees
            # every span, through them.)
            self._gate = gate_type(
                self,
                agent,
                MethodType(cls.on_start, self),
                MethodType(cls.on_end, self),
                SpanKind.SERVER,
                SpanKind.CONSUMER,
                DEFAULT_TRACE_STATE,
                _claimed,
                _CLAIMED,
            )
            self.__dict__["on_start"] = self._gate.on_start
            self.__dict__["on_end"] = self._gate.on_end
            hook = getattr(SpanProcessor, "_on_ending", None)  # the SDK's, which does nothing
            if hook is not None and getattr(cls, "_on_ending", None) is hook:
                self.__dict__["_on_ending"] = self._gate.on_ending

    def on_start(self, span: Span, parent_context: Optional[Context] = None) -> None:
        """Decide on a SERVER/CONSUMER span and open its scope when it is sampled."""
        agent = self._agent
        if not agent.running:
            return
        try:
            kind = span.kind
            if kind not in _MEASURED_KINDS:
                return
            ctx = span.get_span_context()
            if ctx is None:
                return
            if kind is _SERVER:
                claim = _claimed.get()
                if claim is not None and claim.span_agent is agent:
                    # The request's own span: the layer that claimed the request measures it.
                    claim.span_agent = None
                    self._in_flight[ctx.span_id] = _CLAIMED
                    return
            # Agent.cannot_sample(by_span=True), inline: this runs for every request span. A
            # SpanContext is a tuple (trace_id, span_id, is_remote, flags, trace_state, valid);
            # spans without a tracestate share the API's default one.
            if (ctx[0] & _RANDOMNESS_MASK) < agent._span_threshold:
                tracestate = ctx[4]
                if tracestate is DEFAULT_TRACE_STATE or not tracestate or "ot" not in tracestate:
                    return
            if not ctx.is_valid:
                return
            method, route = request_identity(kind, span.name, _attributes(span))
            ticket = agent.begin(
                method,
                route,
                ctx.trace_id,
                ctx.trace_state,
                route_known=route is not None,
                by_span=True,
            )
            if ticket is not None:
                self._in_flight[ctx.span_id] = ticket
        except Exception:
            agent._internal_error("")

    def on_end(self, span: ReadableSpan) -> None:
        """Close the span's scope, if it was sampled, and queue its coverage for export."""
        kind = span.kind
        if kind not in _MEASURED_KINDS:
            return
        agent = self._agent
        try:
            ctx = None
            ticket: Optional[RequestTicket] = None
            in_flight = self._in_flight
            if in_flight:  # this span's ticket, if any, was added by its own on_start
                ctx = span.get_span_context()
                if ctx is not None:
                    popped = in_flight.pop(ctx.span_id, None)
                    if isinstance(popped, _Mark):
                        return  # _CLAIMED: the layer that claimed the request counts it
                    ticket = popped
            method, route = request_identity(kind, span.name, _attributes(span))
            agent.seen(method, route)
            if ticket is not None and ctx is not None:
                agent.finish(
                    ticket,
                    parent_span_id=ctx.span_id,
                    status=_status(span),
                    method=method,
                    route=route,
                )
            if agent.census_by_span and agent.core.census_pending:
                # First hits this request's trace made in census mode (no scope: the core
                # named the trace when they happened).
                ctx = ctx or span.get_span_context()
                if ctx is not None:
                    agent.finish_census(
                        ctx.trace_id,
                        ctx.span_id,
                        method,
                        route,
                        _status(span),
                        span.start_time or 0,
                    )
        except Exception:
            agent._internal_error("")

    def shutdown(self) -> None:
        """Close the scopes of spans that will never end (the provider is shutting down)."""
        in_flight, self._in_flight = self._in_flight, {}
        for ticket in in_flight.values():
            if ticket is _CLAIMED:
                continue
            try:
                self._agent.cancel(ticket)
            except Exception:
                pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the agent's exporter."""
        return self._agent.flush(timeout_millis / 1000.0)

    def _after_fork_in_child(self) -> None:
        # Spans in flight at fork() belong to threads that do not exist in the child.
        self._in_flight = {}


def _status(span: ReadableSpan) -> str:
    attributes = _attributes(span) or {}
    code = attributes.get("http.response.status_code")
    if code is None:
        code = attributes.get("http.status_code")
    klass = status_class(code)
    if klass is not None:
        return klass
    return "error" if span.status.status_code == StatusCode.ERROR else "ok"
