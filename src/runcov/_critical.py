"""Measure functions that are not HTTP requests: ``@runcov.critical`` and ``runcov.watch``.

Each call of a marked function is a request of the endpoint ``"job <qualified name>"`` (or the
name given), sampled and exported like an HTTP request. When the call runs inside a recorded
OpenTelemetry span, its coverage joins that span's trace; otherwise it gets a trace of its own.
A call made while a measured request is already in progress is part of that request.

The call of a generator function (or async generator function) runs none of its body: its
request is the generator's run instead, from its first resumption to its end, and measures
only the resumptions (see :class:`_Run`). A plain function that returns a generator it made
(not started yet: a generator expression, a generator function's call) does half its work
later, as the generator runs: its request is the call and that run, ending with the run. Over
``@contextlib.contextmanager`` (or ``asynccontextmanager``) the request is the generator's run
too, the ``with`` statement's setup and teardown, not the call that makes the context manager.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import inspect
import logging
import sys
import threading
import weakref
from types import AsyncGeneratorType, GeneratorType
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Optional,
    TypeVar,
    Union,
    cast,
)

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
        if inspect.isgeneratorfunction(wrapped):
            generator = wrapped(*args, **kwargs)
            if current_agent() is None:
                return generator
            return _run_generator(_Run(name), generator)
        if inspect.isasyncgenfunction(wrapped):
            agen = wrapped(*args, **kwargs)
            if current_agent() is None:
                return agen
            return _run_async_generator(_Run(name), agen)
        agent, ticket, parent = _begin(name)
        if agent is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException:
            _end(name, agent, ticket, parent, True)
            raise
        if ticket is not None and type(result) in _GENERATOR_TYPES and _unstarted(result):
            return _go_on(name, agent, ticket, parent, result)
        _end(name, agent, ticket, parent, False)
        return result

    return wrapper


_GENERATOR_TYPES = (GeneratorType, AsyncGeneratorType)

if sys.version_info >= (3, 12):

    def _unstarted(made: Any) -> bool:
        """True for a generator (async generator) not started yet."""
        if type(made) is GeneratorType:
            return inspect.getgeneratorstate(made) == inspect.GEN_CREATED
        return inspect.getasyncgenstate(made) == inspect.AGEN_CREATED

else:
    _RETURN_GENERATOR = dis.opmap["RETURN_GENERATOR"]

    def _unstarted(made: Any) -> bool:
        """True for a generator (async generator) not started yet."""
        if type(made) is GeneratorType:
            return inspect.getgeneratorstate(made) == inspect.GEN_CREATED
        # 3.11 tells no async generator's state: one not started stands where its frame was
        # made, at RETURN_GENERATOR (started, at a yield; finished, without a frame).
        frame = made.ag_frame
        return (
            frame is not None
            and not made.ag_running
            and frame.f_code.co_code[frame.f_lasti] == _RETURN_GENERATOR
        )


def _go_on(name: str, agent: Any, ticket: Any, parent: int, made: Any) -> Any:
    """``made``, the generator (async generator) a measured call returned, not started yet,
    measured as the rest of the call's request: its run, which ends the request.

    What the call did and what the generator does are one piece of work, as when a function
    returns a generator expression: measured alone, the call would be a line or two, and the
    work (the expression's and what it calls) would be measured by no request. The request
    pauses from the call's return to the generator's first resumption, as between two of its
    resumptions; a generator dropped before it ever runs ends it (see :meth:`_Run.go_on`).
    """
    run = _Run(name)
    measured: Any
    if type(made) is GeneratorType:
        measured = _run_generator(run, made)
    else:
        measured = _run_async_generator(run, made)
    run.go_on(agent, ticket, parent, measured)
    return measured


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


class _Run:
    """The run of a marked generator (or async generator): one request, from the generator's
    first resumption to its end (exhausted, closed, or raising).

    The request is decided, and its scope opened, when the body first runs, where a sync
    function's call would open it: in the thread and context that resume the generator.
    The scope is bound only while the generator's own code runs (:meth:`enter` to
    :meth:`leave`: a resumption, or each step of an async generator's), in the context that
    runs it, so that nothing its consumer runs meanwhile counts, in that task or another.
    It is active (its code armed) only then too: the scope opens active, that activation
    ends at the first pause, and each resumption activates it in the thread that resumes
    it until the next pause, so that a generator kept suspended (a consumer waiting on its
    queue) keeps no code armed for the requests that run meanwhile. The price: each
    resumption of a measured run activates and lets go of its scope, ~1.4-1.9 µs more per
    resumption (benchmarks/RESULTS.md, "A measured generator's run"). A resumption by
    ``throw()`` or ``close()``, which no resumption event announces, finds its code armed
    again by the core's throw event (3.12+) or its parked frame (3.11). A generator kept
    unfinished is still cut by the agent's maximum scope age: it runs on unmeasured, and
    its request still ends when it does.
    """

    __slots__ = (
        "_agent",
        "_ended",
        "_held",
        "_inside",
        "_local",
        "_name",
        "_orphan",
        "_parent",
        "_started",
        "_ticket",
        "_token",
    )

    def __init__(self, name: str) -> None:
        self._name = name
        self._agent: Any = None
        self._ticket: Any = None
        self._parent = 0
        self._started = False
        self._ended = False
        #: The binding made by :meth:`enter`, undone by :meth:`leave`.
        self._token: Any = None
        #: What the generator's code had bound when it last left off: its scope, or a scope
        #: it opened itself (``capture_coverage`` across a ``yield``).
        self._inside: Any = None
        #: True once the run first paused (the opening's activation let go of).
        self._held = False
        #: The activation of the scope while the generator's code runs (a resumption).
        self._local = False
        #: What ends a call's request (:meth:`go_on`) if its generator is dropped unstarted.
        self._orphan: Any = None

    def _scope(self) -> Any:
        """The run's scope while it records (sampled, not nested, traced, not expired)."""
        ticket = self._ticket
        if ticket is None or self._ended:
            return None
        scope = ticket.scope
        return None if scope.closed or not scope.traced else scope

    def _open(self, agent: Any, ticket: Any, parent: int) -> None:
        """The request is decided: its scope (if measured) is open, bound here, and active."""
        self._started = True
        self._agent, self._ticket, self._parent = agent, ticket, parent
        if ticket is not None:
            self._token = getattr(ticket.scope, "_token", None)  # (None: not bound)

    def go_on(self, agent: Any, ticket: Any, parent: int, measured: Any) -> None:
        """Take over the request of the call that returned the generator ``measured`` (its
        scope still bound), as if the call were the run's first resumption: pause it until the
        next. ``measured`` dropped before it ever runs (whose finalizer then runs none of its
        code) ends the request, with what the call measured. Never raises."""
        self._open(agent, ticket, parent)
        self.leave()
        try:
            self._orphan = orphan = weakref.finalize(measured, self.end, False)
            orphan.atexit = False
        except Exception:
            log.debug("runcov: could not watch a generator's finalization", exc_info=True)

    def enter(self) -> None:
        """Before the generator's code runs: at the first time, decide (the scope opens bound
        here, and active); later, bind again what it had bound. Never raises."""
        if not self._started:
            self._open(*_begin(self._name))
            return
        if self._orphan is not None:
            self._orphan.detach()
            self._orphan = None
        scope = self._scope()
        if scope is None or self._token is not None:
            return
        try:
            from runcov.tracing._scope import ScopeState, _current, _hooks

            inside = self._inside
            if inside is None or inside.closed:
                inside = scope
            self._token = token = _current.set(inside)
            if inside is scope:
                scope._token = token  # (what unbinds it if it is closed while bound)
            if isinstance(scope, ScopeState) and _hooks:
                # Active while its code runs, in whichever thread resumes it.
                self._local = _hooks[0][0](scope)
        except Exception:
            log.debug("runcov: could not bind a generator's scope", exc_info=True)

    def leave(self) -> None:
        """After the generator's code ran (it yielded, or waits): give the context back what
        was bound in it before. Never raises."""
        token, self._token = self._token, None
        if token is None:
            return
        scope = self._ticket.scope
        try:
            from runcov.tracing._scope import SKIP, ScopeState, _current, _hooks

            self._inside = _current.get()
            if self._local:
                self._local = False
                _hooks[0][1](scope)
            try:
                _current.reset(token)
            except (ValueError, RuntimeError):  # (the code it ran switched contexts)
                previous = token.old_value
                _current.set(None if previous is token.MISSING else previous)
            if (
                self._held
                or self._ended
                or not isinstance(scope, ScopeState)
                or scope.closed
                or not scope.traced
                or not _hooks
            ):
                return
            # The first pause: the opening's activation (the scope opened active, in the
            # opener's thread) ends here; from now on the scope is active only while the
            # generator's code runs (enter to leave), so that a generator kept suspended
            # keeps no code armed for the requests that run meanwhile.
            self._held = True
            scope.paused = True
            if scope.counted:
                scope.counted = False
                _hooks[0][1](scope)
            # The frames that were running when the scope opened (the consumer's, kept so as
            # not to measure them, until they return inside the scope or it closes) return
            # outside it: let go of them now. One of them may hold the generator, which must
            # stay free to be finalized when it is dropped.
            last = scope.last
            for frame, line in list(last.items()):
                if line == SKIP:
                    last.pop(frame, None)
        except Exception:
            log.debug("runcov: could not unbind a generator's scope", exc_info=True)

    def end(self, failed: bool) -> None:
        """The generator is done: close the scope, queue what it measured. Never raises."""
        if self._ended:
            return
        self._ended = True
        self.leave()
        if self._agent is None:
            return
        try:
            _end(self._name, self._agent, self._ticket, self._parent, failed)
        except Exception:
            log.debug("runcov: could not end a generator's request", exc_info=True)


#: The generators that started runs drive. A run's generator (its caller's) may become
#: garbage together with the one it drives, in a reference cycle; the garbage collector would
#: then finalize both, in any order. Held here, the driven one is finalized only by the run's
#: generator, which closes it as its own code (and, for async generators, no event loop
#: hears of two generators to close where the caller knows one).
_DRIVEN: set[Any] = set()


def _delegate(run: _Run, steps: Any, whole: bool) -> Generator[Any, Any, Any]:
    """``steps`` (a generator, or an awaitable's iterator) as its caller sees it, with
    ``run``'s scope bound while its code runs, and only then.

    The delegation of ``yield from`` (PEP 380) written out: what is sent, thrown or closed
    reaches ``steps`` with the scope bound, its value at the end is returned. ``whole``:
    ``steps`` is the run's generator, whose end (exhausted, raising, or closed) ends the run,
    and which is held in :data:`_DRIVEN` meanwhile; else it is one awaitable of the run's.
    """
    if whole:
        _DRIVEN.add(steps)
    try:
        sent: Any = None
        thrown: Optional[BaseException] = None
        while True:
            run.enter()
            try:
                item = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                if whole:
                    run.end(failed=False)
                return stop.value
            except BaseException:
                if whole:
                    run.end(failed=True)
                raise
            finally:
                run.leave()
                thrown = None
            try:
                sent = yield item
            except GeneratorExit:
                run.enter()
                try:
                    # (3.13+: what it returned on GeneratorExit, which close() returns too)
                    value = steps.close()
                except BaseException:
                    if whole:
                        run.end(failed=True)
                    raise
                else:
                    if whole:
                        run.end(failed=False)
                finally:
                    run.leave()
                if value is None:
                    raise
                return value
            except BaseException as exc:
                sent, thrown = None, exc
    finally:
        if whole:
            _DRIVEN.discard(steps)


def _run_generator(run: _Run, generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``generator`` as its caller sees it, measured by ``run`` (:func:`_delegate`).

    So the caller gets a generator (what frameworks and ``contextlib.contextmanager`` expect
    of a generator function's call), and a generator dropped unfinished still ends its
    request: its finalizer closes it like ``close()``.
    """
    return _delegate(run, generator, whole=True)


class _Bound:
    """An awaitable of an async generator (``asend()``, ``athrow()``, ``aclose()``) awaited
    with the run's scope bound during each of its steps, and only then: between two, the
    task runs its other frames (the consumer's), resumed with the task's own binding."""

    __slots__ = ("_awaitable", "_run")

    def __init__(self, run: _Run, awaitable: Any) -> None:
        self._run = run
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, Any, Any]:
        return _delegate(self._run, self._awaitable.__await__(), whole=False)


def _first_asend(agen: AsyncGenerator[Any, Any]) -> Any:
    """``agen.asend(None)``, its first, which the event loop's first-iteration hook (this
    thread's) does not hear of."""
    try:
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=None)
    except Exception:
        return agen.asend(None)
    try:
        return agen.asend(None)
    finally:
        try:
            sys.set_asyncgen_hooks(firstiter=hooks.firstiter)
        except Exception:
            log.debug("runcov: could not restore the async generator hooks", exc_info=True)


async def _run_async_generator(
    run: _Run, agen: AsyncGenerator[Any, Any]
) -> AsyncGenerator[Any, Any]:
    """``agen`` as its caller sees it, measured by ``run`` (as :func:`_run_generator`, with
    ``asend``/``athrow``/``aclose``, each awaited :class:`_Bound`).

    Only this generator is known to the event loop (its first-iteration hook): the loop
    finalizes it when it is dropped unfinished, or at its shutdown, and that closes ``agen``
    as this generator's own code. Were ``agen`` known too, a shutdown would close both at
    once.
    """
    _DRIVEN.add(agen)
    try:
        sent: Any = None
        thrown: Optional[BaseException] = None
        first = True
        while True:
            try:
                if first:
                    first = False
                    step = _first_asend(agen)
                elif thrown is None:
                    step = agen.asend(sent)
                else:
                    step = agen.athrow(thrown)
                    thrown = None
                item = await _Bound(run, step)
            except StopAsyncIteration:
                run.end(failed=False)
                return
            except BaseException:
                run.end(failed=True)
                raise
            try:
                sent = yield item
            except GeneratorExit:
                try:
                    await _Bound(run, agen.aclose())
                except BaseException:
                    run.end(failed=True)
                    raise
                run.end(failed=False)
                raise
            except BaseException as exc:
                sent, thrown = None, exc
    finally:
        _DRIVEN.discard(agen)


def _qualified_name(func: Any) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "?")
    return f"{module}.{qualname}"


def _context_manager_makers() -> dict[Any, Callable[[Any], Any]]:
    """``contextlib.contextmanager`` and ``asynccontextmanager`` by the code of the functions
    they return (one code object per decorator, whatever function it decorates)."""

    def gen() -> Iterator[None]:
        yield

    async def agen() -> AsyncIterator[None]:
        yield

    return {
        contextlib.contextmanager(gen).__code__: contextlib.contextmanager,
        contextlib.asynccontextmanager(agen).__code__: contextlib.asynccontextmanager,
    }


_CONTEXT_MANAGER_MAKERS = _context_manager_makers()


def _maker_of(func: Any) -> Optional[Callable[[Any], Any]]:
    """``contextlib.contextmanager`` (``asynccontextmanager``) when ``func`` is a function it
    made, whose ``__wrapped__`` is the generator function it decorates; else None."""
    maker = _CONTEXT_MANAGER_MAKERS.get(getattr(func, "__code__", None))
    return maker if maker is not None and hasattr(func, "__wrapped__") else None


def critical(func: Union[F, str, None] = None, *, name: Optional[str] = None) -> Any:
    """Mark a function (sync or async) whose calls runcov measures as requests.

    Use as ``@runcov.critical``, ``@runcov.critical("billing.run")`` or
    ``@runcov.critical(name="billing.run")``; the endpoint is
    ``"job <name>"`` with the function's qualified name by default, matched by selectors such
    as ``"job billing.*"``. Without a running agent the function runs untouched.

    For a generator function (or async generator function) the request is each generator's
    run, from its first resumption to its end (exhausted, closed, or raising), and measures
    its resumptions only, not its consumer's code between them. Its calls still return
    generators (async generators). Over ``@contextlib.contextmanager`` (or
    ``asynccontextmanager``) it measures the generator function that decorator wraps: the
    ``with`` statement's setup and teardown. A plain function that returns a generator (async
    generator) it made and has not started (a generator expression, a generator function's
    call) is measured from its call to that generator's end, as one request: the call, then the
    generator's resumptions only; dropped before it ever runs, the generator ends the request
    with the call. A generator returned already started is returned as it is, its run not
    part of the request.
    """

    def decorate(f: F) -> F:
        if not callable(f):
            raise TypeError(f"runcov.critical expects a function, got {f!r}")
        maker = _maker_of(f)
        if maker is not None:
            # Over ``@contextlib.contextmanager``: the call only makes the context manager, and
            # its generator runs the body later. Measured as the generator function under it.
            return maker(decorate(cast(Any, f).__wrapped__))
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


def _watching(original: Any, name: str) -> Any:
    """What ``watch`` puts in place of ``original`` (a function, method, ``staticmethod`` or
    ``classmethod``) to measure its calls as the endpoint ``job <name>``.

    Over ``@contextlib.contextmanager`` (``asynccontextmanager``), as :func:`critical`: the
    same decorator over the generator function it wraps, measured. Wrapping the function the
    decorator made would measure only the call that makes the context manager, whose code
    (contextlib's) is not the application's, and not the ``with`` statement's setup and
    teardown, the generator's run.
    """
    binding = type(original) if isinstance(original, (staticmethod, classmethod)) else None
    func = original.__func__ if binding is not None else original
    maker = _maker_of(func)
    if maker is None:
        return wrapt.FunctionWrapper(original, _measured(name))
    made = maker(wrapt.FunctionWrapper(func.__wrapped__, _measured(name)))
    return made if binding is None else binding(made)


def watch(target: str, name: Optional[str] = None) -> None:
    """Measure calls of ``"package.module:function"`` (or ``"module:Class.method"``).

    The function is wrapped when its module is imported (now, if it already is), so ``watch``
    can be called before the application imports it. The endpoint is ``"job <name>"``,
    ``name`` defaulting to ``package.module.function``. Watching a target again does nothing.
    What a call's request measures is what ``@runcov.critical`` measures (see
    :func:`critical`): for a generator function, each generator's run; for a
    ``@contextlib.contextmanager`` (or ``asynccontextmanager``) function, its generator's run,
    the ``with`` statement's setup and teardown; for a plain function returning a generator it
    made, the call and that generator's run, the request ending when the generator does.
    """
    module, attr = _parse_target(target)
    endpoint = name or f"{module}.{attr}"
    with _watch_lock:
        if (module, attr) in _watched:
            return  # watching twice would count each call twice
        _watched.add((module, attr))

    def patch(mod: Any) -> None:
        try:
            # (``_watching`` may return a function, not the proxy wrapt's types expect)
            wrapt.wrap_object(mod, attr, cast(Any, _watching), (endpoint,))
        except Exception:
            log.warning("runcov: could not watch %s", target, exc_info=True)

    wrapt.when_imported(module)(patch)
