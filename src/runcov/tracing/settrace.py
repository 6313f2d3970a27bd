"""The settrace tracing core (CPython before 3.12, or when sys.monitoring ids are taken).

A tracer is installed with ``sys.settrace`` only in threads that run a scope (the thread that
opened it, and thread-pool workers running work handed off from it), never replacing a tracer
someone else installed. Its ``call`` handler returns at once for frames outside any scope or
outside the source roots, so no line events are generated there. Arcs follow coverage.py's
Python tracer: ``(-co_firstlineno, line)`` on a real call, the resumed frame continuing from its
current line, ``(line, -co_firstlineno)`` on a real return (not on a ``yield``).
"""

from __future__ import annotations

import dis
import logging
import os
import sys
import threading
from types import CodeType, FrameType
from typing import Any, Callable, Hashable, Iterable, Optional

from runcov.config import OFF_WORDS
from runcov.tracing import probes
from runcov.tracing._base import CENSUS, EXACT, GENERATOR_FLAGS, Arc, Core, CoverageData, Scope
from runcov.tracing._scope import (
    CensusScope,
    Roots,
    ScopeExpiry,
    ScopeState,
    _current,
    claim_census,
    event_lines,
    file_first_hit,
    in_asyncio_step,
    install_hooks,
    load_accel,
    modules_mark,
    open_scope_here,
)
from runcov.tracing.probes import Probes

log = logging.getLogger("runcov.tracing")

_RESUME = dis.opmap.get("RESUME")
_YIELDS = {dis.opmap[name] for name in ("YIELD_VALUE", "YIELD_FROM") if name in dis.opmap}

TraceFn = Callable[[FrameType, str, Any], Any]

#: Exact scopes recorded by the probes (3.11 with the C extension); ``RUNCOV_EXACT_PROBES=0``
#: keeps them on the tracer.
_EXACT_PROBES = os.environ.get("RUNCOV_EXACT_PROBES", "1").strip().lower() not in OFF_WORDS


class _ThreadState(threading.local):
    """Per-thread bookkeeping of the tracer runcov installed."""

    def __init__(self) -> None:
        self.open: list[ScopeState] = []  # scopes (and hand-offs) running in this thread
        self.installed = False


class SettraceCore(Core):
    """Tracing core on ``sys.settrace``."""

    name = "settrace"

    def __init__(self) -> None:
        self._roots = Roots()
        self._lock = threading.Lock()
        #: Census first hits attributed outside scopes (by the probes), waiting to be claimed.
        self.census_pending: dict[Hashable, dict[str, set[int]]] = {}
        self.census_unattributed = 0
        self.census_owner: Optional[Callable[[], Hashable]] = None
        #: Census probes in the bytecode (3.11 with the C extension), else None: census then
        #: needs a scope per request.
        self._probes: Optional[Probes] = None
        #: What the probes call when they also record exact scopes (the C extension's
        #: ExactProbes), else None: exact scopes then trace their threads.
        self._exact: Any = None
        self._modules_mark: Any = None
        #: Exact scopes are expected (:meth:`expect_exact_scopes`): roots added are probed at
        #: once. Until then, or until the first exact scope, the probes leave the code alone.
        self._exact_expected = False
        #: Forks so far in this process's line (scopes a child inherited are not its to disarm).
        self._generation = 0
        self._tls = _ThreadState()
        self._census_enabled = False
        self._census: dict[str, set[int]] = {}
        #: id(code) -> code whose every line was hit in this census epoch (not traced again).
        self._saturated: dict[int, CodeType] = {}
        #: id(code) -> (code, its line numbers), for the saturation check.
        self._code_lines: dict[int, tuple[CodeType, frozenset[int]]] = {}
        #: id(code) -> (code, co_code) for generator-like code: tells a yield from a return.
        self._gen_code: dict[int, tuple[CodeType, bytes]] = {}
        self._shut = False
        #: A frame's C census tracer (see :meth:`_census_tracer`), with the C extension.
        self._census_lines: Optional[Callable[..., Any]] = None
        #: Cuts exact scopes that outlive the maximum age (:meth:`set_max_scope_age`).
        self._expiry = ScopeExpiry(self._expire_scope)
        self._global_trace = self._make_global_trace(_function_tracer)
        #: What this core installs in a thread (and what ``sys.gettrace()`` then returns).
        self._tracer: Any = self._global_trace
        self.accelerated = False
        # With the C extension, the tracer a thread gets is a C-level trace function that
        # decides most call events and records most frames itself, calling the same Python
        # handlers for the rest without sys.settrace's copies of every frame's locals.
        accel = load_accel()
        if accel is not None:
            try:
                global_trace = self._make_global_trace(accel.function_arcs)
                dispatcher = accel.Dispatcher(
                    global_trace,
                    _current,
                    ScopeState,
                    self._roots.classify,
                    self._census,
                    self._saturated,
                    self._code_lines,
                )
            except Exception as exc:  # as if not built: the Python tracer records
                log.debug("runcov: C trace function unavailable: %s", exc)
            else:
                self._global_trace, self._tracer = global_trace, dispatcher
                self._census_lines = accel.census_lines
                self.accelerated = True
            set_unit = getattr(accel, "set_unit", None)
            if probes.SUPPORTED and set_unit is not None:
                exact_type = getattr(accel, "ExactProbes", None) if self.accelerated else None

                def exact(table: list[Any], census: Optional[Callable[[int], None]]) -> Any:
                    assert exact_type is not None
                    self._exact = exact_type(_current, ScopeState, table, census)
                    return self._exact

                self._probes = Probes(
                    self._roots.classify,
                    self._probe_hit,
                    set_unit,
                    getattr(accel, "Quiet", None),
                    exact if exact_type is not None and _EXACT_PROBES else None,
                    getattr(accel, "set_units", None),
                )
                self.attributes_census = True
        install_hooks(self._enter_thread, self._exit_thread)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # -- Core API -----------------------------------------------------------------------------

    def add_roots(self, roots: Iterable[str]) -> None:
        """Add source roots."""
        if self._roots.add(roots):
            if self.accelerated:
                self._tracer.forget_roots()
            probes = self._probes
            if probes is None or self._shut:
                return
            if self._exact is not None and (self._exact_expected or probes.probing):
                probes.start_probing()  # the code already loaded under the new roots
            elif probes.probing:
                probes.probe_functions()

    @property
    def exact_prepared(self) -> bool:
        """True unless exact scopes use the probes and the code is not probed yet."""
        probes = self._probes
        return probes is None or self._exact is None or self._shut or probes.probing

    def expect_exact_scopes(self) -> None:
        """Exact scopes will be opened: probe the code under the roots now (else the first
        exact scope does, on its request: ~50 ms for the example shop's code)."""
        self._exact_expected = True
        probes = self._probes
        if probes is not None and not self.exact_prepared and self.roots:
            self._start_probing(probes)

    def _start_probing(self, probes: Probes) -> None:
        probes.start_probing()
        self._modules_mark = modules_mark()

    def open_scope(
        self,
        mode: str = EXACT,
        trace_id: Optional[int] = None,
        roots: Optional[Iterable[str]] = None,
    ) -> Scope:
        """Open a scope bound to the current context and trace this thread while it is open
        (a census scope, where the census probes exist: only the binding, the probes record)."""
        if mode == CENSUS and self._probes is not None and not self._shut:
            try:
                scope_roots = self._scope_roots(roots)
                if not self._probes.enabled:
                    self.enable_census()
                return CensusScope(trace_id, scope_roots)
            except Exception:
                log.debug("runcov: could not open a census scope", exc_info=True)
        scope = ScopeState(mode, trace_id, self._scope_roots(roots), self._close_scope)
        try:
            if mode not in (EXACT, CENSUS):
                raise ValueError(f"unknown scope mode {mode!r}")
            if self._shut:
                scope.traced = False
                return scope
            if mode == CENSUS:
                self._census_enabled = True
            elif self._exact is not None and self._probes is not None:
                # The probes record: no tracer. They are armed while the scope is active: open,
                # and in an asyncio task only during its steps (as a tracer is installed), so
                # that other tasks meanwhile run with jumps over the probes, not calls.
                self._probe_new_code(self._probes)
                scope.generation = self._generation
                scope.counted = self._enter_thread(scope)
                scope.stepped = in_asyncio_step(scope)
                scope.bind()
                self._expiry.track(scope)
                return scope
            if not self._enter_thread(scope):
                scope.traced = False
                return scope
            scope.counted = True
            scope.stepped = in_asyncio_step(scope)
            scope.bind()
            if mode == EXACT:
                self._expiry.track(scope)
        except Exception:
            log.debug("runcov: could not open a scope", exc_info=True)
            scope.traced = False
        return scope

    def _probe_new_code(self, probes: Probes) -> None:
        """Before an exact scope: probe what was made since the last look by code the probes
        did not see (modules built outside the import system, a script's namespace that grew,
        and for a script under the roots the closures it made, a web app's views, which only a
        look at all live functions finds)."""
        if not probes.probing:
            self._start_probing(probes)
            return
        mark = modules_mark()
        if mark == self._modules_mark:
            return
        before, self._modules_mark = self._modules_mark, mark
        probes.probe_namespaces()
        main_file = mark[3]
        main_changed = before is None or before[3:] != mark[3:]
        script = isinstance(main_file, str) and self._roots.classify(main_file) is not None
        if main_changed and script:
            probes.probe_functions()

    def _disarm(self, scope: ScopeState, every: bool = False) -> None:
        """Stop counting one activation of ``scope`` (``every``: all of them) as keeping the
        probes armed (not one a forked child inherited: the child's probes were disarmed at
        the fork)."""
        if self._probes is not None and scope.generation == self._generation:
            self._probes.disarm_exact_for(scope, every)

    def _expire_scope(self, scope: ScopeState) -> None:
        """``scope`` outlived the maximum age: with the probes, let go of every activation
        that keeps them armed for it (its own, its steps', work handed to other threads).
        A tracer records only in the threads that run the scope, and takes itself off at
        their next call now that the scope is closed."""
        if self._exact is not None:
            self._disarm(scope, every=True)

    def _enter_thread(self, scope: ScopeState) -> bool:
        if self._exact is not None and not scope.is_census:
            # a step of the scope's task, or work handed to this thread: the probes record it
            if self._probes is None or scope.generation != self._generation:
                return False
            return self._probes.arm_exact_for(scope)
        tls = self._tls
        opened = tls.open  # initialise this thread's local state before any tracer runs
        current = sys.gettrace()
        if current is not None and current is not self._tracer:
            return False  # never replace someone else's tracer
        # The scope is registered before the tracer is set. From sys.settrace on, this thread
        # may run Python code at any allocation (a garbage-collection callback, a finalizer),
        # before the scope is bound; the tracer sees no scope there, and takes itself off a
        # thread with no open scope.
        opened.append(scope)
        tls.installed = True
        # Installed again even when it is already ours: setting it also refreshes the
        # interpreter's per-thread "tracing on" state, whatever happened to it since.
        if self.accelerated:
            self._tracer.install()
        else:
            sys.settrace(self._global_trace)
        return True

    def _exit_thread(self, scope: ScopeState) -> None:
        if self._exact is not None and not scope.is_census:
            self._disarm(scope)
            if not (
                (scope.stepped or scope.paused) and scope.owner_thread == threading.get_ident()
            ):
                # work handed to this thread is over: its frames of the scope (a step's end
                # keeps them: the task's coroutines resume at its next step; so does a
                # generator's pause: it resumes at its next step)
                self._exact.forget(scope)
            return
        tls = self._tls
        try:
            tls.open.remove(scope)
        except ValueError:
            pass
        self._maybe_uninstall(tls)

    def _maybe_uninstall(self, tls: _ThreadState) -> None:
        if any(not s.closed for s in tls.open):
            return
        tls.open.clear()
        if tls.installed:
            tls.installed = False
            if sys.gettrace() is self._tracer:
                sys.settrace(None)

    def _close_scope(self, scope: ScopeState) -> None:
        if self._exact is not None and not scope.is_census:
            self._exact.forget(scope)  # the closing thread's frames of the scope
            if scope.counted:
                scope.counted = False
                self._disarm(scope)
            return
        if scope.counted:
            scope.counted = False
            if scope.stepped or scope.owner_thread == threading.get_ident():
                if not scope.stepped and not scope.is_census:
                    self._check_still_traced(scope)
                self._exit_thread(scope)
        # Closed from another thread: the owner's tracer removes itself at its next call event.

    def _check_still_traced(self, scope: ScopeState) -> None:
        """Closing an exact scope in the thread that opened it: runcov's tracer must still be
        there. Normally it is, or it already removed itself (the closing code's own call
        events see the closed scope), which clears ``installed``. Still marked installed but
        no longer current means something else removed or replaced it meanwhile
        (``sys.settrace`` elsewhere in the app, another tool's tracer object freed by the
        garbage collector): part of the request ran unmeasured, so the scope reports itself
        as not traced and its request is counted as dropped, not exported partial."""
        if self._tls.installed and sys.gettrace() is not self._tracer:
            scope.traced = False
            log.debug("runcov: the tracer was removed from a thread while a scope was open")

    @property
    def exact_by_probes(self) -> bool:
        """True when exact scopes are recorded by the probes (no tracer)."""
        return self._exact is not None and not self._shut

    @property
    def roots(self) -> tuple[str, ...]:
        """The core's normalized source roots."""
        return self._roots.roots

    def current_scope(self) -> Optional[Scope]:
        """The open scope bound to the current context (see :func:`open_scope_here`)."""
        return open_scope_here()

    def new_epoch(self) -> None:
        """Forget the census epoch's first hits (and arm the census probes again)."""
        with self._lock:
            self._census.clear()
            self._saturated.clear()
            self._forget_pending()
            if self._probes is not None and self._probes.enabled:
                self._probes.rearm()

    def disable_census(self) -> None:
        """Stop census recording and forget the epoch's first hits."""
        with self._lock:
            self._census_enabled = False
            self._census.clear()
            self._saturated.clear()
            self._forget_pending()
            if self._probes is not None:
                self._probes.disable()

    # -- census by probes (3.11) --------------------------------------------------------------

    def set_census_owner(self, owner: Optional[Callable[[], Hashable]]) -> bool:
        """Attribute first hits outside census scopes to ``owner()`` (see :meth:`take_census`).
        False without census probes: census then needs a scope per request."""
        if self._probes is None:
            return False
        self.census_owner = owner
        return True

    def enable_census(self) -> None:
        """Record first hits of all traffic from now on, by census probes (see
        :mod:`runcov.tracing.probes`): the code under the roots that functions hold now is
        probed at once, modules imported later as they load, and functions made since by
        code that was not probed (a ``__main__`` script's) at :meth:`refresh_census`."""
        if self._probes is None:
            raise RuntimeError("census without a scope needs the census probes (3.11)")
        with self._lock:
            self._census_enabled = True
        self._probes.enable()

    def refresh_census(self) -> int:
        """Probe the functions made since the last look by code that was not probed, and take
        the probes that fired out of the functions' code (see ``Probes.compact``); how many
        functions changed. Called by the agent's export worker, on a schedule that thins out
        and starts again at each epoch."""
        if self._probes is None or not self._probes.enabled:
            return 0
        return self._probes.probe_functions() + self._probes.compact()

    def take_census(self, key: Hashable) -> Optional[CoverageData]:
        """Claim the first hits attributed to ``key`` outside scopes (None when there are none)."""
        return claim_census(self.census_pending, key, self.roots)

    def _forget_pending(self) -> None:
        self.census_pending.clear()
        self.census_unattributed = 0

    def _probe_hit(self, filename: str, line: int) -> bool:
        """A census probe's first hit: record it; True when the probe may go quiet."""
        scope = _current.get()
        if scope is not None and not scope.closed and not scope.is_census:
            return False  # an exact scope runs: the probe stays for later traffic
        if not self._census_enabled:
            return True
        hits = self._census.get(filename)
        if hits is None:
            hits = self._census.setdefault(filename, set())
        if line in hits:
            return True
        hits.add(line)
        file_first_hit(self, None if scope is None or scope.closed else scope, filename, line)
        return True

    def census_lines(self) -> dict[str, set[int]]:
        """Lines hit in the current epoch, by absolute path (a copy)."""
        out: dict[str, set[int]] = {}
        for filename, lines in list(self._census.items()):
            path = self._roots.classify(filename)
            if path is not None:
                out.setdefault(path, set()).update(lines)
        return out

    def shutdown(self) -> None:
        """Stop tracing in this thread; other threads stop at their next call event."""
        self._shut = True
        self._expiry.stop()
        if self._probes is not None:
            self._probes.stop()
        if sys.gettrace() is self._tracer:
            sys.settrace(None)
        self._tls.open.clear()
        self._tls.installed = False

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._generation += 1
        if self._probes is not None:
            self._probes.after_fork_in_child()
        scope = _current.get()
        _current.set(None)
        if scope is not None:
            scope.closed = True
        self._census.clear()
        self._forget_pending()

    # -- the tracer ---------------------------------------------------------------------------

    def _make_global_trace(self, function_tracer: Callable[[set[Arc], int, int], Any]) -> TraceFn:
        get_scope = _current.get
        classify = self._roots.classify
        core = self
        RESUME = _RESUME

        def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
            if event != "call":
                return None
            scope = get_scope()
            if scope is None or scope.closed:
                # Another task's work on this thread, or our scope was closed from another
                # thread: remove the tracer once no scope of this thread is open.
                try:
                    core._maybe_uninstall(core._tls)
                except Exception:
                    pass
                return None
            code = frame.f_code
            filename = code.co_filename
            if classify(filename) is None:
                return None
            try:
                if scope.is_census:
                    if id(code) in core._saturated:
                        return None  # every line of this code already hit in this epoch
                    return core._census_tracer(scope, filename, code)
                first = code.co_firstlineno
                if RESUME is not None:
                    real_call = code.co_code[frame.f_lasti + 1] == 0
                else:
                    real_call = frame.f_lasti < 0
                last = -first if real_call else frame.f_lineno
                arcs = scope.files.get(filename)
                if arcs is None:
                    arcs = scope.files[filename] = set()
                if code.co_flags & GENERATOR_FLAGS:
                    return core._generator_tracer(arcs, last, first, code)
                return function_tracer(arcs, last, first)
            except Exception:
                return None

        return global_trace

    def _generator_tracer(self, arcs: set[Arc], last: int, first: int, code: CodeType) -> TraceFn:
        entry = self._gen_code.get(id(code))
        if entry is None or entry[0] is not code:
            entry = self._gen_code[id(code)] = (code, code.co_code)
        co_code = entry[1]
        RESUME = _RESUME

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal last
            if event == "line":
                line = frame.f_lineno
                arcs.add((last, line))
                last = line
            elif event == "return":
                lasti = frame.f_lasti
                if RESUME is not None:
                    real = len(co_code) <= lasti + 2 or co_code[lasti + 2] != RESUME
                else:
                    real = lasti < 0 or co_code[lasti] not in _YIELDS
                if real:
                    arcs.add((last, -first))
            return local

        return local

    def _census_tracer(self, scope: ScopeState, filename: str, code: CodeType) -> TraceFn:
        census = self._census
        hits = census.get(filename)
        if hits is None:
            hits = census[filename] = set()
        key = id(code)
        own = self._code_lines.get(key)
        if own is None or own[0] is not code:
            own = self._code_lines[key] = (code, event_lines(code))
        code_lines = own[1]
        saturated = self._saturated
        if self._census_lines is not None:  # the same, recorded in C
            return self._census_lines(
                hits, scope.census_lines, filename, code_lines, saturated, key, code
            )

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                line = frame.f_lineno
                if line not in hits:
                    hits.add(line)
                    mine = scope.census_lines.get(filename)
                    if mine is None:
                        mine = scope.census_lines[filename] = set()
                    mine.add(line)
                    if code_lines <= hits:
                        # Later calls of this code are not traced at all until the next epoch.
                        saturated[key] = code
            return local

        return local


def _function_tracer(arcs: set[Arc], last: int, first: int) -> TraceFn:
    """Local tracer for an ordinary function frame (every ``return`` is a real return)."""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal last
        if event == "line":
            line = frame.f_lineno
            arcs.add((last, line))
            last = line
        elif event == "return":
            arcs.add((last, -first))
        return local

    return local
