"""Per-request scope state shared by both tracing cores, and the thread-pool hand-off."""

from __future__ import annotations

import concurrent.futures
import contextvars
import dis
import importlib._bootstrap_external as _bootstrap_external
import logging
import os
import queue
import sys
import threading
import time
from types import CodeType
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional

from runcov._fork import in_forked_child
from runcov.config import OFF_WORDS
from runcov.tracing._base import CENSUS, EXACT, Arc, CoverageData, Scope, normalize_root

log = logging.getLogger("runcov.tracing")

#: The scope bound to the running thread / asyncio task. ``None`` for unsampled work: the hot
#: path of every tracing callback starts with ``_current.get()``.
_current: contextvars.ContextVar[Optional[ScopeState]] = contextvars.ContextVar(
    "runcov_scope", default=None
)

#: ``RUNCOV_ACCEL=0`` makes both cores record with their Python callbacks even where the C ones
#: (``runcov.tracing._accel``) are built.
ACCEL_ENV = "RUNCOV_ACCEL"
#: What the cores use from the extension (an older build in a working tree lacks some).
_ACCEL_NAMES = ("Recorder", "Dispatcher", "function_arcs", "census_lines")


def load_accel() -> Any:
    """The cores' C extension (``runcov.tracing._accel``), or None: not built for this
    interpreter, or turned off with ``RUNCOV_ACCEL=0``."""
    if os.environ.get(ACCEL_ENV, "").strip().lower() in OFF_WORDS:
        return None
    try:
        from runcov.tracing import _accel  # type: ignore[attr-defined]
    except ImportError as exc:  # not built: the Python callbacks record
        log.debug("runcov: C tracing callbacks unavailable: %s", exc)
        return None
    if not all(hasattr(_accel, name) for name in _ACCEL_NAMES):
        log.debug("runcov: C tracing callbacks unavailable: %s is out of date", _accel.__file__)
        return None
    return _accel


#: Sentinel stored as a frame's last line for frames that were already running when the scope
#: opened: their lines belong to the code that opened the scope, not to the measured work.
SKIP = 0


class Roots:
    """A set of source roots and a cached classifier of file names under them."""

    def __init__(self) -> None:
        self._roots: tuple[str, ...] = ()
        #: co_filename -> normalized absolute path, or None when outside every root.
        self._cache: dict[str, Optional[str]] = {}
        self._lock = threading.Lock()

    @property
    def roots(self) -> tuple[str, ...]:
        """The normalized roots."""
        return self._roots

    def add(self, roots: Iterable[str]) -> bool:
        """Add roots; return True when at least one is new."""
        with self._lock:
            new = tuple(r for r in (normalize_root(x) for x in roots) if r not in self._roots)
            if not new:
                return False
            self._roots = self._roots + new
            # Files once outside every root may be inside a new one: reclassify lazily.
            self._cache = {k: v for k, v in self._cache.items() if v is not None}
            return True

    def classify(self, filename: str) -> Optional[str]:
        """Absolute path of ``filename`` when it lies under a root, else None."""
        try:
            return self._cache[filename]
        except KeyError:
            pass
        path: Optional[str] = None
        if filename and not filename.startswith("<") and os.path.isabs(filename):
            real = os.path.realpath(filename)
            if under_roots(real, self._roots):
                path = real
        elif filename and not filename.startswith("<"):
            real = os.path.realpath(os.path.abspath(filename))
            if under_roots(real, self._roots):
                path = real
        self._cache[filename] = path
        return path


def within(path: str, roots: Iterable[str]) -> bool:
    """True when ``path`` is one of ``roots`` or lies below one of them."""
    return any(path == root or path.startswith(root + os.sep) or root == os.sep for root in roots)


def _foreign_dirs() -> tuple[str, ...]:
    """The directories whose code is not a service's own: runcov's package, the standard
    library and the site-packages directories (real paths)."""
    import site
    import sysconfig

    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    paths = sysconfig.get_paths()
    dirs.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except Exception:  # a site module without them (an embedded interpreter's)
        pass
    return tuple(sorted({os.path.realpath(d) for d in dirs if d}))


#: See :func:`_foreign_dirs`.
FOREIGN_DIRS = _foreign_dirs()


def under_roots(path: str, roots: tuple[str, ...]) -> bool:
    """True when the real path ``path`` lies under one of ``roots`` and is the service's own code.

    Code in :data:`FOREIGN_DIRS` (runcov itself, the standard library, installed packages) is
    not, even under a root that holds them (``/``, a directory with a virtual environment in
    it), unless a root that holds it lies inside that directory: a service installed into
    site-packages is measured when its package directory is named as a root.
    """
    holding = [root for root in roots if within(path, (root,))]
    if not holding:
        return False
    for foreign in FOREIGN_DIRS:
        if path == foreign or path.startswith(foreign + os.sep):
            return any(within(root, (foreign,)) for root in holding)
    return True


class ScopeState(Scope):
    """What one scope records. Mutated only from tracing callbacks (under the GIL)."""

    __slots__ = (
        "_closer",
        "_expiry",
        "_roots",
        "_token",
        "census_lines",
        "closed",
        "counted",
        "expired",
        "files",
        "generation",
        "holds",
        "is_census",
        "label",
        "last",
        "mode",
        "owner_thread",
        "result",
        "stepped",
        "trace_id",
        "traced",
        "triples",
    )

    def __init__(
        self,
        mode: str,
        trace_id: Optional[int],
        roots: tuple[str, ...],
        closer: Callable[[ScopeState], None],
    ) -> None:
        self.mode = mode
        self.is_census = mode == CENSUS
        self.trace_id = trace_id
        self.traced = True
        self.closed = False
        #: co_filename -> set of arcs (exact mode).
        self.files: dict[str, set[Arc]] = {}
        #: co_filename -> lines first hit by this scope (census mode).
        self.census_lines: dict[str, set[int]] = {}
        #: (co_filename, from, to) arcs (exact mode, sys.monitoring core).
        self.triples: set[tuple[str, int, int]] = set()
        #: frame -> last line executed in it (exact mode, sys.monitoring core). Frames are keys
        #: (hashed by identity, cheap) and stay referenced until they return or the scope closes.
        self.last: dict[Any, int] = {}
        self._roots = roots
        self._closer = closer
        self._token: Optional[contextvars.Token[Optional[ScopeState]]] = None
        self.owner_thread = threading.get_ident()
        #: The core's fork generation when the scope opened (scopes inherited through fork()
        #: are not counted by the child's core).
        self.generation = 0
        #: True for scopes opened in an asyncio task: they count as active only while one of
        #: their steps runs (per-step arming, see :func:`install_hooks`).
        self.stepped = False
        #: True for the scope of a measured generator's run once it first paused: active only
        #: while the generator's code runs; between two resumptions its thread keeps its
        #: frames (the generator's, suspended), as a step's end does.
        self.paused = False
        #: True while the scope is counted as active by its core (its events armed / its
        #: thread traced).
        self.counted = False
        #: How many activations (the scope's own, its steps', work handed to other threads)
        #: keep the core armed for this scope now: all of them are let go at once when the
        #: scope expires (the sysmon core and the 3.11 probes count them).
        self.holds = 0
        #: True once the scope outlived its core's maximum age (:meth:`expire`): it records
        #: nothing more, and what it recorded before is its result.
        self.expired = False
        #: The core's :class:`ScopeExpiry` while it may cut this scope, else None.
        self._expiry: Optional[ScopeExpiry] = None
        #: What the opener calls the scope (the agent: the request's endpoint), for whoever is
        #: told of its expiry.
        self.label: Optional[str] = None
        self.result: Optional[CoverageData] = None

    def bind(self) -> None:
        """Make this the current scope of the calling context."""
        self._token = _current.set(self)

    def close(self) -> CoverageData:
        """Stop recording; return lines and arcs under this scope's roots. Never raises.

        Unbinding the scope and telling the core (disarming, removing the tracer) are
        bookkeeping: a failure there is logged and never costs the data recorded so far.
        """
        if self.result is not None and not self.expired:
            return self.result
        expiry, self._expiry = self._expiry, None
        if self.expired or (expiry is not None and not expiry.untrack(self)):
            return self._close_expired()
        self.closed = True
        if self.stepped:
            _step_gate.leave()
        for step in (_unbind, self._closer):
            try:
                step(self)
            except Exception:  # the host application never sees an error from runcov
                log.debug("runcov: could not close a scope cleanly", exc_info=True)
        self.result = data = self._take_records()
        return data

    def _take_records(self) -> CoverageData:
        """The scope's records as coverage data, leaving it none. Never raises."""
        try:
            triples, files, census = self.triples, self.files, self.census_lines
            self.triples, self.files, self.census_lines, self.last = set(), {}, {}, {}
            return records_data(triples, files, census, self._roots)
        except Exception:
            log.debug("runcov: could not take a scope's records", exc_info=True)
            return CoverageData()

    def expire(self, release: Callable[[ScopeState], None]) -> None:
        """Stop recording: the scope outlived its core's maximum age. Called on the expiry's
        thread, which took the scope out of its registry first (so :meth:`close` leaves the
        records to this). What the scope recorded until now is its result; ``release`` (the
        core's) lets go of every activation that keeps code armed for it, wherever it runs.
        The opener's :meth:`close` still unbinds it later. Never raises."""
        self.expired = True  # (first: close() must not take the result below for its own)
        self.closed = True  # from here on the callbacks take its work for unsampled work
        result = self._take_records()
        with _expired_results:
            self.result = result
            _expired_results.notify_all()
        if self.stepped:
            try:
                _step_gate.leave()
            except Exception:
                log.debug("runcov: could not take an expired scope's step gate", exc_info=True)
        try:
            release(self)
        except Exception:
            log.debug("runcov: could not disarm for an expired scope", exc_info=True)

    def _close_expired(self) -> CoverageData:
        """:meth:`close` of a scope that expired: unbind it and let the core forget what the
        closing thread holds of it; its result is what it recorded before it expired."""
        if self.result is None:
            # The expiry's thread is taking the records: a moment (bounded all the same).
            with _expired_results:
                _expired_results.wait_for(lambda: self.result is not None, timeout=1.0)
        for step in (_unbind, self._closer):
            try:
                step(self)
            except Exception:
                log.debug("runcov: could not close an expired scope cleanly", exc_info=True)
        return self.result if self.result is not None else CoverageData()


#: Announces the results of expired scopes to their openers closing them meanwhile (rare:
#: a close racing its scope's expiry), for all scopes at once.
_expired_results = threading.Condition(threading.Lock())


def _new_expired_results() -> None:
    global _expired_results
    _expired_results = threading.Condition(threading.Lock())


if hasattr(os, "register_at_fork"):  # (a thread could hold it at fork())
    os.register_at_fork(after_in_child=_new_expired_results)


#: The longest the expiry's thread sleeps at once (seconds).
_LONGEST_SLEEP = 86400.0


class ScopeExpiry:
    """Cuts a core's exact scopes that outlive a maximum age (:meth:`ScopeState.expire`).

    A scope that never closes (a websocket's request, a span the application leaked) would
    otherwise keep the code it promoted armed for every thread for as long as it lives. The
    check runs on a daemon thread of its own, never on a request path: opening a tracked
    scope stores its deadline in a dict, and closing it takes it out again (~0.1 µs each).
    The thread sleeps until the earliest deadline while scopes are open; with none open it
    sleeps one maximum age (a scope opened meanwhile is due no sooner than that), and after
    a whole maximum age without any scope it waits for the next one to wake it (a queue put
    on that scope's opening). ``max_age`` 0 tracks nothing.
    """

    def __init__(self, release: Callable[[ScopeState], None]) -> None:
        #: Seconds an exact scope may stay open (0: no limit).
        self.max_age = 0.0
        #: Called with each scope that expired (on the expiry's thread), or None.
        self.on_expired: Optional[Callable[[ScopeState], None]] = None
        self._release = release
        #: Open tracked scopes -> their deadline (``time.monotonic()``).
        self._open: dict[ScopeState, float] = {}
        self._opens = 0
        #: True while the thread waits for the next scope without a timeout (or is not running).
        self._deep = True
        self._stopped = False
        self._wakeup: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._thread_lock = threading.Lock()
        in_forked_child(self._after_fork_in_child)

    def configure(
        self, seconds: float, on_expired: Optional[Callable[[ScopeState], None]] = None
    ) -> None:
        """Set the maximum age (seconds, 0: no limit) and who is told of expiries. Starts the
        thread; never call it holding a core's lock (a thread's start runs Python code that
        may come to the core's callbacks)."""
        self.max_age = max(0.0, float(seconds))
        self.on_expired = on_expired
        if self.max_age > 0 and not self._stopped:
            self._ensure_thread()
        self._wakeup.put(None)  # deadlines may come sooner now

    def track(self, scope: ScopeState) -> None:
        """Cut ``scope`` once it is older than the maximum age (an exact scope that opened)."""
        max_age = self.max_age
        if max_age <= 0.0 or self._stopped:
            return
        scope._expiry = self
        self._open[scope] = time.monotonic() + max_age
        self._opens += 1
        if self._deep:
            self._deep = False
            self._ensure_thread()  # (started by configure(); again in a forked child)
            self._wakeup.put(None)

    def untrack(self, scope: ScopeState) -> bool:
        """Take ``scope`` out (it closes); False when the expiry took it already."""
        return self._open.pop(scope, None) is not None

    @property
    def open_scopes(self) -> int:
        """Scopes tracked now (for tests)."""
        return len(self._open)

    def stop(self) -> None:
        """Stop the thread (the core shuts down); scopes open now are no longer cut."""
        self._stopped = True
        self._wakeup.put(None)

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._thread_lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._run, name="runcov-expiry", daemon=True)
                self._thread = thread
                try:
                    thread.start()
                except RuntimeError:  # the interpreter is exiting
                    self._thread = None

    def _sleep(self, seconds: float) -> None:
        # At most a day at a time: a maximum age far off (max_scope_seconds accepts any
        # finite number) is no timeout a lock can wait for (OverflowError), and the loop
        # looks at the deadlines again when it wakes.
        try:
            self._wakeup.get(timeout=min(max(0.0, seconds), _LONGEST_SLEEP))
        except queue.Empty:
            pass

    def _run(self) -> None:
        while not self._stopped:
            now = time.monotonic()
            for scope, deadline in list(self._open.items()):
                if deadline <= now and self._open.pop(scope, None) is not None:
                    self._cut(scope)
            if self._stopped:
                return
            deadlines = list(self._open.values())
            if deadlines:
                self._sleep(min(deadlines) - time.monotonic())
                continue
            opens = self._opens
            if self.max_age > 0:
                # Nothing open: a scope opened from now on is due no sooner than this.
                self._sleep(self.max_age)
                if self._open or self._opens != opens:
                    continue
            self._deep = True  # (then look again: a scope may have opened just before)
            if self._open or self._opens != opens:
                self._deep = False
                continue
            self._wakeup.get()

    def _cut(self, scope: ScopeState) -> None:
        try:
            scope.expire(self._release)
        except Exception:
            log.debug("runcov: could not expire a scope", exc_info=True)
        callback = self.on_expired
        if callback is not None:
            try:
                callback(scope)
            except Exception:
                log.debug("runcov: the expiry callback failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        # The parent's scopes are not this process's to cut (those of other threads never
        # close; the forking thread's closes as its core's fork handling left it).
        for scope in list(self._open):
            scope._expiry = None
        self._open = {}
        self._opens = 0
        self._deep = True
        self._wakeup = queue.SimpleQueue()
        self._thread = None
        self._thread_lock = threading.Lock()


def _unbind(scope: ScopeState | CensusScope) -> None:
    """Unbind ``scope`` from the calling context if it is bound there."""
    if _current.get() is scope:
        token, scope._token = scope._token, None
        try:
            if token is None:
                raise ValueError
            _current.reset(token)
        except (ValueError, RuntimeError):  # closed in another context than it opened in
            _current.set(None)


class CensusScope(Scope):
    """A census scope of the sys.monitoring core: only the lines it hit first.

    Census needs no per-scope arming, frame state or arcs, so its scope is a binding of the
    context and a dict of first hits: opening and closing one costs a fraction of an exact
    scope (it is opened for every request of a census endpoint).
    """

    __slots__ = ("_roots", "_token", "census_lines", "closed", "result", "trace_id", "traced")

    mode = CENSUS
    is_census = True
    #: Census scopes are never armed, stepped or counted by a core (see :func:`install_hooks`).
    stepped = False
    counted = False
    generation = -1

    def __init__(self, trace_id: Optional[int], roots: tuple[str, ...]) -> None:
        self.trace_id = trace_id
        self.traced = True
        self.closed = False
        self.result: Optional[CoverageData] = None
        #: co_filename -> lines first hit by this scope.
        self.census_lines: dict[str, set[int]] = {}
        self._roots = roots
        self._token: Any = _current.set(self)  # type: ignore[arg-type]

    def close(self) -> CoverageData:
        """Unbind; return the lines this scope hit first. Idempotent; never raises."""
        if self.result is not None:
            return self.result
        self.closed = True
        _unbind(self)
        census = self.census_lines
        self.result = records_data(set(), {}, census, self._roots) if census else CoverageData()
        return self.result


def file_first_hit(core: Any, scope: Any, filename: str, line: int) -> None:
    """File a census line's first hit: under ``scope`` (the census scope that runs), else under
    the key ``core.census_owner()`` names, in ``core.census_pending`` (counted in
    ``core.census_unattributed`` when there is none)."""
    if scope is not None:
        mine = scope.census_lines.get(filename)
        if mine is None:
            mine = scope.census_lines[filename] = set()
        mine.add(line)
        return
    owner = core.census_owner
    key = owner() if owner is not None else None
    if key is None:
        core.census_unattributed += 1
    else:
        # setdefault: atomic, other threads may run the same trace
        core.census_pending.setdefault(key, {}).setdefault(filename, set()).add(line)


def claim_census(
    pending: dict[Hashable, dict[str, set[int]]], key: Hashable, roots: tuple[str, ...]
) -> Optional[CoverageData]:
    """Take the census first hits filed under ``key`` out of ``pending``, as coverage data
    (None when there are none)."""
    theirs = pending.pop(key, None)
    if not theirs:
        return None
    return records_data(set(), {}, theirs, roots)


def records_data(
    triples: set[tuple[str, int, int]],
    files: dict[str, set[Arc]],
    census: dict[str, set[int]],
    roots: tuple[str, ...],
) -> CoverageData:
    """A scope's raw records as data under ``roots``, turned into per-file sets lazily (on the
    exporter's thread); empty data when nothing was recorded.

    Work that outlives the scope may still add to the records: the settrace core's frame
    tracers hold the per-file sets, a callback on another thread may have looked a set up just
    before the scope let go of it. So they are copied now (each copy runs in C, atomic under
    the GIL): the data is what ran until the scope closed.
    """
    if not (triples or files or census):
        return CoverageData()  # the common census case: nothing hit first
    triples = set(triples)
    files = {name: set(arcs) for name, arcs in list(files.items())}
    census = {name: set(lines) for name, lines in list(census.items())}
    if not (triples or any(files.values()) or any(census.values())):
        return CoverageData()
    return CoverageData(
        raw=lambda: _collect(triples, files, census, roots),
        key=lambda: _fingerprint(triples, files, census, roots),
    )


def _collect(
    triples: set[tuple[str, int, int]],
    files: dict[str, set[Arc]],
    census: dict[str, set[int]],
    roots: tuple[str, ...],
) -> tuple[dict[str, set[int]], dict[str, set[Arc]]]:
    """Turn a scope's raw records into lines and arcs per absolute path under ``roots``."""
    by_file: dict[str, set[Arc]] = {}
    for filename, arcs in files.items():
        by_file.setdefault(filename, set()).update(arcs)
    for filename, prev, line in triples:
        found = by_file.get(filename)
        if found is None:
            found = by_file[filename] = set()
        found.add((prev, line))
    lines_out: dict[str, set[int]] = {}
    arcs_out: dict[str, set[Arc]] = {}
    for filename, arcs in by_file.items():
        path = _resolve(filename, roots)
        if path is None:
            continue
        lines = {b for _, b in arcs if b > 0}
        lines.update(a for a, _ in arcs if a > 0)
        lines_out.setdefault(path, set()).update(lines)
        arcs_out.setdefault(path, set()).update(arcs)
    for filename, lines in census.items():
        path = _resolve(filename, roots)
        if path is not None:
            lines_out.setdefault(path, set()).update(lines)
    return lines_out, arcs_out


def _fingerprint(
    triples: set[tuple[str, int, int]],
    files: dict[str, set[Arc]],
    census: dict[str, set[int]],
    roots: tuple[str, ...],
) -> Hashable:
    """The raw records as one hashable value: equal records give equal lines and arcs.

    Built in C (frozensets of the records), several times cheaper than :func:`_collect`.
    """
    return (
        roots,
        frozenset(triples),
        frozenset((name, frozenset(arcs)) for name, arcs in files.items() if arcs),
        frozenset((name, frozenset(lines)) for name, lines in census.items() if lines),
    )


_realpaths: dict[str, str] = {}


def _resolve(filename: str, roots: tuple[str, ...]) -> Optional[str]:
    real = _realpaths.get(filename)
    if real is None:
        real = os.path.realpath(os.path.abspath(filename))
        if len(_realpaths) < 100_000:
            _realpaths[filename] = real
    return real if under_roots(real, roots) else None


def open_scope_here() -> Optional[ScopeState]:
    """The open scope bound to the current context.

    A scope closed in another context (a span ended on another thread than it started on)
    stays bound where it opened, closed: it is no scope of the work that runs there next. It
    is unbound here, giving back what it was bound over.
    """
    scope = _current.get()
    while scope is not None and scope.closed:
        token = getattr(scope, "_token", None)
        previous = token.old_value if token is not None else None
        scope = None if previous is contextvars.Token.MISSING else previous
        _current.set(scope)
    return scope


class _Handoff:
    """A callable submitted to a thread pool from inside a scope: runs in that scope."""

    __slots__ = ("_fn", "_scope")

    def __init__(self, fn: Callable[..., Any], scope: ScopeState) -> None:
        self._fn = fn
        self._scope = scope

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = self._scope
        if scope.closed or not _hooks:
            return self._fn(*args, **kwargs)
        activate, deactivate = _hooks[0]
        token = _current.set(scope)
        active = False
        try:
            active = activate(scope)
        except Exception:
            pass
        try:
            return self._fn(*args, **kwargs)
        finally:
            if active:
                try:
                    deactivate(scope)
                except Exception:
                    pass
            try:
                _current.reset(token)
            except ValueError:
                _current.set(None)


#: (activate, deactivate) of the running core: count a scope as active in the calling thread
#: (``activate`` returns False when it could not) and stop counting it.
_hooks: list[tuple[Callable[[ScopeState], bool], Callable[[ScopeState], None]]] = []
_submit_patched = False


def install_hooks(
    activate: Callable[[ScopeState], bool], deactivate: Callable[[ScopeState], None]
) -> None:
    """Make thread-pool work and asyncio task steps of a scope count toward it.

    * ``ThreadPoolExecutor.submit`` (which ``loop.run_in_executor`` and ``asyncio.to_thread``
      use) and ``anyio.to_thread.run_sync`` (Starlette's thread pool) from inside a scope run
      the work in that scope, active in the worker thread.
    * Per-step arming: asyncio's ``Handle._run`` (which runs every task step and callback in the
      task's context) activates a scope opened in a task only while that task's step runs, so
      concurrent unsampled tasks on the same loop run with events disarmed / no tracer. The
      wrapper is installed when the first scope opens inside an event loop.
    """
    global _submit_patched
    _hooks[:] = [(activate, deactivate)]
    import wrapt

    if not _submit_patched:

        def hand_off(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            # The callable handed to another thread (the first argument) runs in this scope.
            scope = _current.get()
            if scope is None or scope.closed or not args:
                return wrapped(*args, **kwargs)
            return wrapped(_Handoff(args[0], scope), *args[1:], **kwargs)

        wrapt.wrap_function_wrapper(concurrent.futures.ThreadPoolExecutor, "submit", hand_off)

        def patch_anyio(module: Any) -> None:
            # anyio's worker threads (Starlette / FastAPI sync endpoints) do not go through
            # ThreadPoolExecutor; their functions are handed off the same way.
            wrapt.wrap_function_wrapper(module, "run_sync", hand_off)

        wrapt.register_post_import_hook(patch_anyio, "anyio.to_thread")
        _submit_patched = True


class _StepGate:
    """asyncio's ``Handle._run`` wrapped while scopes opened in tasks are open, and only then.

    The wrapper runs around every task step and callback of every loop, so it is installed
    when the first such scope opens and removed when the last one closes: at low sampling
    rates the loop runs unwrapped nearly all the time. The step that puts the gate in ran
    unwrapped, so its scope is deactivated by a callback run right after that step (see
    :func:`in_asyncio_step`). Another library's patch of ``Handle._run`` made while the gate
    is in is never undone: the gate then stays in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.users = 0
        self._inner: Any = None
        self._wrapper: Any = None

    def enter(self) -> bool:
        """Count a scope in; True when this put the gate in (the running step is not gated)."""
        import asyncio.events

        with self._lock:
            self.users += 1
            handle = asyncio.events.Handle
            if self._wrapper is not None and handle.__dict__.get("_run") is not self._inner:
                return False  # in (or inside another library's wrapper)
            inner = handle._run
            wrapper = _gated(inner)
            handle._run = wrapper  # type: ignore[method-assign,assignment]
            self._inner, self._wrapper = inner, wrapper
            return True

    def leave(self) -> None:
        import asyncio.events

        with self._lock:
            if self.users > 0:
                self.users -= 1
            if self.users or self._wrapper is None:
                return
            handle = asyncio.events.Handle
            if handle.__dict__.get("_run") is self._wrapper:
                handle._run = self._inner  # type: ignore[method-assign]
                self._inner = self._wrapper = None

    def after_fork_in_child(self) -> None:
        # Scopes of the parent's other threads never close in the child.
        self._lock = threading.Lock()
        self.users = 0


def _end_step(scope: ScopeState) -> None:
    """A step of ``scope``'s task is over: stop counting the scope as active (a closed scope
    is no longer counted: its core's closer saw to it)."""
    if scope.stepped and scope.counted and _hooks:
        scope.counted = False
        try:
            _hooks[0][1](scope)
        except Exception:
            pass


def _gated(handle_run: Callable[[Any], None]) -> Callable[[Any], None]:
    """``Handle._run`` activating a task's scope around each of its steps."""

    def _run(self: Any) -> None:
        ctx = self._context
        if ctx is None:
            return handle_run(self)
        scope = ctx.get(_current)
        if scope is not None and scope.stepped and not scope.counted and not scope.closed:
            try:
                scope.counted = _hooks[0][0](scope)
            except Exception:
                pass
        try:
            return handle_run(self)
        finally:
            scope = ctx.get(_current)
            if scope is not None:
                _end_step(scope)

    _run.__doc__ = handle_run.__doc__
    return _run


_step_gate = _StepGate()
os.register_at_fork(after_in_child=_step_gate.after_fork_in_child)


def in_asyncio_step(scope: Optional[ScopeState] = None) -> bool:
    """True when called inside a running asyncio event loop whose steps the step gate sees
    (asyncio's own loops, not uvloop's). A True answer puts the gate in for ``scope``, about
    to open, which :meth:`ScopeState.close` takes out again.

    When this puts the gate in, the step running now is not gated: ``scope`` is then made
    inactive right after it, by a callback placed first in the loop's queue (else every task
    that runs before the scope's next step would run with its events armed)."""
    import asyncio

    loop = asyncio.events._get_running_loop()
    if loop is None or not isinstance(loop, asyncio.BaseEventLoop):
        return False
    if _step_gate.enter() and scope is not None:
        _after_this_step(loop, scope)
    return True


def _after_this_step(loop: Any, scope: ScopeState) -> None:
    """Deactivate ``scope`` as soon as the step running now ends (unless it closed)."""
    import asyncio.events

    handle = asyncio.events.Handle(_end_step, (scope,), loop, contextvars.Context())
    try:
        loop._ready.appendleft(handle)  # next, ahead of the tasks already waiting
    except Exception:
        loop.call_soon(_end_step, scope, context=contextvars.Context())


#: What the import system's loaders tell about the code they load: each listener may return
#: the code the module runs instead (the probes' probed copy), or None.
_IMPORT_LISTENERS: list[Callable[[CodeType], Optional[CodeType]]] = []
#: The loader methods replaced while someone listens: (class, the original ``get_code``).
_PATCHED: list[tuple[Any, Any]] = []


def _reporting(get_code: Any) -> Any:
    def reporting_get_code(self: Any, fullname: str) -> Any:
        code = get_code(self, fullname)  # (the bytecode cache is written as compiled)
        if isinstance(code, CodeType):
            for listener in list(_IMPORT_LISTENERS):
                try:
                    replaced = listener(code)
                except Exception:  # never fail an import
                    continue
                if isinstance(replaced, CodeType):
                    code = replaced
        return code

    reporting_get_code.__wrapped__ = get_code  # type: ignore[attr-defined]
    reporting_get_code.__doc__ = getattr(get_code, "__doc__", None)
    return reporting_get_code


def listen_to_imports(listener: Callable[[CodeType], Optional[CodeType]]) -> None:
    """Call ``listener`` with each module code object the source and bytecode loaders load
    (modules loaded outside the import system's finders too: ``spec_from_file_location`` and
    ``exec_module``); a code object it returns is run instead."""
    if listener in _IMPORT_LISTENERS:
        return
    _IMPORT_LISTENERS.append(listener)
    if _PATCHED:
        return
    for cls in (_bootstrap_external.SourceLoader, _bootstrap_external.SourcelessFileLoader):
        original = cls.__dict__.get("get_code")
        if original is not None:
            _PATCHED.append((cls, original))
            setattr(cls, "get_code", _reporting(original))  # noqa: B010


def stop_listening(listener: Callable[[CodeType], Optional[CodeType]]) -> None:
    """Remove ``listener``; the loaders are restored once nobody listens."""
    try:
        _IMPORT_LISTENERS.remove(listener)
    except ValueError:
        pass
    if not _IMPORT_LISTENERS:
        while _PATCHED:
            cls, original = _PATCHED.pop()
            setattr(cls, "get_code", original)  # noqa: B010


def modules_mark() -> tuple[Any, ...]:
    """What tells whether modules appeared since a look: their number, the last one added,
    ``__main__``'s file and the size of its namespace (a script fills it as it runs)."""
    modules = sys.modules
    namespace = getattr(modules.get("__main__"), "__dict__", {})
    last = next(reversed(modules), None)
    module = modules.get(last) if last is not None else None
    return len(modules), last, id(module), namespace.get("__file__"), len(namespace)


def new_namespaces(
    scanned: set[int], classify: Callable[[str], Optional[str]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file, namespace)`` of each module under the roots not looked at yet, noting every
    module looked at in ``scanned`` (all but ``__main__``, which fills its namespace as the
    script runs)."""
    for module in list(sys.modules.values()):
        try:
            if id(module) in scanned:
                continue
            namespace = module.__dict__
            if namespace.get("__name__") != "__main__":
                scanned.add(id(module))
            filename = namespace.get("__file__")
            if not isinstance(filename, str) or classify(filename) is None:
                continue
        except Exception:  # an exotic module object
            continue
        yield filename, namespace


_PROLOGUE = {
    dis.opmap[name]
    for name in (
        "RESUME",
        "MAKE_CELL",
        "COPY_FREE_VARS",
        "RETURN_GENERATOR",
        "CACHE",
        "EXTENDED_ARG",
    )
    if name in dis.opmap
}


def event_lines(code: CodeType) -> frozenset[int]:
    """Lines of ``code`` that produce a line event: those with an instruction past the prologue
    (a function's ``def`` line holds only ``RESUME`` and never gets one). A superset of what
    runs: both cores take code whose lines census has all hit out of census until the next
    epoch, and a line that never runs only keeps it in."""
    lines: set[int] = set()
    prologue = True
    for instruction in dis.get_instructions(code):
        if prologue and (instruction.opcode in _PROLOGUE or instruction.opname == "POP_TOP"):
            if instruction.opname == "RESUME":
                prologue = False
            continue
        prologue = False
        line = instruction.positions.lineno if instruction.positions else None
        if line is not None:
            lines.add(line)
    return frozenset(lines)


__all__ = [
    "ACCEL_ENV",
    "CENSUS",
    "EXACT",
    "SKIP",
    "CensusScope",
    "Roots",
    "ScopeExpiry",
    "ScopeState",
    "claim_census",
    "event_lines",
    "file_first_hit",
    "in_asyncio_step",
    "install_hooks",
    "listen_to_imports",
    "load_accel",
    "modules_mark",
    "new_namespaces",
    "records_data",
    "stop_listening",
    "within",
]
