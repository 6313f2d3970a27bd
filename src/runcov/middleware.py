"""WSGI and ASGI middleware, and framework hooks, for services without OpenTelemetry spans.

The middleware measures each selected request like the span processor does, taking the trace
from an incoming W3C ``traceparent`` header (so the coverage joins the caller's trace) or
starting a fresh one. The endpoint is the method plus a route *template* from a resolver: the
ASGI middleware reads the one Starlette/FastAPI routing selects, prefixed with the templates
of the mounts the request went through (``/v2/things/{name}``); otherwise pass
``route=callable``. The raw URL path is used only with ``raw_path=True``, because paths carry
ids and sometimes secrets and make endpoint names unbounded. An ASGI websocket connection is
one request, named ``WEBSOCKET <route>`` as the span processor names it.

:func:`install_framework_hooks` (used by ``runcov run`` when the application has no
OpenTelemetry SDK) measures Flask, Django (WSGI and ASGI) and Starlette/FastAPI applications
with their own route templates, without touching the application's code.

A request is measured and counted once, by the outermost layer that sees it: a middleware or
hook inside another one (a mounted Starlette application, a Flask application wrapped in the
WSGI middleware) steps aside, and so does every one of them for a request whose server span
runcov's span processor sees (an application that sets up OpenTelemetry itself, or wraps
runcov's middleware in OpenTelemetry's). A middleware or hook outside OpenTelemetry's
instrumentation (``app.wsgi_app = RuncovWSGIMiddleware(app.wsgi_app)`` after
``FlaskInstrumentor().instrument_app(app)``) claims the request before its server span starts:
the span processor then steps aside for that span (see :class:`_Claim`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextvars import ContextVar, Token
from typing import Any, Awaitable, Callable, Generic, Iterable, Iterator, Optional, TypeVar

import wrapt
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind

from runcov.agent import Agent, current_agent, random_span_id, random_trace_id, status_class
from runcov.selectors import WEBSOCKET

log = logging.getLogger("runcov")

__all__ = [
    "RuncovASGIMiddleware",
    "RuncovWSGIMiddleware",
    "install_framework_hooks",
    "parse_traceparent",
]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

WSGIApp = Callable[..., Iterable[bytes]]
ASGIApp = Callable[..., Awaitable[None]]
_App = TypeVar("_App", bound=Callable[..., Any])


def parse_traceparent(value: Optional[str]) -> Optional[tuple[int, int]]:
    """``(trace id, parent span id)`` from a W3C ``traceparent`` header; None when invalid."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id


def _trace_of(traceparent: Optional[str]) -> tuple[int, int]:
    """The request's trace id and the span id its coverage hangs under.

    With a valid ``traceparent`` the coverage becomes a child of the caller's span; without
    one the request starts a trace of its own, its coverage under a fresh span id.
    """
    parsed = parse_traceparent(traceparent)
    if parsed is not None:
        return parsed
    return random_trace_id(), random_span_id()


def _agent(agent: Optional[Agent]) -> Optional[Agent]:
    if agent is not None:
        return agent if agent.running else None
    return current_agent()


class _Claim:
    """A request that a middleware or framework hook of this module measures and counts.

    Set in ``_claimed`` while the layer that claimed it runs: layers inside it (a mounted
    Starlette application, a Flask application under the WSGI middleware) step aside, and so
    does the span processor of the same agent for the request's server span, started inside
    it by OpenTelemetry's instrumentation. ``live`` is False once that layer returned;
    ``span_agent`` is the agent whose span processor is still to step aside, None once it did
    for one server span or the layer returned. A claim thus accounts for one request, the
    one its layer counts: a context that outlives the request (a task or a copied context it
    started) keeps the object but not the claim, and a second server span started under it
    (an in-process call to another service) is measured by the span processor as usual.
    """

    __slots__ = ("live", "span_agent")

    def __init__(self, agent: Agent) -> None:
        self.live = True
        self.span_agent: Optional[Agent] = agent

    def release(self, token: Token[Optional[_Claim]]) -> None:
        """The claiming layer returns: the claim ends, here and in every context it reached."""
        self.live = False
        self.span_agent = None
        _claimed.reset(token)


#: The claim of the request the current context serves (see :class:`_Claim`). The span
#: processor reads it (C: ``PyContextVar_Get``) for every SERVER span it sees.
_claimed: ContextVar[Optional[_Claim]] = ContextVar("runcov_request_claimed", default=None)


def _claim(agent: Agent) -> tuple[_Claim, Token[Optional[_Claim]]]:
    """Claim the request the current context serves for ``agent``."""
    claim = _Claim(agent)
    return claim, _claimed.set(claim)


def _is_claimed() -> bool:
    """True while a layer of this module that claimed the current request runs."""
    claim = _claimed.get()
    return claim is not None and claim.live


def _span_processor_active(agent: Agent) -> bool:
    """True when the agent's span processor is on the global tracer provider, the one
    OpenTelemetry's instrumentations make their spans with. (An application can set its SDK
    provider after ``runcov run`` installed the framework hooks.)"""
    attached = getattr(agent, "_attached", None)
    if not attached:
        return False
    provider = otel_trace.get_tracer_provider()
    return any(p is provider for p in attached)


def _server_span_measured(agent: Agent) -> bool:
    """True when the current OpenTelemetry span is a recording SERVER span (the request's own
    span) that reaches the agent's span processor, which then measures and counts the request.
    An SDK span carries its provider's processors; a server span of a provider the processor
    is not on (an instrumentation given a provider of its own) is no one else's measure."""
    if not getattr(agent, "_attached", None):
        return False  # (the processor is on no provider: the common case without OpenTelemetry)
    span = otel_trace.get_current_span()
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.SERVER:
        return False
    processors = getattr(getattr(span, "_span_processor", None), "_span_processors", None)
    if isinstance(processors, tuple):
        return any(p is agent.processor for p in processors)
    return _span_processor_active(agent)  # (a span of another SDK: by the global provider)


def _measured_elsewhere(agent: Agent, instrumented: Optional[Callable[[], bool]] = None) -> bool:
    """True when another layer measures and counts the request this layer is about to see.

    A middleware or hook of this module outside this one has claimed it; or the span processor
    sees the request's server span: one already current, or one that OpenTelemetry's
    instrumentation of the framework will start inside this layer (``instrumented()``: the
    framework hooks run before the instrumentation's own middleware, whose spans come from
    the global provider). Never raises.
    """
    if _is_claimed():
        return True
    try:
        if _server_span_measured(agent):
            return True
        return instrumented is not None and _span_processor_active(agent) and instrumented()
    except Exception:
        log.debug("runcov: could not tell whether OpenTelemetry measures a request", exc_info=True)
        return False


def _cannot_sample(agent: Agent, trace_id: int, tracestate: Optional[str]) -> bool:
    """True when no selector could sample the request's trace: it will not be measured, so
    the middleware only counts it as seen and otherwise steps aside (no wrapped
    ``start_response`` or ``send``, no response wrapper). Never raises."""
    try:
        return agent.cannot_sample(trace_id, tracestate)
    except Exception:
        return False


def _known_methods() -> frozenset[str]:
    """RFC 9110's methods and PATCH, or the list in ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``
    (which replaces it, as in OpenTelemetry's HTTP instrumentations)."""
    configured = os.environ.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "")
    methods = {m.strip() for m in configured.split(",") if m.strip()}
    return frozenset(methods) or frozenset(
        ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
    )


#: The methods an endpoint is named by; any other counts as ``_OTHER``, as OpenTelemetry's
#: HTTP conventions do: a method is whatever a client sends, and endpoints, their counts and
#: their metric series must not grow with what clients invent.
KNOWN_METHODS = _known_methods()


def known_method(method: Any) -> Optional[str]:
    """``method`` when it is a known HTTP method, else ``"_OTHER"`` (None stays None)."""
    if method is None:
        return None
    return method if method in KNOWN_METHODS else "_OTHER"


class _Measurement:
    """One request going through a middleware: decide, measure, emit. Never raises."""

    __slots__ = ("agent", "ended", "method", "parent", "route", "status", "ticket")

    def __init__(
        self,
        agent: Agent,
        method: Optional[str],
        route: Optional[str],
        trace: tuple[int, int],
        tracestate: Optional[str],
        route_late: bool,
    ) -> None:
        self.agent = agent
        self.method = method
        self.route = route
        self.status: Optional[str] = None
        self.ended = False
        trace_id, self.parent = trace
        known = route is not None or not route_late
        self.ticket = agent.begin(method, route, trace_id, tracestate, route_known=known)

    def end(self, route: Optional[str] = None, failed: bool = False) -> None:
        """The request is over: emit its coverage when it was measured. Idempotent."""
        if self.ended:
            return
        self.ended = True
        if route is not None:
            self.route = route
        status = self.status or ("5xx" if failed else None)
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.agent.finish(
                ticket,
                parent_span_id=self.parent,
                status=status,
                method=self.method,
                route=self.route,
            )
        self.agent.seen(self.method, self.route)


class _ClosingIterable:
    """Passes a WSGI response through; the measurement ends when the body is exhausted or the
    server closes it, whichever comes first (servers must close, test clients often do not)."""

    def __init__(self, result: Iterable[bytes], on_end: Callable[[], None]) -> None:
        self._result = result
        self._on_end: Optional[Callable[[], None]] = on_end

    def __iter__(self) -> Iterator[bytes]:
        yield from self._result
        self._end()

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def close(self) -> None:
        """Close the application's iterable, then end the measurement."""
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._end()


#: The measurement of the request the current WSGI thread is serving (see ``__call__``).
_wsgi_open = threading.local()


class _Middleware(Generic[_App]):
    """What both middlewares are given: the application, the agent (None: the running one),
    the route resolver and whether the raw path may stand for the route."""

    def __init__(
        self,
        app: _App,
        agent: Optional[Agent] = None,
        *,
        route: Optional[Callable[[dict[str, Any]], Optional[str]]] = None,
        raw_path: bool = False,
    ) -> None:
        self.app: _App = app
        self._agent = agent
        self._route = route
        self._raw_path = raw_path


class RuncovWSGIMiddleware(_Middleware[WSGIApp]):
    """Measures a WSGI application's requests.

    ``route(environ)`` returns the route template of a request (called when it starts and,
    if that gave None, again when it ends); ``raw_path=True`` uses ``PATH_INFO`` instead,
    only when the paths are known to be safe and few. ``agent`` defaults to the running one.
    """

    def _resolve(self, environ: dict[str, Any]) -> Optional[str]:
        try:
            if self._route is not None:
                return self._route(environ)
            if self._raw_path:
                return str(environ.get("PATH_INFO") or "/")
        except Exception:
            log.debug("runcov: route resolver failed", exc_info=True)
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Run the application, measuring the request when it is selected and sampled."""
        agent = _agent(self._agent)
        if agent is None or _measured_elsewhere(agent):
            return self.app(environ, start_response)
        # A WSGI worker thread serves one request at a time: a measurement still open here
        # belongs to a response whose server never closed it. End it, or its scope would stay
        # bound to this thread and every later request would look nested.
        stale = getattr(_wsgi_open, "measurement", None)
        if stale is not None:
            _wsgi_open.measurement = None
            stale.end()
        claim, token = _claim(agent)
        try:
            return self._call(agent, environ, start_response)
        finally:
            claim.release(token)

    def _call(
        self, agent: Agent, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Any:
        method = known_method(environ.get("REQUEST_METHOD"))
        route = self._resolve(environ)
        trace = _trace_of(environ.get("HTTP_TRACEPARENT"))
        tracestate = environ.get("HTTP_TRACESTATE")
        late = self._route is not None
        if (route is not None or not late) and _cannot_sample(agent, trace[0], tracestate):
            agent.seen(method, route)
            return self.app(environ, start_response)
        m = _Measurement(agent, method, route, trace, tracestate, route_late=late)

        def record_status(status: str, headers: Any, exc_info: Any = None) -> Any:
            m.status = status_class(status.split(" ", 1)[0])
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        def done(failed: bool = False) -> None:
            if getattr(_wsgi_open, "measurement", None) is m:
                _wsgi_open.measurement = None
            route = None if m.route is not None else self._resolve(environ)
            m.end(route, failed)

        if m.ticket is not None:
            _wsgi_open.measurement = m
        try:
            result = self.app(environ, record_status)
        except BaseException:
            done(failed=True)
            raise
        return _ClosingIterable(result, done)


class RuncovASGIMiddleware(_Middleware[ASGIApp]):
    """Measures an ASGI application's HTTP requests and websocket connections.

    The route template is ``route(scope)`` when given, else the one Starlette/FastAPI routing
    selects (``scope["route"].path_format``, or the path FastAPI gives a route of a router it
    included with a prefix), after the templates of the mounts the request went through
    (``/v2/things/{name}``; a request a mounted application routes nowhere is
    ``/v2/{path}``), read when the request ends; with ``raw_path=True`` the raw path is used
    instead. ``agent`` defaults to the running one.
    A websocket connection is measured from its handshake until the application returns, under
    the method ``WEBSOCKET``; its status class is that of a denial response, else ``2xx`` once
    it has sent a message (as OpenTelemetry's ASGI instrumentation records it).
    """

    def __init__(
        self,
        app: ASGIApp,
        agent: Optional[Agent] = None,
        *,
        route: Optional[Callable[[dict[str, Any]], Optional[str]]] = None,
        raw_path: bool = False,
    ) -> None:
        super().__init__(app, agent, route=route, raw_path=raw_path)
        _watch_starlette_mounts()

    def _resolve(self, scope: dict[str, Any]) -> Optional[str]:
        try:
            if self._route is not None:
                return self._route(scope)
            template = _starlette_route(scope)
            if template is not None:
                return template
            if self._raw_path:
                return str(scope.get("path") or "/")
        except Exception:
            log.debug("runcov: route resolver failed", exc_info=True)
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the application, measuring the request when it is selected and sampled."""
        kind = scope.get("type")
        agent = _agent(self._agent) if kind == "http" or kind == "websocket" else None
        if agent is None or _measured_elsewhere(agent):
            await self.app(scope, receive, send)
            return
        # Claimed in this coroutine: the application's tasks inherit the claim (as does work
        # run in a copy of their context), the middleware's caller does not.
        claim, token = _claim(agent)
        try:
            await self._call(agent, scope, receive, send)
        finally:
            claim.release(token)

    async def _call(self, agent: Agent, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        headers = _asgi_headers(scope)
        method = WEBSOCKET if kind == "websocket" else known_method(scope.get("method"))
        route = self._resolve(scope)
        trace = _trace_of(headers.get("traceparent"))
        tracestate = headers.get("tracestate")
        if _cannot_sample(agent, trace[0], tracestate):
            try:
                await self.app(scope, receive, send)
            finally:
                agent.seen(method, self._resolve(scope) if route is None else route)
            return
        # Decided inside this coroutine, so the scope is bound to the request's task.
        m = _Measurement(agent, method, route, trace, tracestate, route_late=True)

        async def record_status(message: dict[str, Any]) -> None:
            event = message.get("type")
            if event == "http.response.start" or event == "websocket.http.response.start":
                m.status = status_class(message.get("status"))
            elif event == "websocket.send" and m.status is None:
                m.status = "2xx"
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, record_status)
            failed = False
        finally:
            m.end(self._resolve(scope) if m.route is None else None, failed)


#: The scope key under which the mounts a measured request went through are noted:
#: ``(the prefix their templates make, the Mount routes)``.
_MOUNTS_KEY = "runcov.mounts"

#: What a Mount's ``path_format`` ends with: the path left for the mounted application.
_MOUNT_REST = "/{path}"


def _starlette_route(scope: dict[str, Any]) -> Optional[str]:
    """The full route template Starlette/FastAPI routing selected for a request, or None.

    The route's ``path_format`` (``/items/{item_id}``: no convertors), preceded by the
    templates of the mounts the request went through, as FastAPI's own tracing names its
    server spans (``http.route``): the same route under two mounts is two endpoints. For a
    route of a router it included with a prefix, FastAPI puts the route as the router declared
    it in the scope (no prefix) and the prefixed template next to it, which is the one taken.
    A request that a mounted application routed nowhere (its 404s, a mounted static
    directory) is ``<mount prefix>/{path}``.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    fastapi_scope = scope.get("fastapi")
    if route is not None and isinstance(fastapi_scope, dict):
        context = fastapi_scope.get("effective_route_context")
        if context is not None and getattr(context, "original_route", None) is route:
            effective = getattr(context, "starlette_route", None) or context
            template = getattr(effective, "path_format", None) or template
    mounted = scope.get(_MOUNTS_KEY)
    if mounted is None:
        return template if isinstance(template, str) else None
    prefix, mounts = mounted
    if route is None or any(route is m for m in mounts) or not isinstance(template, str):
        return prefix + _MOUNT_REST
    return str(prefix + template)


def _starlette_mount_handle(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Note the template of a Starlette ``Mount`` in the scope of a request that a layer of
    this module measures, for :func:`_starlette_route`; the routes the mounted application
    selects know nothing of the prefix."""
    if _is_claimed():
        try:
            scope = args[0] if args else kwargs.get("scope")
            template = getattr(instance, "path_format", None)
            if isinstance(scope, dict) and isinstance(template, str):
                if template.endswith(_MOUNT_REST):
                    template = template[: -len(_MOUNT_REST)]
                prefix, mounts = scope.get(_MOUNTS_KEY) or ("", ())
                scope[_MOUNTS_KEY] = (prefix + template, (*mounts, instance))
        except Exception:
            log.debug("runcov: could not note a mount's route", exc_info=True)
    return wrapped(*args, **kwargs)


_mounts_watched = False
_mounts_lock = threading.Lock()


def _watch_starlette_mounts() -> None:
    """Wrap ``starlette.routing.Mount.handle`` (now, or when Starlette is imported), once: a
    second wrapper would note every mount twice."""
    global _mounts_watched
    if _mounts_watched:
        return
    with _mounts_lock:
        if _mounts_watched:
            return
        _mounts_watched = True

        @wrapt.when_imported("starlette.routing")
        def _mounts(module: Any) -> None:
            wrapt.wrap_function_wrapper(module, "Mount.handle", _starlette_mount_handle)


def _asgi_headers(scope: dict[str, Any]) -> dict[str, str]:
    wanted = {}
    for key, value in scope.get("headers") or ():
        name = key.decode("latin-1").lower() if isinstance(key, bytes) else str(key).lower()
        if name in ("traceparent", "tracestate"):
            wanted[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return wanted


# -- framework hooks ------------------------------------------------------------------------


def _opentelemetry_instrumented(app: Any) -> bool:
    """True when OpenTelemetry's instrumentation of Flask or FastAPI/Starlette wraps ``app``
    (its own marker), or OpenTelemetry's ASGI middleware is one of the app's middleware."""
    if getattr(app, "_is_instrumented_by_opentelemetry", False) is True:
        return True
    for middleware in getattr(app, "user_middleware", None) or ():
        module = getattr(getattr(middleware, "cls", None), "__module__", None)
        if isinstance(module, str) and module.startswith("opentelemetry."):
            return True
    return False


def _flask_full_dispatch(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Measure ``Flask.full_dispatch_request``: the route rule is matched by then.

    OpenTelemetry's Flask instrumentation starts the request's span inside it (a
    ``before_request`` function): the hook steps aside for an instrumented app whose spans
    the span processor sees.
    """
    agent = current_agent()
    if agent is None or _measured_elsewhere(agent, lambda: _opentelemetry_instrumented(instance)):
        return wrapped(*args, **kwargs)
    from flask import request

    claim, token = _claim(agent)
    try:
        rule = getattr(request, "url_rule", None)
        route = getattr(rule, "rule", None)
        trace = _trace_of(request.headers.get("traceparent"))
        tracestate = request.headers.get("tracestate")
        if _cannot_sample(agent, trace[0], tracestate):
            agent.seen(known_method(request.method), route)
            return wrapped(*args, **kwargs)
        m = _Measurement(
            agent, known_method(request.method), route, trace, tracestate, route_late=False
        )
        failed = True
        try:
            response = wrapped(*args, **kwargs)
            m.status = status_class(getattr(response, "status_code", None))
            failed = False
            return response
        finally:
            m.end(failed=failed)
    finally:
        claim.release(token)


def _django_instrumented() -> bool:
    """True when Django's settings list OpenTelemetry's Django middleware, which starts the
    request's span inside ``get_response``."""
    from django.conf import settings

    for middleware in getattr(settings, "MIDDLEWARE", None) or ():
        if isinstance(middleware, str) and middleware.startswith("opentelemetry."):
            return True
    return False


def _django_begin(agent: Agent, request: Any) -> Optional[_Measurement]:
    """The measurement of a Django request; None when its trace cannot be sampled (it is then
    only counted, by :func:`_django_end`)."""
    meta = getattr(request, "META", {})
    trace = _trace_of(meta.get("HTTP_TRACEPARENT"))
    tracestate = meta.get("HTTP_TRACESTATE")
    if _cannot_sample(agent, trace[0], tracestate):
        return None
    method = known_method(getattr(request, "method", None))
    return _Measurement(agent, method, None, trace, tracestate, route_late=True)


def _django_end(agent: Agent, request: Any, m: Optional[_Measurement], response: Any) -> None:
    """The Django request is over (``response`` None: it raised): emit or count it under the
    route Django resolved during it."""
    route = _django_route(request)
    if m is None:
        agent.seen(known_method(getattr(request, "method", None)), route)
        return
    if response is not None:
        m.status = status_class(getattr(response, "status_code", None))
    m.end(route, failed=response is None)


def _django_get_response(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Measure Django's ``BaseHandler.get_response`` (WSGI): the route is resolved inside it."""
    agent = current_agent()
    if agent is None or not args or _measured_elsewhere(agent, _django_instrumented):
        return wrapped(*args, **kwargs)
    claim, token = _claim(agent)
    try:
        request = args[0]
        m = _django_begin(agent, request)
        response = None
        try:
            response = wrapped(*args, **kwargs)
            return response
        finally:
            _django_end(agent, request, m, response)
    finally:
        claim.release(token)


async def _django_get_response_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Measure Django's ``BaseHandler.get_response_async`` (ASGI) as :func:`_django_get_response`
    measures WSGI requests. The scope opens in the request's task; a sync view (and sync
    middleware) runs in a thread of Django's executor, which runs it in that scope."""
    agent = current_agent()
    if agent is None or not args or _measured_elsewhere(agent, _django_instrumented):
        return await wrapped(*args, **kwargs)
    claim, token = _claim(agent)
    try:
        request = args[0]
        m = _django_begin(agent, request)
        response = None
        try:
            response = await wrapped(*args, **kwargs)
            return response
        finally:
            _django_end(agent, request, m, response)
    finally:
        claim.release(token)


def _django_route(request: Any) -> Optional[str]:
    """The route template Django resolved for ``request`` (``/items/<int:id>``), or None."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if route and not route.startswith("/"):
        route = "/" + route
    return route or None


def _starlette_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Run a Starlette/FastAPI application through :class:`RuncovASGIMiddleware`, unless
    another layer measures its requests: the application mounted in one already measured,
    or its spans (OpenTelemetry's middleware in its stack) reaching the span processor."""
    agent = current_agent()
    if agent is None or _measured_elsewhere(agent, lambda: _opentelemetry_instrumented(instance)):
        return wrapped(*args, **kwargs)
    return RuncovASGIMiddleware(wrapped)(*args, **kwargs)


_hooked = False


def install_framework_hooks() -> None:
    """Measure Flask, Django and Starlette/FastAPI apps when (or if) they are imported.

    For processes without an OpenTelemetry SDK tracer provider when runcov starts. A provider
    the application sets later gets the span processor: the hooks then step aside for the
    requests whose server spans it sees (a request is never measured, or counted, twice).
    """
    global _hooked
    if _hooked:
        return
    _hooked = True

    @wrapt.when_imported("flask.app")
    def _flask(module: Any) -> None:
        wrapt.wrap_function_wrapper(module, "Flask.full_dispatch_request", _flask_full_dispatch)

    @wrapt.when_imported("django.core.handlers.base")
    def _django(module: Any) -> None:
        wrapt.wrap_function_wrapper(module, "BaseHandler.get_response", _django_get_response)
        wrapt.wrap_function_wrapper(
            module, "BaseHandler.get_response_async", _django_get_response_async
        )

    @wrapt.when_imported("starlette.applications")
    def _starlette(module: Any) -> None:
        wrapt.wrap_function_wrapper(module, "Starlette.__call__", _starlette_call)

    _watch_starlette_mounts()
