"""The sys.monitoring tracing core (CPython 3.12+): exact per-scope lines and arcs, and census.

How it stays cheap (see docs/architecture.md, "Tracing core"):

* Nothing is done to any code object until exact scopes are expected (the agent samples above
  0), the first one opens, or census starts: an agent at a rate of 0 sets no event. From
  then on, code under the source roots carries a local ``PY_START`` until its first call,
  which registers it. It is found then and when a root is added (live functions, running
  stacks), at import
  (the loaders report each module's code) and, when a scope opens, in modules that appeared by
  other means. There is no global ``PY_START``: on 3.12 it would cost every code object that
  ran while it was set its superinstructions for good, framework and standard library included
  (~0.7 % more instructions per request of a Flask service, measured).
* While at least one exact scope is open, the registered code objects (those that have run)
  are *watched* with local ``PY_START`` and ``PY_RESUME`` events. A call or resumption that
  belongs to an exact scope promotes its code to local ``LINE`` and ``PY_RETURN`` events, which
  take effect in that very frame; code that first runs while armed is treated the same way.
  Callbacks for work outside any scope return after one ContextVar lookup. When the last scope
  closes, the promoted code is disarmed at once; watched code that was not promoted keeps its
  watch until its next call outside any scope takes it off. (With the C extension, the
  callback of watched code promotes and takes watches off in C, and the arm and disarm
  toggle in C; the Python ``promote``, ``unwatch`` and ``_apply`` loops are the reference,
  and the callbacks' run where C cannot take the core's lock at once.)
  So an arm and a disarm toggle the code that runs between two sampled requests (the
  promoted code, and what unsampled requests call meanwhile), not every registered code
  object: code that is rarely called is not toggled at all. The tool's global events
  (``PY_UNWIND``, ``PY_THROW``) never change after start: changing them would make CPython
  re-instrument every code object of the process at its next call. Instead, they have no
  callback while nothing is armed, which CPython skips without calling into Python (neither
  is an instruction event: no code is instrumented for them).
* ``throw()`` resumes a generator or coroutine without its ``RESUME`` (``PY_RESUME`` does not
  fire): a task's cancellation throws ``CancelledError`` in at the ``await``, often after the
  task's code was disarmed between its steps. ``PY_THROW`` (global only: it cannot be a local
  event) promotes such code as ``PY_RESUME`` would, in Python (it is rare).
* Arcs follow coverage.py: the previous line is kept per frame (keyed by ``id(frame)`` inside the
  scope), a frame's first line gets the entry arc ``(-co_firstlineno, line)`` and a return or
  unwind the exit arc ``(line, -co_firstlineno)``. A suspended generator keeps its last line, so
  a resumed frame continues from its ``yield``/``await`` line as coverage.py's tracers do. An
  exception thrown in at a plain ``yield`` that no handler of the frame catches ends it there
  without an exit arc (coverage.py's tracer sees the frame's last instruction at a yield).
* Census mode arms ``LINE`` on every registered code object; each line records its first hit and
  returns ``DISABLE`` (when no exact scope needs the location), so steady cost is ~zero. A hit
  inside a census scope goes to that scope; any other goes to whoever ``census_owner()`` names
  (the agent: the current trace), to be claimed with :meth:`SysmonCore.take_census`, so
  census needs no scope per request. A code object all of whose lines the epoch has hit
  carries no event until the next epoch, which re-arms with a local toggle.
  ``restart_events()`` is never called: it would re-arm every other tool's locations too.
"""

from __future__ import annotations

import dis
import gc
import inspect
import logging
import os
import sys
import threading
import time
from types import CodeType, FunctionType
from typing import Any, Callable, Hashable, Iterable, Optional

from runcov.tracing._base import CENSUS, EXACT, Core, CoverageData, Scope
from runcov.tracing._scope import (
    SKIP,
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
    listen_to_imports,
    load_accel,
    modules_mark,
    new_namespaces,
    open_scope_here,
    stop_listening,
)
from runcov.tracing.probes import _parse_exception_table

log = logging.getLogger("runcov.tracing")

#: Tool ids runcov may use: 0-2 and 5 belong to debuggers, coverage.py, profilers, optimizers.
CANDIDATE_TOOL_IDS = (3, 4)
#: Cost of one callback that finds no scope and returns (seconds; measured 0.13-0.14 µs on the
#: project's machines with the C callbacks, which count the linger budget themselves): the unit
#: of the linger budget.
_FILTERED_CALLBACK_COST = 0.13e-6
#: The same with the Python callbacks (``RUNCOV_ACCEL=0``), which also count the budget.
_FILTERED_CALLBACK_COST_PY = 0.35e-6
#: Budgets below this many callbacks are not worth a linger: disarm at once.
_MIN_LINGER_CALLBACKS = 32
#: One disarm in so many leaves all watched code watched (see ``SysmonCore._hot``).
_PROBE_EVERY = 8
TOOL_NAME = "runcov"


class ToolUnavailable(RuntimeError):
    """Both of runcov's sys.monitoring tool ids are taken by other tools."""


class SysmonCore(Core):
    """Tracing core on ``sys.monitoring`` (PEP 669)."""

    name = "sysmon"
    attributes_census = True

    def __init__(self) -> None:
        mon = sys.monitoring  # type: ignore[attr-defined]
        self._mon = mon
        ev = mon.events
        self._DISABLE = mon.DISABLE
        self._LINE = ev.LINE
        self._EXACT_LOCAL = ev.LINE | ev.PY_RETURN
        #: While exact scopes are armed (and census is off), registered code carries
        #: only these: a call or resumption that belongs to an exact scope promotes its code
        #: to ``_EXACT_LOCAL`` (in that very frame), so only the code those requests run pays
        #: for line events, and the rest only for a cheap toggle of its entry instructions.
        self._WATCH = ev.PY_START | ev.PY_RESUME
        # The global events stay set for the tool's lifetime: changing a tool's global events
        # bumps the interpreter's instrumentation version, and every code object in the process
        # (framework, stdlib) is then re-instrumented at its next call. PY_UNWIND and PY_THROW
        # have a callback only while exact scopes are armed; PY_START is local (module
        # docstring). PY_THROW cannot be a local event: it is set globally from the start.
        self._GLOBAL = ev.PY_UNWIND | ev.PY_THROW
        self._PY_START = ev.PY_START
        self._tool = self._claim_tool_id()
        self._lock = threading.RLock()
        self._roots = Roots()
        #: id(code) -> code for code objects under the roots (kept alive: ids stay unique).
        self._codes: dict[int, CodeType] = {}
        #: Module bodies under the roots that started while events were armed. A module body
        #: runs once, at import: it is armed for that run and disarmed at the next disarm, but
        #: never toggled with the registered code (a large module's body would cost every
        #: arm/disarm cycle the instrumentation of all its lines: ~0.8 ms for 5,000 functions).
        self._once: dict[int, CodeType] = {}
        self._active = 0  # open exact scopes
        self._generation = 0  # incremented in a forked child
        #: True while code carries the exact-mode events (open scopes, then while lingering).
        self._exact_armed = False
        #: Lingering (ski rental): after the last exact scope closed, the code stays armed until
        #: unsampled work has paid, in filtered callbacks, about what a disarm and re-arm cycle
        #: costs (the toggles plus the re-specialization of the toggled code), or until
        #: ``linger`` seconds passed. A scope opened meanwhile reuses the armed state for free.
        #: ``_linger_scale`` adapts the budget: doubled when a linger is reused, halved when it
        #: runs out (low sampling rates soon linger very little). A linger between two steps of
        #: an asyncio scope that is still open (``_linger_step``) adapts its own scale,
        #: ``_step_scale``, the same way: the scope's next step comes whatever the sampling
        #: rate, soon on a loop with few tasks, after many others' steps on a busy one.
        self.linger = 0.05
        self._lingering = False
        self._linger_budget = 0
        self._linger_scale = 1.0
        self._linger_step = False
        self._step_scale = 1.0
        self._toggle_cost = 0.0
        self._disarm_at = 0.0
        self._disarm_pending = False
        self._wake = threading.Event()
        self._disarmer: Optional[threading.Thread] = None
        #: Guards the disarmer's start, which happens outside ``_lock`` (``_start_disarmer``).
        self._disarmer_lock = threading.Lock()
        self._census_enabled = False
        #: co_filename -> lines hit in the current census epoch.
        self._census: dict[str, set[int]] = {}
        #: ids of the registered code objects all of whose lines census hit in this epoch:
        #: they carry no ``LINE`` event until the next epoch (code that keeps a local event
        #: runs slower even when every location of it returned ``DISABLE``). What each one
        #: must hit first (its lines past the prologue) is kept in ``_census_need``.
        self._census_done: set[int] = set()
        self._census_need: dict[int, frozenset[int]] = {}
        #: Census attribution outside scopes: ``owner()`` names the request that runs (the
        #: agent's: the current trace id), and first hits wait here under that name until
        #: :meth:`take_census` claims them. Bounded by the lines under the roots (a line is
        #: first hit once per epoch); a new epoch forgets what was never claimed.
        self.census_owner: Optional[Callable[[], Hashable]] = None
        self.census_pending: dict[Hashable, dict[str, set[int]]] = {}
        #: First hits outside any scope that ``owner()`` could not name (since the epoch began).
        self.census_unattributed = 0
        self._shut = False
        #: id(code) -> code under the roots that carries a local PY_START until its first call
        #: (then it is registered in ``_codes``).
        self._pending: dict[int, CodeType] = {}
        #: ids of the modules whose namespaces were scanned, and what, at the last scan, told
        #: whether another one is due (the number of modules, ``__main__``'s file and size).
        self._scanned: set[int] = set()
        self._scan_mark: tuple[int, Any, int] = (-1, None, -1)
        #: Code under the roots is watched for its first call (see :meth:`_discover`): from the
        #: moment exact scopes are expected, the first opens, or census starts. Until then the
        #: core leaves all code as it is (an agent at a rate of 0 instruments nothing).
        self._discovering = False
        #: Registered code promoted to the exact-mode events since the last arm (id -> code),
        #: and the time those promotions took (seconds).
        self._promoted: dict[int, CodeType] = {}
        self._promote_cost = 0.0
        #: ids of the registered code objects that carry the watch (``_WATCH``) now. While
        #: census is off, a disarm leaves the watch on code that was not promoted, and the next
        #: call of that code outside any scope takes it off (``_unwatch_cost``: their time since
        #: the last arm, a part of the cycle the linger budget weighs); an arm watches the rest.
        self._watching: set[int] = set()
        self._unwatch_cost = 0.0
        #: ids of the registered code objects that carry nothing, while census is off: what
        #: the next arm watches. Each registered code object is in ``_watching``, in
        #: ``_promoted`` or here, so an arm and a disarm never walk all registered code.
        self._bare: set[int] = set()
        #: ids of watched code whose watch a call outside any scope took off: code that
        #: unsampled requests call. Later disarms take its watch off at once, with the promoted
        #: code (cheaper than the callback), and leave only the rest watched. Every
        #: ``_PROBE_EVERY``-th disarm leaves all of it watched and starts the set afresh, so
        #: code no longer called stops being toggled.
        self._hot: set[int] = set()
        self._disarms = 0
        #: Cuts exact scopes that outlive the maximum age (:meth:`set_max_scope_age`).
        self._expiry = ScopeExpiry(self._expire_scope)
        self._register_callbacks()
        mon.set_events(self._tool, self._GLOBAL)
        listen_to_imports(self._code_loaded)
        install_hooks(self._activate, self._deactivate)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # -- set-up -------------------------------------------------------------------------------

    def _claim_tool_id(self) -> int:
        taken = []
        for tool in CANDIDATE_TOOL_IDS:
            try:
                self._mon.use_tool_id(tool, TOOL_NAME)
                return tool
            except ValueError:
                taken.append(f"{tool}={self._mon.get_tool(tool)!r}")
        raise ToolUnavailable("sys.monitoring tool ids taken: " + ", ".join(taken))

    @property
    def tool_id(self) -> int:
        """The sys.monitoring tool id this core holds."""
        return self._tool

    def _register_callbacks(self) -> None:
        mon, ev, tool = self._mon, self._mon.events, self._tool
        codes = self._codes
        once = self._once
        roots = self._roots
        DISABLE = self._DISABLE
        get_scope = _current.get
        getframe = sys._getframe
        census = self._census
        core = self

        waiting = self._pending
        promoted = self._promoted
        watching = self._watching
        bare = self._bare
        hot = self._hot
        EXACT_LOCAL, WATCH = self._EXACT_LOCAL, self._WATCH
        perf_counter = time.perf_counter

        def promote(code: CodeType) -> Any:
            # A watched code object starts or resumes: arm it for good (until the disarm) if
            # this frame belongs to an exact scope (not one closed: expired, say).
            scope = get_scope()
            if scope is None or scope.is_census or scope.closed:
                if not core._exact_armed:
                    # A watch the last disarm left on: this code runs outside any scope now.
                    return unwatch(code)
                if core._lingering:
                    core._linger_budget -= 2  # a Python callback: about two filtered C ones
                    if core._linger_budget <= 0:
                        core._linger_ran_out()
                return None
            try:
                started = perf_counter()
                with core._lock:
                    if core._exact_armed and id(code) not in promoted and id(code) in codes:
                        promoted[id(code)] = code
                        watching.discard(id(code))
                        mon.set_local_events(tool, code, EXACT_LOCAL)
                        # what a disarm would throw away: the linger budget counts it
                        core._promote_cost += perf_counter() - started
            except Exception:
                pass
            return None

        def unwatch(code: CodeType) -> Any:
            try:
                started = perf_counter()
                with core._lock:
                    if not core._exact_armed and id(code) in watching:
                        watching.discard(id(code))
                        bare.add(id(code))
                        hot.add(id(code))
                        mon.set_local_events(tool, code, 0)
                        core._unwatch_cost += perf_counter() - started
            except Exception:
                pass
            return None

        def on_py_start(code: CodeType, offset: int) -> Any:
            # The first call of code found under the roots, or a call of watched code while
            # exact scopes are armed.
            try:
                if id(code) in codes:
                    return promote(code)
                waiting.pop(id(code), None)
                if roots.classify(code.co_filename) is None:
                    return DISABLE  # (not set on such code: defensive)
                with core._lock:
                    events = core._local_events()
                    if events == WATCH:
                        scope = get_scope()
                        if scope is not None and not scope.is_census and not scope.closed:
                            events = EXACT_LOCAL
                    if code.co_name != "<module>":
                        core._register(code, events)
                    elif events and events != WATCH:
                        once[id(code)] = code  # a module body: armed for this run only
                    else:
                        events = 0
                    # Also when 0: the discovery's PY_START goes. It is never DISABLEd, so that
                    # a later watch (PY_START again) arms the location.
                    mon.set_local_events(tool, code, events)
            except Exception:
                pass
            return None

        def on_py_resume(code: CodeType, offset: int) -> Any:
            if id(code) in codes:
                return promote(code)
            return None

        def on_line(code: CodeType, line: int) -> Any:
            scope = get_scope()
            if scope is not None and scope.closed:
                scope = None  # (an expired scope's work, or a scope closed elsewhere)
            if scope is None or scope.is_census:
                if core._lingering:
                    core._linger_budget -= 1
                    if core._linger_budget <= 0:
                        core._linger_ran_out()
                if not core._census_enabled:
                    return None
                try:
                    filename = code.co_filename
                    hits = census.get(filename)
                    if hits is None:
                        hits = census[filename] = set()
                    first = line not in hits
                    if first:
                        hits.add(line)
                        file_first_hit(core, scope, filename, line)
                    # Also for a line first hit in other code (a lambda's, a genexpr's), once
                    # per location (DISABLE follows) unless exact scopes keep the events on.
                    if (first or not core._exact_armed) and id(code) in codes:
                        core._census_check(code, hits)
                except Exception:
                    return None
                # DISABLE is process-wide: never while exact-mode events may be needed.
                return None if core._exact_armed else DISABLE
            try:
                frame = getframe(1)
                last = scope.last
                prev = last.get(frame)
                if prev is None:
                    prev = -code.co_firstlineno
                elif prev == SKIP:
                    return None
                last[frame] = line
                scope.triples.add((code.co_filename, prev, line))
            except Exception:
                pass
            return None

        def on_exit(code: CodeType, offset: int, _value: object, depth: int = 1) -> Any:
            scope = get_scope()
            if scope is None or scope.is_census or scope.closed:
                if core._lingering:
                    core._linger_budget -= 1
                    if core._linger_budget <= 0:
                        core._linger_ran_out()
                return None
            try:
                prev = scope.last.pop(getframe(depth), None)
                if prev is None:
                    if code.co_flags & _SILENT_START_FLAGS:
                        # A generator or coroutine that ran in the scope without a LINE event:
                        # its whole run stayed on the line where it was created (a one-line
                        # generator expression, started with its code armed: CPython 3.13
                        # sees no new line at its first resumption). Its line and arcs.
                        line = _line_at(code, offset)
                        if line is not None:
                            first = -code.co_firstlineno
                            scope.triples.add((code.co_filename, first, line))
                            scope.triples.add((code.co_filename, line, first))
                elif prev != SKIP:
                    scope.triples.add((code.co_filename, prev, -code.co_firstlineno))
            except Exception:
                pass
            return None

        def on_unwind(code: CodeType, offset: int, exc: BaseException) -> Any:
            # Global event (cannot be local, must not return DISABLE): filter cheaply.
            if id(code) not in codes and id(code) not in once:
                return None
            return on_exit(code, offset, exc, 2)

        def on_throw(code: CodeType, offset: int, exc: BaseException) -> None:
            # Global event (cannot be local, must not return DISABLE). throw() resumes a
            # suspended generator or coroutine (a task's cancellation: CancelledError thrown in
            # at its await) without running RESUME, so PY_RESUME does not fire: code disarmed
            # since the frame's last step carries only the watch, and would run its handlers
            # unseen. Promote it here as PY_RESUME would (in this very frame); the frame goes
            # on from the line it was suspended at. Rare: Python is fast enough.
            if id(code) not in codes:
                return
            scope = get_scope()
            if scope is None or scope.is_census or scope.closed:
                return
            if id(code) not in promoted:
                promote(code)
            try:
                if _ends_at_yield(code, offset):
                    # No handler of its own: the frame ends at the yield. coverage.py sees
                    # a frame suspended there (its last instruction is the yield), not a
                    # return, and records no exit arc: forget the frame's line, so that its
                    # PY_UNWIND records none either.
                    scope.last[getframe(1)] = SKIP
            except Exception:
                pass

        # The recording callbacks in C when the extension is built (same arcs, ~4x cheaper per
        # event); they hand census and linger work to the Python callbacks above.
        recorder = _c_recorder(on_line, on_exit, codes, once)
        self._recorder = recorder
        self.accelerated = recorder is not None
        if recorder is not None:
            recorder.on_spent = self._linger_ran_out
            recorder.watch_fallback = on_py_start  # (it handles resumptions the same way)
            # Promotions, and the watches a disarm left on, done in C as promote() and
            # unwatch() do them (the same sets, under the same lock).
            recorder.attach_watch(
                self._lock, promoted, watching, bare, hot, mon.set_local_events, tool, EXACT_LOCAL
            )
        mon.register_callback(
            tool, ev.PY_START, on_py_start if recorder is None else recorder.watch
        )
        mon.register_callback(
            tool, ev.PY_RESUME, on_py_resume if recorder is None else recorder.watch
        )
        mon.register_callback(tool, ev.LINE, on_line if recorder is None else recorder.line)
        mon.register_callback(tool, ev.PY_RETURN, on_exit if recorder is None else recorder.exit)
        # PY_UNWIND's callback is registered only while exact scopes are armed: with no callback
        # CPython skips the tool at once, and swapping callbacks (unlike changing the tool's
        # events) does not re-instrument any code.
        self._on_unwind = on_unwind if recorder is None else recorder.unwind
        # PY_THROW's likewise: with no callback a throw() costs CPython a look at the tool's
        # callback and nothing else (no code is instrumented for it).
        self._on_throw = on_throw

    def _sync_divert(self) -> None:
        # The C callbacks answer unscoped events themselves unless census needs the Python
        # ones; while lingering they count the linger budget down themselves.
        recorder = self._recorder
        if recorder is not None:
            recorder.divert = 1 if self._census_enabled else 0
            recorder.budget = (
                max(1, self._linger_budget)
                if self._lingering and not self._census_enabled
                else 0
            )

    # -- arming -------------------------------------------------------------------------------

    def _local_events(self) -> int:
        if self._exact_armed:
            if not self._census_enabled:
                return self._WATCH
            return self._EXACT_LOCAL
        if self._census_enabled:
            return self._LINE
        return 0

    def _take_c_costs(self) -> None:
        """Add the time the C callback spent promoting and taking watches off to the core's
        totals (caller holds the lock)."""
        recorder = self._recorder
        if recorder is None:
            return
        if recorder.promote_cost:
            self._promote_cost += recorder.promote_cost
            recorder.promote_cost = 0.0
        if recorder.unwatch_cost:
            self._unwatch_cost += recorder.unwatch_cost
            recorder.unwatch_cost = 0.0

    def _apply(self, toggle: bool, exact_only: bool = False) -> None:
        """Set every registered code object's local events to the current need.

        ``exact_only``: exact scopes were armed or disarmed while census is off, and every
        registered code object carries the watch (``_watching``), the exact-mode events
        (``_promoted``) or nothing (``_bare``). An arm then watches the code that carries
        nothing, and a disarm takes the exact-mode events off the promoted code and the watch
        off the code that unsampled work called before (``_hot``), and leaves the watch on the
        rest (its next call outside a scope takes it off).
        """
        started = time.perf_counter()
        self._take_c_costs()
        if self._recorder is not None:  # every arm and disarm comes through here
            self._recorder.armed = 1 if self._exact_armed else 0
        events = self._local_events()
        set_local = self._mon.set_local_events
        tool = self._tool
        # Code promoted while scopes stay armed keeps its events (a root added, census turned
        # off): frames of it may be running in a scope, and would lose their next lines.
        promoted = self._promoted
        watching = self._watching
        watch, exact = self._WATCH, self._EXACT_LOCAL
        bare = self._bare
        codes = self._codes
        lazy = exact_only and not toggle and events in (0, watch)
        take_hot = False
        if lazy and events != watch:
            # A disarm takes the watch off the code unsampled work calls, except one in
            # _PROBE_EVERY, which leaves every watch on and forgets which code that was.
            self._disarms += 1
            take_hot = bool(self._disarms % _PROBE_EVERY)
            if not take_hot:
                self._hot.clear()
        recorder = self._recorder
        if lazy and recorder is not None:
            # The two cases below, in C (the Python ones are their reference).
            targets = []
            if events == watch:
                recorder.lazy_arm(watch)
            else:
                recorder.lazy_disarm(take_hot)
        elif lazy and events == watch:  # arm
            targets = [codes[key] for key in bare if key in codes]
            bare.clear()
        elif lazy:  # disarm: the promoted code, and the watched code unsampled work calls
            targets = list(promoted.values())
            if take_hot:
                targets += [codes[key] for key in watching & self._hot if key in codes]
        else:
            targets = list(codes.values())
            watching.clear()
            bare.clear()
        if events == exact:  # census and exact scopes: all of it
            promoted.update(self._codes)
        elif events != watch:
            promoted.clear()
            self._promote_cost = 0.0
        line_only, done = self._LINE, self._census_done
        for code in targets:
            want = exact if events == watch and id(code) in promoted else events
            if want == line_only and id(code) in done:
                want = 0  # census hit all of it in this epoch
            try:
                if toggle and want:
                    set_local(tool, code, 0)  # re-arms locations we DISABLEd
                set_local(tool, code, want)
            except Exception:
                want = 0  # (unknown: the next arm sets it again)
            if want == watch:
                watching.add(id(code))
                continue
            watching.discard(id(code))
            if not want:
                bare.add(id(code))
        if not events and self._once:
            for code in list(self._once.values()):  # module bodies that ran while armed
                try:
                    set_local(tool, code, 0)
                except Exception:
                    pass
            self._once.clear()
        try:
            ev = self._mon.events
            armed = self._exact_armed
            self._mon.register_callback(tool, ev.PY_UNWIND, self._on_unwind if armed else None)
            self._mon.register_callback(tool, ev.PY_THROW, self._on_throw if armed else None)
        except Exception:
            pass
        elapsed = time.perf_counter() - started
        if events == watch:
            # The watches taken off one by one since the last arm belong to that cycle's disarm.
            elapsed += self._unwatch_cost
            self._unwatch_cost = 0.0
        self._toggle_cost = (
            elapsed if not self._toggle_cost else 0.8 * self._toggle_cost + 0.2 * elapsed
        )

    # -- Core API -----------------------------------------------------------------------------

    def add_roots(self, roots: Iterable[str]) -> None:
        """Add source roots; once the core discovers code (:meth:`_discover`), the code already
        loaded under them is watched for its first call."""
        if self._roots.add(roots):
            with self._lock:
                if self._discovering:
                    self._scan_all()
                    if self._local_events():
                        self._apply(toggle=False)

    @property
    def exact_prepared(self) -> bool:
        """True once code under the roots is watched for its first call (:meth:`_discover`)."""
        return self._discovering or self._shut

    def expect_exact_scopes(self) -> None:
        """Exact scopes will be opened: watch the code under the roots for its first call now
        (else the first exact scope starts it, on its request)."""
        with self._lock:
            self._discover()

    def _discover(self) -> None:
        """Start watching the code under the roots for its first call (caller holds the lock).

        Code that exists now gets a local PY_START: in live functions (all that modules hold,
        and more), on running stacks; code loaded later is reported at import. A first call
        registers the code (and takes the PY_START off): what arms and disarms toggle.
        """
        if self._discovering or self._shut:
            return
        self._discovering = True
        self._scan_all()

    def _scan_all(self) -> None:
        self._scanned.clear()
        self._scan_functions()
        self._scan_modules(watch=False)
        self._scan_frames()

    def _scan_modules(self, watch: bool = True) -> None:
        """Watch the code objects of modules under the roots not scanned yet (functions,
        methods, nested code in co_consts) for their first call; with ``watch`` False only
        note the modules as scanned (their functions were found in the live ones)."""
        for filename, namespace in new_namespaces(self._scanned, self._roots.classify):
            if not watch:
                continue
            try:
                for value in list(namespace.values()):
                    self._watch(_code_objects(value, filename))
            except Exception:  # an exotic namespace: its code is found at first call
                continue
        self._scan_mark = modules_mark()

    def _scan_functions(self) -> None:
        """When roots are added: every live function under them (and the code nested in it) is
        watched, wherever it is kept: a module that is not in ``sys.modules``, a registry, a
        closure. Modules loaded from now on are reported by the import system."""
        classify = self._roots.classify
        found = []
        try:
            for obj in gc.get_objects():
                if type(obj) is FunctionType:
                    code = obj.__code__
                    if classify(code.co_filename) is not None:
                        found.append(code)
        except Exception:
            return
        for code in found:
            self._watch(_nested(code))

    def _scan_frames(self) -> None:
        """Code under the roots running on any thread now (a script's module body, say, started
        before runcov) is registered, and the code nested in it watched."""
        try:
            frames: list[Any] = list(sys._current_frames().values())
        except Exception:
            return
        codes, classify = self._codes, self._roots.classify
        for frame in frames:
            while frame is not None:
                code = frame.f_code
                if id(code) not in codes and classify(code.co_filename) is not None:
                    self._watch(_nested(code), skip=code)
                    if code.co_name != "<module>":
                        self._pending.pop(id(code), None)
                        events = self._local_events()
                        try:  # what registered code carries now (a watch's PY_START goes)
                            self._mon.set_local_events(self._tool, code, events)
                        except Exception:
                            events = 0  # (unknown: the next arm sets it again)
                        self._register(code, events)
                frame = frame.f_back

    def _register(self, code: CodeType, events: int) -> None:
        """Register code that has run, carrying ``events`` (caller holds the lock), in the set
        that tells what a later arm or disarm does with it."""
        key = id(code)
        self._codes[key] = code
        if events == self._EXACT_LOCAL:
            self._promoted[key] = code
        elif events == self._WATCH:
            self._watching.add(key)
        elif not events:
            self._bare.add(key)

    def _watch(self, found: Iterable[CodeType], skip: Optional[CodeType] = None) -> None:
        """Set PY_START on the code under the roots not known yet."""
        codes, pending, once = self._codes, self._pending, self._once
        classify = self._roots.classify
        set_local, tool, event = self._mon.set_local_events, self._tool, self._PY_START
        for code in found:
            key = id(code)
            if code is skip or key in codes or key in pending or key in once:
                continue
            if classify(code.co_filename) is None:
                continue
            try:
                set_local(tool, code, event)
            except Exception:
                continue
            pending[key] = code

    def _code_loaded(self, code: CodeType) -> None:
        """A module's code, as the import system loads it: watch it and the code nested in it."""
        if self._shut or not self._discovering or self._roots.classify(code.co_filename) is None:
            return
        with self._lock:
            self._watch(_nested(code))

    def _scan_late(self) -> None:
        """When a scope opens: scan the modules the import system did not report (a script run
        as ``__main__``, modules loaded by other loaders)."""
        if self._scan_mark == modules_mark():
            return
        with self._lock:
            self._scan_modules()
            self._scan_frames()

    def open_scope(
        self,
        mode: str = EXACT,
        trace_id: Optional[int] = None,
        roots: Optional[Iterable[str]] = None,
    ) -> Scope:
        """Open a scope bound to the current context."""
        if mode == CENSUS and not self._shut:
            try:
                if not self._census_enabled:
                    self.enable_census()
                return CensusScope(trace_id, self._scope_roots(roots))
            except Exception:
                log.debug("runcov: could not open a census scope", exc_info=True)
        scope = ScopeState(mode, trace_id, self._scope_roots(roots), self._close_scope)
        scope.generation = self._generation
        try:
            if self._shut or mode == CENSUS:
                scope.traced = False
                return scope
            if mode == EXACT:
                if not self._discovering:
                    with self._lock:
                        self._discover()
                self._scan_late()
                # Frames already running belong to the code that opened the scope: skipped.
                # Only those of registered code can see events; holding the others (the
                # framework's) would make each of them copy its locals out when it returns.
                codes = self._codes
                frame: Any = sys._getframe(1)
                while frame is not None:
                    if id(frame.f_code) in codes:
                        scope.last[frame] = SKIP
                    frame = frame.f_back
                scope.stepped = in_asyncio_step(scope)
                scope.counted = self._activate(scope)
            else:
                raise ValueError(f"unknown scope mode {mode!r}")
            scope.bind()
            self._expiry.track(scope)
        except Exception:
            log.debug("runcov: could not open a scope", exc_info=True)
            scope.traced = False
        return scope

    def _close_scope(self, scope: ScopeState) -> None:
        if scope.counted:
            scope.counted = False
            self._deactivate(scope)

    def _activate(self, scope: ScopeState) -> bool:
        """Count an exact scope as active (armed events) from now on (one more of its holds)."""
        if scope.is_census or scope.generation != self._generation or self._shut:
            return False
        with self._lock:
            if scope.closed:
                return False  # expired meanwhile: its work is unsampled work now
            scope.holds += 1
            self._active += 1
            if self._lingering:  # still armed: reused, no toggle
                self._lingering = False
                self._sync_divert()
                if self._linger_step:
                    self._step_scale = min(1.0, self._step_scale * 2)
                else:
                    self._linger_scale = min(1.0, self._linger_scale * 2)
            if not self._exact_armed:
                self._exact_armed = True
                self._apply(toggle=self._census_enabled, exact_only=True)
        return True

    def _deactivate(self, scope: ScopeState) -> None:
        """Stop counting an exact scope as active (one of its holds); disarm (after
        lingering) at zero."""
        self._let_go(scope, every=False)

    def _expire_scope(self, scope: ScopeState) -> None:
        """``scope`` outlived the maximum age: let go of all its holds at once (its own, its
        steps', the work it handed to other threads), as if each had ended."""
        self._let_go(scope, every=True)

    def _let_go(self, scope: ScopeState, every: bool) -> None:
        if scope.generation != self._generation:
            return
        start_disarmer = False
        with self._lock:
            held = scope.holds if every else min(1, scope.holds)
            scope.holds -= held
            if held and self._active > 0:
                self._active = max(0, self._active - held)
                if self._active == 0 and not self._shut:
                    # A cycle costs about 2.5 toggles (measured: the re-specialization of the
                    # toggled code after a disarm costs more than the toggle itself); the
                    # toggles are the watch's and the promotions since the arm.
                    # A step of a scope that stays open (asyncio, between awaits) lingers on its
                    # own scale: its next step needs the events again.
                    step = not scope.closed
                    scale = self._step_scale if step else self._linger_scale
                    unit = (
                        _FILTERED_CALLBACK_COST
                        if self._recorder is not None
                        else _FILTERED_CALLBACK_COST_PY
                    )
                    self._take_c_costs()
                    budget = int(scale * 2.5 * (self._toggle_cost + self._promote_cost) / unit)
                    if self._census_enabled or budget < _MIN_LINGER_CALLBACKS:
                        self._disarm_exact()
                    else:
                        self._linger_budget = budget
                        self._disarm_at = time.monotonic() + self.linger
                        self._lingering = True
                        self._linger_step = step
                        self._sync_divert()
                        if not self._disarm_pending:
                            self._disarm_pending = True
                            start_disarmer = True
        if start_disarmer:
            # Outside the lock: a thread's start waits for the new thread to run its bootstrap,
            # and where the threading module is itself under the roots, that code's first
            # call comes to the callbacks, which take the lock.
            self._start_disarmer()
            self._wake.set()

    def _linger_ran_out(self) -> None:
        """Unsampled work used up the linger budget: disarm now (called from a callback)."""
        with self._lock:
            if self._lingering and self._active == 0:
                if self._linger_step:
                    self._step_scale = max(1 / 64, self._step_scale / 2)
                else:
                    self._linger_scale = max(1 / 64, self._linger_scale / 2)
                self._disarm_exact()

    def _disarm_exact(self) -> None:
        """Remove the exact-mode events (caller holds the lock)."""
        self._lingering = False
        self._sync_divert()
        if self._exact_armed and self._active == 0:
            self._exact_armed = False
            self._apply(toggle=self._census_enabled, exact_only=True)

    def _start_disarmer(self) -> None:
        """Start the disarming thread unless it runs (never with ``_lock`` held)."""
        with self._disarmer_lock:
            thread = self._disarmer
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._disarm_loop, name="runcov-disarm", daemon=True
                )
                self._disarmer = thread
                thread.start()

    def _disarm_loop(self) -> None:
        """Disarm exact-mode events once no exact scope was active for the linger time."""
        while not self._shut:
            self._wake.wait()
            self._wake.clear()
            while not self._shut:
                with self._lock:
                    if self._active or not self._exact_armed:
                        self._disarm_pending = False
                        break
                    delay = self._disarm_at - time.monotonic()
                    if delay <= 0:
                        self._disarm_pending = False
                        self._disarm_exact()
                        break
                time.sleep(delay)

    @property
    def roots(self) -> tuple[str, ...]:
        """The core's normalized source roots."""
        return self._roots.roots

    def current_scope(self) -> Optional[Scope]:
        """The open scope bound to the current context (see :func:`open_scope_here`)."""
        return open_scope_here()

    def _census_check(self, code: CodeType, hits: set[int]) -> None:
        """After a census line event in registered ``code``: once every line of it was hit in
        this epoch, take its ``LINE`` event off (now if no exact scope needs it, else at the
        disarm) until the next epoch. ``hits`` is its file's lines hit in this epoch."""
        key = id(code)
        if key in self._census_done:
            return
        need = self._census_need.get(key)
        if need is None:
            need = self._census_need[key] = event_lines(code)
        if not need <= hits:
            return
        with self._lock:
            if (
                not self._census_enabled
                or key not in self._codes
                or self._census.get(code.co_filename) is not hits  # a new epoch began
            ):
                return
            self._census_done.add(key)
            if self._local_events() == self._LINE:
                self._mon.set_local_events(self._tool, code, 0)
                self._bare.add(key)

    def enable_census(self) -> None:
        """Record first hits of all traffic from now on (census mode)."""
        with self._lock:
            self._discover()
            if not self._census_enabled:
                self._census_enabled = True
                self._sync_divert()
                # (armed exact scopes only watch calls; census needs LINE on all code)
                self._apply(toggle=True)

    def disable_census(self) -> None:
        """Stop census recording and forget the epoch's first hits."""
        with self._lock:
            if self._census_enabled:
                self._census_enabled = False
                self._sync_divert()
                self._census.clear()
                self._census_done.clear()
                self._forget_pending()
                self._apply(toggle=False)

    def census_lines(self) -> dict[str, set[int]]:
        """Lines hit in the current epoch, by absolute path (a copy)."""
        out: dict[str, set[int]] = {}
        for filename, lines in list(self._census.items()):
            path = self._roots.classify(filename)
            if path is not None:
                out.setdefault(path, set()).update(lines)
        return out

    def set_census_owner(self, owner: Optional[Callable[[], Hashable]]) -> bool:
        """Attribute first hits outside census scopes to ``owner()`` (see :meth:`take_census`)."""
        self.census_owner = owner
        return True

    def take_census(self, key: Hashable) -> Optional[CoverageData]:
        """Claim the first hits attributed to ``key`` outside scopes (None when there are none)."""
        return claim_census(self.census_pending, key, self.roots)

    def _forget_pending(self) -> None:
        self.census_pending.clear()
        self.census_unattributed = 0

    def new_epoch(self) -> None:
        """Forget the epoch's first hits and re-arm census recording."""
        with self._lock:
            self._census.clear()
            self._census_done.clear()
            self._forget_pending()
            if self._census_enabled:
                self._apply(toggle=True)

    def shutdown(self) -> None:
        """Disarm everything and free the tool id."""
        self._expiry.stop()
        with self._lock:
            if self._shut:
                return
            self._shut = True
            self._wake.set()
            self._active = 0
            self._exact_armed = False
            self._lingering = False
            self._census_enabled = False
            self._sync_divert()
            mon, tool = self._mon, self._tool
            stop_listening(self._code_loaded)
            for code in [*self._codes.values(), *self._once.values(), *self._pending.values()]:
                try:
                    mon.set_local_events(tool, code, 0)
                except Exception:
                    pass
            try:
                mon.set_events(tool, 0)
                for event in (
                    mon.events.PY_START,
                    mon.events.PY_RESUME,
                    mon.events.LINE,
                    mon.events.PY_RETURN,
                    mon.events.PY_UNWIND,
                    mon.events.PY_THROW,
                ):
                    mon.register_callback(tool, event, None)
                mon.free_tool_id(tool)
            except Exception:
                pass
            self._codes.clear()
            self._once.clear()
            self._pending.clear()
            self._watching.clear()
            self._bare.clear()
            self._hot.clear()
            self._census.clear()
            self._census_done.clear()
            self._census_need.clear()
            self._forget_pending()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: scopes of other threads will never close, and scopes
        # inherited from the parent must not be counted when the child closes them.
        self._lock = threading.RLock()
        if self._recorder is not None:
            self._recorder.lock = self._lock  # the C callback takes it too
        self._generation += 1
        if self._shut:
            return
        scope = _current.get()
        _current.set(None)
        if scope is not None:
            scope.closed = True
        self._active = 0
        self._exact_armed = False
        self._lingering = False
        self._sync_divert()
        self._wake = threading.Event()
        self._disarmer = None
        self._disarmer_lock = threading.Lock()
        self._disarm_pending = False
        self._census.clear()
        self._census_done.clear()
        self._forget_pending()  # the parent's requests end in the parent
        self._apply(toggle=self._census_enabled)


_CALL_INTRINSIC_1 = dis.opmap.get("CALL_INTRINSIC_1", -1)
_INTRINSIC_STOPITERATION_ERROR = 3
_RESUME = dis.opmap["RESUME"]


#: Code whose frames can start without a LINE event for their first line: generators and
#: coroutines, created (``RETURN_GENERATOR``) on the line their first resumption continues.
_SILENT_START_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _line_at(code: CodeType, offset: int) -> Optional[int]:
    """The line of the instruction at ``offset`` (in bytes) of ``code``, if it has one."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def _ends_at_yield(code: CodeType, offset: int) -> bool:
    """Whether an exception thrown into ``code`` at ``offset`` (the ``yield`` or ``await`` it
    is suspended at, in bytes) leaves the frame from there: the only handler covering it is
    the one CPython wraps around every generator and coroutine body (``StopIteration`` to
    ``RuntimeError``, then re-raised), whose ``RERAISE`` restores the frame's last instruction
    to the yield. A user's ``try``, a ``with`` and an ``await``'s ``CLEANUP_THROW`` are other
    handlers: the frame runs on and leaves from elsewhere."""
    raw = code.co_code
    if raw[offset] == _RESUME and offset >= 2:
        # 3.13 reports the instruction the frame resumes at; the exception is raised at the
        # yield before it (CPython looks its handler up there)
        offset -= 2
    unit = offset // 2
    for start, end, target, _ in _parse_exception_table(code.co_exceptiontable):
        if start <= unit < end:
            at = target * 2
            return (
                raw[at] == _CALL_INTRINSIC_1 and raw[at + 1] == _INTRINSIC_STOPITERATION_ERROR
            )
    return False


def _c_recorder(
    on_line: Callable[..., Any],
    on_exit: Callable[..., Any],
    codes: dict[int, CodeType],
    once: dict[int, CodeType],
) -> Any:
    """The C recording callbacks, or None (not built, or ``RUNCOV_ACCEL=0``)."""
    accel = load_accel()
    if accel is None:
        return None
    try:
        return accel.Recorder(_current, ScopeState, on_line, on_exit, SKIP, codes, once)
    except Exception as exc:
        log.debug("runcov: C recording callbacks unavailable: %s", exc)
        return None


def _code_objects(value: Any, filename: str, depth: int = 0) -> Iterable[CodeType]:
    """Code objects reachable from a module attribute (functions, classes, nested code).

    Only plain functions, methods, properties and classes are inspected, by type: arbitrary
    module attributes (lazy proxies, descriptors) are never touched, since attribute access on
    them may run code or raise.
    """
    if depth > 4:
        return
    if isinstance(value, FunctionType):
        yield from _nested(value.__code__)
        wrapped = value.__dict__.get("__wrapped__")
        if isinstance(wrapped, FunctionType):
            yield from _code_objects(wrapped, filename, depth + 1)
        for cell in value.__closure__ or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # empty cell
                continue
            if isinstance(inner, FunctionType):
                yield from _code_objects(inner, filename, depth + 1)
    elif isinstance(value, (staticmethod, classmethod)):
        yield from _code_objects(value.__func__, filename, depth + 1)
    elif isinstance(value, property):
        for fn in (value.fget, value.fset, value.fdel):
            yield from _code_objects(fn, filename, depth + 1)
    elif isinstance(value, type) and value.__dict__.get("__module__") is not None:
        module = sys.modules.get(value.__dict__["__module__"])
        if module is not None and module.__dict__.get("__file__") == filename:
            for attr in list(value.__dict__.values()):
                yield from _code_objects(attr, filename, depth + 1)



def _nested(code: CodeType) -> Iterable[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _nested(const)
