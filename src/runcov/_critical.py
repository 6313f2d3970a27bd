"""Measure functions that are not HTTP requests: ``@runcov.critical`` and ``runcov.watch``.

Each call of a marked function is a request of the endpoint ``"job <qualified name>"`` (or the
name given), sampled and exported like an HTTP request. When the call runs inside a recorded
OpenTelemetry span, its coverage joins that span's trace; otherwise it gets a trace of its own.
A call made while a measured request is already in progress is part of that request.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from typing import Any, Callable, Optional, TypeVar, Union

import wrapt

from runcov.agent import current_agent, random_span_id, random_trace_id
from runcov.errors import ConfigError

log = logging.getLogger("runcov")

__all__ = ["critical", "watch"]

F = TypeVar("F", bound=Callable[..., Any])

JOB = "job"


def _trace_parent() -> tuple[int, int, Any]:
    """``(trace id, parent span id, tracestate)`` for a call: the current span's, or new ones."""
    try:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return ctx.trace_id, ctx.span_id, ctx.trace_state
    except Exception:
        pass
    return random_trace_id(), random_span_id(), None


def _begin(name: str) -> tuple[Any, Any, int]:
    agent = current_agent()
    if agent is None:
        return None, None, 0
    trace_id, parent, tracestate = _trace_parent()
    return agent, agent.begin(JOB, name, trace_id, tracestate), parent


def _end(name: str, agent: Any, ticket: Any, parent: int, failed: bool) -> None:
    if ticket is not None:
        agent.finish(ticket, parent_span_id=parent, status="error" if failed else "ok")
    agent.seen(JOB, name)


def _measured(name: str) -> Callable[..., Any]:
    """A wrapt wrapper ``(wrapped, instance, args, kwargs)`` measuring each call as one request
    of the endpoint ``job <name>``."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(wrapped):
            return _run_async(name, wrapped, args, kwargs)
        agent, ticket, parent = _begin(name)
        if agent is None:
            return wrapped(*args, **kwargs)
        failed = True
        try:
            result = wrapped(*args, **kwargs)
            failed = False
            return result
        finally:
            _end(name, agent, ticket, parent, failed)

    return wrapper


async def _run_async(name: str, wrapped: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
    # The scope is opened inside the coroutine, i.e. in the task that runs it.
    agent, ticket, parent = _begin(name)
    if agent is None:
        return await wrapped(*args, **kwargs)
    failed = True
    try:
        result = await wrapped(*args, **kwargs)
        failed = False
        return result
    finally:
        _end(name, agent, ticket, parent, failed)


def _qualified_name(func: Any) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "?")
    return f"{module}.{qualname}"


def critical(func: Union[F, str, None] = None, *, name: Optional[str] = None) -> Any:
    """Mark a function (sync or async) whose calls runcov measures as requests.

    Use as ``@runcov.critical``, ``@runcov.critical("billing.run")`` or
    ``@runcov.critical(name="billing.run")``; the endpoint is
    ``"job <name>"`` with the function's qualified name by default, matched by selectors such
    as ``"job billing.*"``. Without a running agent the function runs untouched.
    """

    def decorate(f: F) -> F:
        if not callable(f):
            raise TypeError(f"runcov.critical expects a function, got {f!r}")
        wrapped = wrapt.FunctionWrapper(f, _measured(name or _qualified_name(f)))
        if inspect.iscoroutinefunction(f) and not inspect.iscoroutinefunction(wrapped):
            # Keep ``asyncio.iscoroutinefunction`` true for frameworks that inspect handlers.
            @functools.wraps(f)
            async def coro(*args: Any, **kwargs: Any) -> Any:
                return await wrapped(*args, **kwargs)

            return coro  # type: ignore[return-value]
        return wrapped  # type: ignore[return-value]

    if isinstance(func, str):  # ``@runcov.critical("billing.run")``
        name, func = func, None
    if func is not None:
        return decorate(func)
    return decorate


def _parse_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module.strip() or not attr.strip():
        raise ConfigError(
            f"watch={target!r}: expected 'package.module:function' or 'package.module:Class.method'"
        )
    return module.strip(), attr.strip()


_watched: set[tuple[str, str]] = set()
_watch_lock = threading.Lock()


def watch(target: str, name: Optional[str] = None) -> None:
    """Measure calls of ``"package.module:function"`` (or ``"module:Class.method"``).

    The function is wrapped when its module is imported (now, if it already is), so ``watch``
    can be called before the application imports it. The endpoint is ``"job <name>"``,
    ``name`` defaulting to ``package.module.function``. Watching a target again does nothing.
    """
    module, attr = _parse_target(target)
    endpoint = name or f"{module}.{attr}"
    with _watch_lock:
        if (module, attr) in _watched:
            return  # watching twice would count each call twice
        _watched.add((module, attr))

    def patch(mod: Any) -> None:
        try:
            wrapt.wrap_function_wrapper(mod, attr, _measured(endpoint))
        except Exception:
            log.warning("runcov: could not watch %s", target, exc_info=True)

    wrapt.when_imported(module)(patch)
