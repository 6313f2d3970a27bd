"""The agent: one per process, wiring configuration, tracing core, sampling and export together."""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Optional

from runcov.errors import RuncovError

log = logging.getLogger("runcov")

__all__ = [
    "Agent",
    "RequestTicket",
    "bootstrap",
    "current_agent",
    "enabled_by_env",
    "start",
    "stop",
]

#: Census mode re-arms first-hit recording this often, so that lines keep being tied to recent
#: traces and a long-running process still reports what current traffic executes.
CENSUS_EPOCH_SECONDS = 600.0
#: Census probes (3.11): the export worker's first look for unprobed functions and fired
#: probes after start and after each new epoch; the wait doubles after each look.
CENSUS_REFRESH_FIRST_SECONDS = 0.5

#: Most requests the agent tracks as in flight at once; beyond it new requests are not sampled
#: (a span that never ends must not make the agent grow without bound).
MAX_IN_FLIGHT = 4096
#: Endpoints whose novelty (lines and arcs seen for the first time) the agent follows; more
#: are served and measured, but not followed (as the sampler bounds its own per-endpoint state).
MAX_ENDPOINTS = 10_000

#: The attribute of the coverage spans of a request measured only until its scope expired
#: (``max_scope_seconds``): what they hold ran, but the request ran on after it.
EXPIRED_ATTRIBUTE = "runcov.scope.expired"

#: How long the process exit waits for measured requests to leave.
EXIT_FLUSH_SECONDS = 5.0
#: How long a replaced agent started from the environment may take to send what it measured.
_REPLACE_FLUSH_SECONDS = 0.5

#: Most distinct (method, route) pairs counted as seen per thread; further pairs (a client
#: sending made-up methods) are counted as ``_OTHER``.
_MAX_SEEN_KEYS = 4096

_lock = threading.RLock()
_active: Optional[Agent] = None


def current_agent() -> Optional[Agent]:
    """The agent started in this process, if it is running."""
    agent = _active
    return agent if agent is not None and agent.running else None


def enabled_by_env(environ: Any = None) -> bool:
    """True when the environment asks for runcov: ``RUNCOV_ENABLED`` true or ``RUNCOV_SOURCE`` set.

    Used by the zero-code entry points (``opentelemetry-instrument``, ``runcov run``); an
    explicit false ``RUNCOV_ENABLED`` wins over ``RUNCOV_SOURCE``. A value that is neither
    true nor false counts as asking: the configuration's validation then names it, rather
    than a misspelt switch turning runcov off unseen.
    """
    env = os.environ if environ is None else environ
    flag = env.get("RUNCOV_ENABLED", "").strip().lower()
    if flag:
        from runcov.config import OFF_WORDS

        return flag not in OFF_WORDS
    return bool(env.get("RUNCOV_SOURCE", "").strip())


def bootstrap() -> Optional[Agent]:
    """Start runcov from ``RUNCOV_*`` when they ask for it (zero-code start, never raises
    except for a bad configuration).

    Attaches to the OpenTelemetry SDK tracer provider when there is one (e.g. under
    ``opentelemetry-instrument``); otherwise measures Flask, Django and Starlette/FastAPI
    applications through framework hooks.
    """
    if not enabled_by_env():
        return None
    agent = current_agent() or Agent.start_from_environment()
    if not agent.running:
        return agent
    from opentelemetry import trace

    if not agent.attach(trace.get_tracer_provider()):
        from runcov.middleware import install_framework_hooks

        install_framework_hooks()
    return agent


def _flush_on_sigterm() -> None:
    """Send what was measured when SIGTERM ends the process.

    SIGTERM's default action ends a process at once, without its exit hooks, so what the agent
    still holds would be lost: a service stopped by its orchestrator, or by uvicorn, which
    after its graceful shutdown restores the handler it found and raises the signal again.
    When nothing handles SIGTERM (its handler is the default) and this is the main thread, a
    handler is installed that stops the agent (sending for up to ``EXIT_FLUSH_SECONDS``) and
    then ends the process by the default action, so the exit status stays "killed by
    SIGTERM". A handler the application installs, now or later, replaces it; the agent's
    ``stop()`` removes it again (:func:`_release_sigterm`).
    """
    import signal

    try:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # no signals here (an embedded interpreter)
        pass


def _release_sigterm() -> None:
    """Give SIGTERM its default action back if runcov's handler is still the one installed
    (called when the agent stops; only the main thread can, others leave it: with no running
    agent it does what the default action does)."""
    import signal

    try:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError, AttributeError):
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    import signal

    try:
        agent = _active
        if agent is not None and agent.running:
            # On a thread of its own: the interrupted main thread may hold a lock the flush
            # needs. The wait is bounded either way.
            stopper = threading.Thread(
                target=agent.stop, args=(EXIT_FLUSH_SECONDS,), name="runcov-sigterm", daemon=True
            )
            stopper.start()
            stopper.join(EXIT_FLUSH_SECONDS + 1.0)
    except Exception:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def start(**options: Any) -> Agent:
    """Start runcov in this process (see :meth:`Agent.start`)."""
    return Agent.start(**options)


def stop(timeout: float = 5.0) -> None:
    """Stop the running agent, if any, after flushing what it measured."""
    agent = _active
    if agent is not None:
        agent.stop(timeout)


def status_class(code: Any) -> Optional[str]:
    """``"2xx"`` for an HTTP status code (int or numeric string), None when there is none."""
    try:
        value = int(code)
    except (TypeError, ValueError):
        return None
    if 100 <= value <= 599:
        return f"{value // 100}xx"
    return None


def random_trace_id() -> int:
    """A fresh random, valid (non-zero) 128-bit trace id."""
    return random.getrandbits(128) or 1


def random_span_id() -> int:
    """A fresh random, valid (non-zero) 64-bit span id."""
    return random.getrandbits(64) or 1


class RequestTicket:
    """One sampled request in flight: its scope and what is needed to emit it when it ends."""

    __slots__ = (
        "endpoint",
        "method",
        "mode",
        "rate",
        "reason",
        "route",
        "route_known",
        "rule",
        "scope",
        "start_ns",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        scope: Any,
        rule: Any,
        endpoint: str,
        method: Optional[str],
        route: Optional[str],
        route_known: bool,
        trace_id: int,
        tracestate: Any,
        rate: float,
    ) -> None:
        self.scope = scope
        self.rule = rule
        self.endpoint = endpoint
        self.method = method
        self.route = route
        self.route_known = route_known
        self.mode: str = rule.mode
        self.trace_id = trace_id
        self.tracestate = tracestate
        self.rate = rate
        self.reason = ""
        self.start_ns = time.time_ns()


_RANDOMNESS_MASK = (1 << 56) - 1


def _add_counts(into: dict[Any, int], counts: dict[Any, int]) -> None:
    """Add ``counts`` to ``into``, key by key."""
    for key, n in list(counts.items()):  # one C call: atomic under the GIL
        into[key] = into.get(key, 0) + n


class _ThreadTally:
    """What one thread's request paths counted: requests seen per (method, route), requests
    the rate cap turned away per endpoint, and seconds spent by runcov. Only that thread writes
    it (no lock); the metrics read it."""

    __slots__ = ("capped", "counts", "spent")

    def __init__(self) -> None:
        self.counts: dict[tuple[Optional[str], Optional[str]], int] = {}
        self.capped: dict[str, int] = {}
        self.spent = 0.0


def _current_trace_id() -> Optional[int]:
    """The trace id of the current OpenTelemetry span, or None outside any (the census owner:
    called on a line's first hit only)."""
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    return ctx.trace_id if ctx.is_valid else None


def _highest_rate(matcher: Any, config: Any, census: bool = True) -> float:
    """The highest rate of any selector (``census=False``: of an exact-mode selector)."""
    rates = [0.0]
    if census or config.mode != "census":
        rates.append(config.sample_rate)
    for sel in matcher._selectors:
        if census or (sel.mode or config.mode) != "census":
            rates.append(config.sample_rate if sel.rate is None else sel.rate)
    return max(rates)


def _fast_threshold(matcher: Any, config: Any, census: bool = True) -> int:
    """The sampling threshold of the highest rate any request could be sampled at
    (``census=False``: by an exact-mode selector)."""
    from runcov.sampling import MAX_BOOST, threshold

    highest = _highest_rate(matcher, config, census)
    if config.saturation:
        highest = min(1.0, highest * MAX_BOOST)
    return threshold(highest)  # (0 at a rate of 1)


class Agent:
    """runcov in one process: decides which requests to measure, measures them, sends them.

    Integrations (the OpenTelemetry span processor, the WSGI/ASGI middleware, ``@critical``)
    call :meth:`begin` when a request starts and :meth:`finish` when it ends. Neither ever
    raises into the application: failures are counted as ``internal_error`` drops.
    """

    def __init__(
        self,
        config: Any,
        *,
        core: Any = None,
        exporter: Any = None,
        metrics: Any = None,
        resource: Any = None,
    ) -> None:
        from runcov.selectors import EndpointMatcher

        self.config = config
        self.running = False
        self.core = core
        self._matcher = EndpointMatcher(config.endpoints, config.sample_rate, config.mode)
        self._sampler: Any = None
        self._resource = resource
        self.exporter = exporter
        self.metrics = metrics
        self._processor: Any = None
        self._attached: list[Any] = []
        self._in_flight = 0
        self._count_lock = threading.Lock()
        #: The core can open exact scopes with nothing left to prepare on a request (see
        #: :meth:`_exact_is_ready`), and whether its preparation was started on a thread.
        self._exact_ready = False
        self._preparing = False
        self._census_epoch = time.monotonic()
        #: When census probes next look for unprobed functions, and the wait after that.
        self._census_refresh_at = self._census_epoch
        self._census_refresh_wait = CENSUS_REFRESH_FIRST_SECONDS
        self._fast_threshold = _fast_threshold(self._matcher, config)
        #: True when census needs no scope per request: the core attributes first hits to the
        #: current trace, and the span processor claims them when the request span ends.
        self.census_by_span = False
        #: The fast threshold for span-processor requests once census goes by span (only
        #: exact-mode selectors still sample there).
        self._span_threshold = self._fast_threshold
        #: The two thresholds at the highest rates any request could reach (every endpoint
        #: boosted). With saturation, the export worker lowers them to the highest rate an
        #: endpoint seen so far can be sampled at now (``_follow_saturation``), and they go back
        #: up at once when an endpoint may be boosted again: new arcs found, a request of an
        #: endpoint not seen before.
        self._highest_fast = self._fast_threshold
        self._highest_span = self._span_threshold
        #: Bumped whenever the thresholds go back up (the worker lowers them only if unchanged).
        self._raised = 0
        #: Once set, the thresholds stay at the highest rates (see ``_raise_thresholds``).
        self._keep_highest = not config.saturation
        #: (method, route) -> endpoint name, or None when no selector matches (for ``seen``).
        self._seen_names: dict[tuple[Optional[str], Optional[str]], Optional[str]] = {}
        #: The selectors not yet seen matching a request (see ``_check_selectors``).
        self._unmatched = list(self._matcher.selectors)
        #: When the agent started, until the check that some request reached it is done
        #: (``_check_reached``); None after.
        self._reach_check_from: Optional[float] = None
        #: Requests seen and time spent on request paths: a tally per thread, and one for the
        #: threads that ended. Only counted while the metrics are on.
        self._count_seen = False
        self._tally_local = threading.local()
        self._tallies: list[tuple[Any, _ThreadTally]] = []
        self._retired = _ThreadTally()
        #: How much of the time spent the metrics were told (by the export worker).
        self._spent_reported = 0.0
        #: How many requests turned away by the rate cap they were told, per endpoint.
        self._capped_reported: dict[str, int] = {}
        #: endpoint -> {path -> arcs seen so far in this process}: what counts as "new".
        self._seen_arcs: dict[str, dict[str, set[tuple[int, int]]]] = {}
        self._seen_lines: dict[str, dict[str, set[int]]] = {}
        self._novelty_lock = threading.Lock()
        self.internal_errors = 0
        #: Started by a zero-code launcher from the environment (``start_from_environment``):
        #: an explicit ``start()`` with other arguments replaces it instead of failing.
        self.from_environment = False

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, **options: Any) -> Agent:
        """Load the configuration (arguments > ``RUNCOV_*`` env > defaults) and start the agent.

        One agent runs per process: calling ``start()`` again without arguments returns the
        running agent; with a different configuration it raises :class:`RuncovError`, unless
        the running agent was started from the environment by a zero-code launcher
        (``runcov run``, ``opentelemetry-instrument``): the application's own call then
        replaces it, since its arguments take precedence over the environment. A bad
        configuration raises :class:`~runcov.errors.ConfigError` here; a failure to turn on
        tracing is logged and leaves an agent that measures nothing, never an error.
        """
        from runcov.config import load_config

        global _active
        with _lock:
            running = current_agent()
            if running is not None:
                if not options:
                    return running
                config = load_config(**options)
                if config == running.config:
                    return running
                if not running.from_environment:
                    raise RuncovError(
                        "runcov is already running in this process with a different "
                        "configuration; call runcov.stop() before starting it again"
                    )
                log.info(
                    "runcov: the application's runcov.start() replaces the agent started from "
                    "the environment (its arguments take precedence)"
                )
                # Started with the process, it has measured little or nothing yet.
                running.stop(_REPLACE_FLUSH_SECONDS)
            else:
                config = load_config(**options)
            agent = cls(config)
            agent._start()
            _active = agent
            return agent

    @classmethod
    def start_from_environment(cls) -> Agent:
        """Start the agent from ``RUNCOV_*`` alone, as the zero-code launchers do: the
        application may still call :meth:`start` with arguments of its own, which replace it."""
        with _lock:
            running = current_agent()
            if running is not None:
                return running
            agent = cls.start()
            agent.from_environment = True
            return agent

    def _start(self) -> None:
        config = self.config
        if not config.enabled:
            log.info("runcov is disabled by configuration; nothing is measured")
            return
        from runcov.sampling import Sampler

        self._sampler = Sampler(config, time.monotonic)
        try:
            if self._resource is None:
                from runcov.resource import build_resource

                self._resource = build_resource(config)
            if self.metrics is None:
                self.metrics = _make_metrics(config, self._resource)
            if self.exporter is None:
                from runcov.export.exporter import CoverageExporter

                self.exporter = CoverageExporter(config, self._resource, metrics=self.metrics)
                # Set the exporter's pipeline up now: a short-lived process (a script, a job)
                # may otherwise first need it at interpreter exit, when no thread can start.
                warm = getattr(self.exporter, "prepare", None)
                if warm is not None:
                    warm()
        except RuncovError:
            raise
        except Exception:
            log.exception("runcov could not set up its exporters; nothing will be measured")
            return
        try:
            if self.core is None:
                from runcov.tracing import get_core

                self.core = get_core()
            self.core.add_roots(config.source)
            # A sampled request still running after max_scope_seconds stops being measured
            # (the core's expiry thread cuts it): see _scope_expired.
            set_max_age = getattr(self.core, "set_max_scope_age", None)
            if set_max_age is not None:
                set_max_age(config.max_scope_seconds, self._scope_expired)
            if _highest_rate(self._matcher, config, census=False) > 0:
                # Exact scopes will come: what the first would pay for is done now. At a rate
                # of 0 (only a decision propagated from upstream samples), the first does it.
                self._prepare_exact()
            self._census_by_span()
        except Exception:
            log.exception("runcov could not turn tracing on; nothing will be measured")
            self.core = None
            return
        if getattr(self.metrics, "enabled", False) and hasattr(self.metrics, "seen_source"):
            self.metrics.seen_source = self._seen_totals
            self._count_seen = True
            # The export worker tells the metrics, once per round, what the request paths
            # spent since the last round (an SDK counter addition costs ~10 µs: not per request).
        self.exporter.on_round = self._on_round
        self._reach_check_from = time.monotonic() if self._count_seen else None
        self.running = True
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        # Registered after the exporter's providers, so it runs before their own exit hooks:
        # what is still queued reaches them and leaves with their final flush.
        atexit.register(self._at_exit)
        if config.flush_on_sigterm:
            _flush_on_sigterm()
        self._attach_to_global_provider()

    def _census_by_span(self) -> None:
        """Census without a scope per request, where the core can attribute first hits.

        When any selector asks for census, the core records the first hit of each line by all
        traffic from start on, and names the trace that made it (the current span's trace id:
        the request's code runs inside its span). The span processor claims a trace's hits when
        its request span ends. Unsampled requests of census endpoints thus cost nothing; the
        census rules' rates do not apply (census sees all traffic).
        """
        if not self._matcher.uses_mode("census"):
            return
        if not self.core.set_census_owner(_current_trace_id):
            return  # the settrace core: a census scope per sampled request
        self.census_by_span = True
        self._span_threshold = _fast_threshold(self._matcher, self.config, census=False)
        self._highest_span = self._span_threshold
        self.core.enable_census()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop measuring, send what was measured (waiting up to ``timeout`` s), release all."""
        global _active
        with _lock:
            was_running = self.running
            self.running = False
            self._count_seen = False
            if self.census_by_span:
                # Census was turned on for this agent: nothing is measured once it stops.
                self.census_by_span = False
                try:
                    self.core.set_census_owner(None)
                    self.core.disable_census()
                except Exception:
                    pass
            if was_running and hasattr(self.core, "set_max_scope_age"):
                try:  # (the core outlives the agent: capture_coverage, a later agent)
                    self.core.set_max_scope_age(0.0, None)
                except Exception:
                    pass
            if _active is self:
                _active = None
        if not was_running:
            return
        _release_sigterm()
        # One budget for both: a process exiting while the collector is down waits ``timeout``
        # seconds, not once per signal.
        deadline = time.monotonic() + timeout
        for closer in (
            lambda left: self.exporter.shutdown(left),
            lambda left: self.metrics.shutdown(left) if hasattr(self.metrics, "shutdown") else None,
        ):
            try:
                closer(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.debug("runcov: error while stopping", exc_info=True)

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything measured so far; True when it left the process within ``timeout``."""
        if self.exporter is None:
            return True
        try:
            ok = bool(self.exporter.flush(timeout))
            if self.metrics is not None and hasattr(self.metrics, "flush"):
                self.metrics.flush(timeout)
            return ok
        except Exception:
            log.debug("runcov: flush failed", exc_info=True)
            return False

    def _at_exit(self) -> None:
        try:
            self.stop(EXIT_FLUSH_SECONDS)
        except Exception:
            pass

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives fork(): locks another thread held would never be
        # released, and requests in flight belong to threads that are gone.
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._preparing = False  # (a preparing thread of the parent is not in the child)
        self._novelty_lock = threading.Lock()
        # The child's metrics start from zero (a new service instance).
        self._tally_local = threading.local()
        self._tallies = []
        self._retired = _ThreadTally()
        self._spent_reported = 0.0
        self._capped_reported = {}
        if self._sampler is not None:
            from runcov.sampling import Sampler

            self._sampler = Sampler(self.config, time.monotonic)
        self._raise_thresholds()  # a new sampler: every endpoint starts boosted again
        if self._processor is not None:
            self._processor._after_fork_in_child()

    # -- OpenTelemetry provider ---------------------------------------------------------------

    @property
    def processor(self) -> Any:
        """The :class:`~runcov.otel.processor.RuncovSpanProcessor` of this agent."""
        if self._processor is None:
            from runcov.otel.processor import RuncovSpanProcessor

            self._processor = RuncovSpanProcessor(self)
        return self._processor

    def attach(self, provider: Any) -> bool:
        """Register the span processor on an SDK ``TracerProvider``; False for other providers."""
        try:
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:  # pragma: no cover - the SDK is a dependency
            return False
        if not isinstance(provider, TracerProvider):
            return False
        with _lock:
            if any(p is provider for p in self._attached):
                return True
            provider.add_span_processor(self.processor)
            self._attached.append(provider)
        return True

    def _attach_to_global_provider(self) -> None:
        """Attach to the global provider now, or when the application sets one later."""
        from opentelemetry import trace

        try:
            if self.attach(trace.get_tracer_provider()):
                return
            _watch_set_tracer_provider()
        except Exception:
            log.debug("runcov: could not attach to the global tracer provider", exc_info=True)

    # -- requests -----------------------------------------------------------------------------

    def endpoint_name(self, method: Optional[str], route: Optional[str]) -> str:
        """The endpoint name of an HTTP request, e.g. ``"GET /items/{item_id}"``."""
        from runcov.selectors import endpoint_name

        return endpoint_name(method, route)

    def begin(
        self,
        method: Optional[str],
        route: Optional[str],
        trace_id: int,
        tracestate: Any = None,
        *,
        route_known: bool = True,
        by_span: bool = False,
    ) -> Optional[RequestTicket]:
        """Decide whether to measure a request that is starting; open its scope if so.

        ``method`` is the HTTP method, or ``"job"`` / ``"consumer"`` for a critical function
        (route = its qualified name) or a consumer span (route = the span name).
        ``route_known=False`` means the route template is learnt only when the request ends:
        the decision is then taken on the method alone and checked again by :meth:`finish`.
        ``by_span``: the request is a span of the span processor (which claims census hits by
        span, see :meth:`finish_census`).
        Returns a ticket for :meth:`finish`, or None when the request is not measured.
        Never raises.
        """
        if not self.running:
            return None
        t0 = time.perf_counter()
        try:
            return self._begin(method, route, trace_id, tracestate, route_known, by_span)
        except Exception:
            self._internal_error("")
            return None
        finally:
            self._spend(time.perf_counter() - t0)

    def cannot_sample(self, trace_id: int, tracestate: Any = None, by_span: bool = False) -> bool:
        """True when no selector could sample this trace (a cheap test before :meth:`begin`).

        The trace's randomness is below the threshold of the highest rate any selector could
        reach (saturation boost included); a tracestate ``ot`` entry (rv / propagated th)
        always needs the full decision. ``by_span``: asked by the span processor, for which
        census selectors sample nothing once census goes by span.
        """
        threshold = self._span_threshold if by_span else self._fast_threshold
        return (trace_id & _RANDOMNESS_MASK) < threshold and (
            not tracestate or "ot" not in tracestate
        )

    def _begin(
        self,
        method: Optional[str],
        route: Optional[str],
        trace_id: int,
        tracestate: Any,
        route_known: bool,
        by_span: bool = False,
    ) -> Optional[RequestTicket]:
        # Fast path for the common outcome: no rule can sample this trace.
        if self.cannot_sample(trace_id, tracestate, by_span):
            return None
        core = self.core
        if core.current_scope() is not None:
            return None  # nested in work that is already measured
        if route_known:
            rule = self._matcher.match(method, route)
            endpoint = self.endpoint_name(method, route)
        else:
            rule = self._provisional_rule(method)
            endpoint = self.endpoint_name(method, "*")
            # (Decided on the highest rate the request's selectors can reach, and kept at the
            # end only if its final endpoint's rate picks it: the fast thresholds, which follow
            # the final endpoints' rates, never turn away a request that would be kept.)
        if rule is None:
            return None
        if by_span and rule.mode == "census" and self.census_by_span:
            return None  # its first hits are claimed when its span ends
        self._maybe_new_epoch(rule.mode)
        decision = self._sampler.decide(trace_id, tracestate, rule, endpoint)
        if not decision.sampled:
            if decision.reason == "rate_cap":
                self._count_capped(endpoint)
            return None
        if rule.mode != "census" and not self._exact_ready and not self._exact_is_ready():
            self.metrics.dropped(endpoint, "preparing")
            return None
        exporter = self.exporter
        if exporter is not None and exporter.is_full():
            self.metrics.dropped(endpoint, "queue_full")
            return None
        with self._count_lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                busy = True
            else:
                busy = False
                self._in_flight += 1
        if busy:
            self.metrics.dropped(endpoint, "tracer_busy")
            return None
        scope = core.open_scope(mode=rule.mode, trace_id=trace_id)
        if rule.mode != "census":
            try:
                scope.label = endpoint  # (named so when it expires: _scope_expired)
            except AttributeError:
                pass
        ticket = RequestTicket(
            scope, rule, endpoint, method, route, route_known, trace_id, tracestate, decision.rate
        )
        ticket.reason = decision.reason
        return ticket

    def _exact_is_ready(self) -> bool:
        """Whether the core opens an exact scope with nothing to prepare first. An agent started
        at a rate of 0 left the code alone; a request sampled by a decision propagated from
        upstream then finds it unprepared (on 3.11 probing the code takes ~50 ms for a small
        service): the preparation runs on a thread of its own, started once, and the requests
        sampled meanwhile are counted as dropped (``preparing``) instead of waiting for it."""
        if getattr(self.core, "exact_prepared", True):
            self._exact_ready = True
            return True
        with self._count_lock:
            if self._preparing:
                return False
            self._preparing = True
        threading.Thread(target=self._prepare_exact, name="runcov-prepare", daemon=True).start()
        return False

    def _prepare_exact(self) -> None:
        """Prepare the core for exact scopes (at start, or on a thread of its own); never
        raises."""
        try:
            self.core.expect_exact_scopes()
        except Exception:
            log.debug("runcov: could not prepare exact scopes", exc_info=True)

    def _provisional_rule(self, method: Optional[str]) -> Any:
        """The rule to decide with before the route is known (None: no selector can match).

        Its rate is the highest rate of any selector the request may still match, so the
        request is sampled whenever its final selector would sample it (consistent sampling:
        a lower rate's picks are a subset of a higher rate's); :meth:`finish` re-checks.
        """
        from runcov.selectors import Rule

        matcher = self._matcher
        if not matcher.may_match(method):
            return None
        return Rule(selector="*", rate=matcher.max_rate(method), mode=self.config.mode)

    def _maybe_new_epoch(self, mode: str) -> None:
        if mode != "census":
            return
        now = time.monotonic()
        if now - self._census_epoch >= CENSUS_EPOCH_SECONDS:
            self._census_epoch = now
            self.core.new_epoch()

    def _scope_expired(self, scope: Any) -> None:
        """A sampled request's scope outlived ``max_scope_seconds`` (the core's expiry thread):
        it is counted now, and what it measured until then is exported, marked, when its
        request ends (:meth:`_finish`). Never raises."""
        endpoint = getattr(scope, "label", None)
        if endpoint is None:
            return  # not a request of this agent's (a capture_coverage block)
        try:
            self.metrics.scope_expired(endpoint, trace_id=getattr(scope, "trace_id", None))
        except Exception:
            self.internal_errors += 1

    def cancel(self, ticket: Optional[RequestTicket]) -> None:
        """Close a ticket's scope without emitting anything (the request was not measurable)."""
        if ticket is None:
            return
        try:
            ticket.scope.close()
        finally:
            self._release()

    def finish(
        self,
        ticket: RequestTicket,
        *,
        parent_span_id: int,
        status: Optional[str],
        method: Optional[str] = None,
        route: Optional[str] = None,
    ) -> bool:
        """Close a measured request's scope and queue its coverage for export.

        ``route``/``method`` are the final values (the route may have been learnt late);
        ``status`` is the status class (``"2xx"``, ``"ok"``, ``"error"``). Returns True when
        the coverage was queued. Never raises.
        """
        t0 = time.perf_counter()
        try:
            return self._finish(ticket, parent_span_id, status, method, route)
        except Exception:
            self._internal_error(ticket.endpoint)
            return False
        finally:
            self._release()
            self._spend(time.perf_counter() - t0)

    def _finish(
        self,
        ticket: RequestTicket,
        parent_span_id: int,
        status: Optional[str],
        method: Optional[str],
        route: Optional[str],
    ) -> bool:
        data = ticket.scope.close()
        # Metric data points about this request carry it as an exemplar.
        ids = {"trace_id": ticket.trace_id, "span_id": parent_span_id}
        if method is not None:
            ticket.method = method
        if not ticket.route_known:
            ticket.route = route
            rule = self._matcher.match(ticket.method, route)
            endpoint = self.endpoint_name(ticket.method, route)
            if rule is None or not self._still_sampled(ticket, rule, endpoint):
                self.metrics.dropped(endpoint, "route_mismatch", **ids)
                return False
            ticket.rule = rule
            ticket.endpoint = endpoint
        endpoint = ticket.endpoint
        if not getattr(ticket.scope, "traced", True):
            self.metrics.dropped(endpoint, "tracer_busy", **ids)
            return False
        if ticket.mode == "census" and data.is_known_empty():
            # Nothing ran for the first time in this epoch (census traffic, mostly): there is
            # nothing to send, so the request costs the export worker nothing either.
            return False
        return self._submit(
            ticket.trace_id,
            parent_span_id,
            endpoint,
            ticket.method,
            ticket.route,
            status,
            ticket.mode,
            data,
            ticket.start_ns,
            ticket.rule.rate,
            # Measured until its scope expired: what it ran until then, and no more.
            expired=getattr(ticket.scope, "expired", False) is True,
        )

    def finish_census(
        self,
        trace_id: int,
        span_id: int,
        method: Optional[str],
        route: Optional[str],
        status: Optional[str],
        start_ns: int,
    ) -> bool:
        """Queue the census first hits that the request span ``span_id`` of ``trace_id`` made
        (census by span), under the request's endpoint. True when something was queued.
        Never raises."""
        t0 = time.perf_counter()
        try:
            data = self.core.take_census(trace_id)
            if data is None:
                return False
            endpoint = self.endpoint_name(method, route)
            return self._submit(
                trace_id, span_id, endpoint, method, route, status, "census", data, start_ns, 1.0
            )
        except Exception:
            self._internal_error("")
            return False
        finally:
            self._spend(time.perf_counter() - t0)

    def _submit(
        self,
        trace_id: int,
        span_id: int,
        endpoint: str,
        method: Optional[str],
        route: Optional[str],
        status: Optional[str],
        mode: str,
        data: Any,
        start_ns: int,
        rule_rate: float,
        expired: bool = False,
    ) -> bool:
        """Queue a measured request's data for export; True when it was queued. ``expired``:
        the request was measured only until its scope expired, which its spans say."""
        from runcov.export.exporter import RequestRecord

        # Turning the raw records into per-file sets, the metrics and the novelty bookkeeping
        # happen on the exporter's thread (``_account``), off the request's path.
        record = RequestRecord(
            trace_id=trace_id,
            span_id=span_id,
            endpoint=endpoint,
            method=method,
            route=route,
            status_class=status or "ok",
            mode=mode,
            data=data,
            start_ns=start_ns,
            end_ns=time.time_ns(),
            before=lambda rec: self._account(rec, rule_rate),
            attributes={EXPIRED_ATTRIBUTE: True} if expired else None,
        )
        return bool(self.exporter.submit(record))

    def _account(self, record: Any, rule_rate: float) -> bool:
        """Count a measured request (exporter thread); False when it recorded nothing."""
        repeat = getattr(record, "repeat", False)
        if not repeat and record.data.is_empty():
            # Nothing under the source roots ran (or, in census mode, nothing ran first).
            return False
        endpoint = record.endpoint
        ids = {"trace_id": record.trace_id, "span_id": record.span_id}
        self.metrics.sampled(endpoint, record.mode, **ids)
        # A repeat ran the same lines and arcs as an earlier request of this endpoint: nothing
        # new for it, nothing to look up.
        new_arcs = 0 if repeat else self._note_novelty(endpoint, record.data, ids)
        if record.mode != "census":
            self._sampler.observe(endpoint, new_arcs)
            if new_arcs and not self._keep_highest:
                self._raise_thresholds()  # the endpoint is boosted again
        self.metrics.rate(endpoint, self._sampler.effective_rate(endpoint, rule_rate))
        return True

    def _still_sampled(self, ticket: RequestTicket, rule: Any, endpoint: str) -> bool:
        """Whether the final rule still samples a request decided on a provisional rule.

        A trace sampled at rate r is sampled at every rate >= r, so the request is kept iff
        the final endpoint's current rate alone would have picked it. A decision propagated
        in the tracestate (``th``) was already the final word.
        """
        if ticket.reason == "propagated":
            return True
        from runcov.sampling import randomness, threshold

        rate = self._sampler.effective_rate(endpoint, rule.rate)
        if rate >= ticket.rate:
            return True
        return rate > 0.0 and randomness(ticket.trace_id, ticket.tracestate) >= threshold(rate)

    def _note_novelty(self, endpoint: str, data: Any, ids: dict[str, int]) -> int:
        """Count lines and arcs this process sees for the first time on ``endpoint``; returns
        the number of new arcs."""
        new_lines = 0
        new_arcs = 0
        with self._novelty_lock:
            if endpoint not in self._seen_lines and len(self._seen_lines) >= MAX_ENDPOINTS:
                return 0  # bounded: past so many endpoints, new ones are not followed
            seen_lines = self._seen_lines.setdefault(endpoint, {})
            for path, lines in data.lines.items():
                known = seen_lines.setdefault(path, set())
                before = len(known)
                known |= lines
                new_lines += len(known) - before
            seen_arcs = self._seen_arcs.setdefault(endpoint, {})
            for path, arcs in data.arcs.items():
                known_arcs = seen_arcs.setdefault(path, set())
                before = len(known_arcs)
                known_arcs |= arcs
                new_arcs += len(known_arcs) - before
        self.metrics.new_coverage(endpoint, new_lines, new_arcs, **ids)
        return new_arcs

    def seen(self, method: Optional[str], route: Optional[str]) -> None:
        """Count a finished request, measured or not. Never raises.

        Called for every request, so it only bumps a count in a dict of the calling thread:
        no lock, no endpoint matching, no redaction. :meth:`_seen_totals` turns the counts into
        per-endpoint totals when the metrics are collected.
        """
        if not self._count_seen:
            return
        try:
            counts = self._tally_local.counts
        except AttributeError:
            counts = self._tally().counts
        key = (method, route)
        seen = counts.get(key)
        if seen is None:
            full = len(counts) >= _MAX_SEEN_KEYS
            if not self._keep_highest:
                # A request this thread had not seen: its endpoint may be new, and a new
                # endpoint starts boosted (past the bound, endpoints can no longer be told).
                self._raise_thresholds(keep=full)
            if full:
                key = ("_OTHER", None)  # bounded memory whatever methods clients send
            seen = counts.get(key, 0)
        counts[key] = seen + 1

    def _count_capped(self, endpoint: str) -> None:
        """Count a request the rate cap turned away. Under a cap most requests the probability
        rule picks are turned away (a busy endpoint, boosted by saturation), so this only bumps
        a count of the calling thread: the export worker adds the counts to
        ``runcov.requests.dropped`` once per round (a metric addition on the request path
        costs ~20 µs)."""
        if not self._count_seen:
            self.metrics.dropped(endpoint, "rate_cap")
            return
        capped = self._tally().capped
        count = capped.get(endpoint)
        if count is None and len(capped) >= _MAX_SEEN_KEYS:
            self.metrics.dropped(endpoint, "rate_cap")  # (bounded memory)
            return
        capped[endpoint] = (count or 0) + 1

    def _tally(self) -> _ThreadTally:
        """The calling thread's tally (created and registered at its first request)."""
        try:
            return self._tally_local.tally
        except AttributeError:
            pass
        tally = self._tally_local.tally = _ThreadTally()
        self._tally_local.counts = tally.counts
        with self._count_lock:
            self._tallies.append((weakref.ref(threading.current_thread()), tally))
        # The metrics pipeline (its reader reports the totals) starts with the first count of
        # a process, as with any other metric, on a thread of its own (not this request's).
        start = getattr(self.metrics, "start_soon", None)
        if start is not None:
            start()
        return tally

    def _live_tallies(self) -> list[_ThreadTally]:
        """The tallies of threads alive; those of threads that ended are folded into
        ``_retired`` first, so the number of tallies stays bounded (caller holds the lock)."""
        alive = []
        live = []
        retired = self._retired
        for ref, tally in self._tallies:
            thread = ref()
            if thread is None or not thread.is_alive():
                _add_counts(retired.counts, tally.counts)
                _add_counts(retired.capped, tally.capped)
                retired.spent += tally.spent
            else:
                alive.append((ref, tally))
                live.append(tally)
        self._tallies = alive
        return live

    def _summed(self, field: str) -> dict[Any, int]:
        """One of the tallies' counts (``counts`` or ``capped``) summed over every thread;
        those of threads that ended are folded into one dict first, so the number of dicts
        stays bounded by the threads alive (caller holds the lock)."""
        live = self._live_tallies()  # first: it folds the tallies of ended threads
        total = dict(getattr(self._retired, field))
        for tally in live:
            _add_counts(total, getattr(tally, field))
        return total

    def _seen_totals(self) -> dict[str, int]:
        """Requests seen per selected endpoint since start (the metrics' observable counter)."""
        with self._count_lock:
            raw = self._summed("counts")
        totals: dict[str, int] = {}
        names = self._seen_names
        for key, n in raw.items():
            if key in names:
                name = names[key]
            else:
                name = None
                if self._matcher.match(*key) is not None:
                    name = self.endpoint_name(*key)
                if len(names) < 4096:
                    names[key] = name
            if name is not None:
                totals[name] = totals.get(name, 0) + n
        return totals

    def _release(self) -> None:
        with self._count_lock:
            if self._in_flight > 0:
                self._in_flight -= 1

    def _spend(self, seconds: float) -> None:
        """Add time runcov spent on a request path to this thread's total (no lock)."""
        if not self._count_seen:
            return
        self._tally().spent += seconds

    def _on_round(self) -> None:
        """The export worker's round (about once a second): metrics and census epochs."""
        if self._count_seen:
            self._report_overhead()
            self._follow_saturation()
        self._report_capped()
        if self._unmatched and self._count_seen:
            self._check_selectors()
        if self._reach_check_from is not None:
            self._check_reached()
        if self.census_by_span:
            self._census_round()

    def _check_selectors(self) -> None:
        """Warn, once per selector, when one matched none of the first
        :data:`UNMATCHED_AFTER` requests of its kind this process saw (called by the export
        worker once per round while a selector is still unmatched).

        A typo, or a URL path where the route template is expected (``/items/42`` for
        ``/items/{item_id}``), would otherwise leave an endpoint unmeasured without a word. A
        selector is compared with the requests it could stand for: a job selector with the
        jobs, a consumer one with the consumer spans, a websocket one with the connections,
        an HTTP one with the HTTP requests (whatever their method: the typo may be in the
        method), a selector without a method with all of them.
        """
        with self._count_lock:
            counts = self._summed("counts")
        still = []
        for selector in self._unmatched:
            relevant = {key: n for key, n in counts.items() if selector.same_kind(key[0])}
            if any(selector.matches(*key) for key in relevant):
                continue
            total = sum(relevant.values())
            if total < UNMATCHED_AFTER:
                still.append(selector)
                continue
            busiest = sorted(relevant, key=lambda key: -relevant[key])[:5]
            seen = ", ".join(repr(self.endpoint_name(*key)) for key in busiest)
            routeless = sum(
                n for (method, route), n in relevant.items() if route is None and method
            )
            log.warning(
                "runcov: the endpoint selector %r has matched none of the first %d requests "
                "of its kind this process saw; if its endpoint gets traffic, check its "
                "spelling: selectors match the route template the framework reports (such as "
                "'/items/{item_id}'), not the URL path. The busiest endpoints seen: %s%s",
                selector.text,
                total,
                seen,
                _ROUTELESS_HINT if selector.route != "*" and 2 * routeless > total else "",
            )
        self._unmatched = still

    def _check_reached(self) -> None:
        """Warn once when no request reached the agent in its first :data:`UNREACHED_AFTER`
        seconds and it has no OpenTelemetry SDK provider to see requests through (called by
        the export worker once per round until the check is done).

        ``runcov.start()`` in an application that neither sets up OpenTelemetry's SDK nor
        wraps itself in runcov's middleware measures nothing, and would otherwise say
        nothing: no coverage, no metrics (they start with the first request), a service
        unknown to the collector.
        """
        started = self._reach_check_from
        if started is None or time.monotonic() - started < UNREACHED_AFTER:
            return
        self._reach_check_from = None
        with self._count_lock:
            reached = bool(self._tallies) or bool(self._retired.counts)
        if reached or self._attached:
            return
        log.warning(
            "runcov: no request has reached runcov in the %d s since it started, and there is "
            "no OpenTelemetry SDK tracer provider for its span processor (the application set "
            "none, or built one of its own without runcov's processor): if the application "
            "serves requests, run it under `opentelemetry-instrument` or `runcov run`, or wrap "
            "it in runcov.middleware.RuncovWSGIMiddleware / RuncovASGIMiddleware (jobs: "
            "@runcov.critical or runcov.watch)",
            UNREACHED_AFTER,
        )

    def _census_round(self) -> None:
        now = time.monotonic()
        refresh = getattr(self.core, "refresh_census", None)
        if refresh is not None and now >= self._census_refresh_at:
            # Census probes (3.11): functions made by code that was not probed (a __main__
            # script's, defined after start) are probed here, and the probes that fired are
            # taken out of the functions' code, less and less often after each epoch starts.
            self._census_refresh_wait = min(2 * self._census_refresh_wait, CENSUS_EPOCH_SECONDS)
            self._census_refresh_at = now + self._census_refresh_wait
            try:
                refresh()
            except Exception:
                self.internal_errors += 1
        if now - self._census_epoch < CENSUS_EPOCH_SECONDS:
            return
        self._census_epoch = now
        core = self.core
        # First hits no request span claimed (work outside a server or consumer span): they
        # are forgotten with the epoch; count them.
        unclaimed = len(core.census_pending) + min(1, getattr(core, "census_unattributed", 0))
        core.new_epoch()
        self._census_refresh_wait = CENSUS_REFRESH_FIRST_SECONDS
        self._census_refresh_at = now + self._census_refresh_wait
        if unclaimed and self.metrics is not None:
            try:
                self.metrics.dropped("", "census_unclaimed", count=unclaimed)
            except Exception:
                self.internal_errors += 1

    def _report_overhead(self) -> None:
        """Tell the metrics what the request paths spent since the last report (called by the
        export worker once per round)."""
        with self._count_lock:
            live = self._live_tallies()  # first: it folds the tallies of ended threads
            total = self._retired.spent + sum(tally.spent for tally in live)
            delta, self._spent_reported = total - self._spent_reported, total
        if delta > 0:
            try:
                self.metrics.overhead(delta)
            except Exception:
                self.internal_errors += 1

    def _raise_thresholds(self, keep: bool = False) -> None:
        """Put the fast thresholds back at the highest rates any request could reach (``keep``:
        for good, the worker no longer lowers them)."""
        if keep:
            self._keep_highest = True
        self._raised += 1
        self._fast_threshold = self._highest_fast
        self._span_threshold = self._highest_span

    def _follow_saturation(self) -> None:
        """Lower the fast thresholds to the highest rate at which an endpoint seen so far can
        be sampled now (called by the export worker once per round).

        With saturation a busy endpoint's rate decays to a tenth of its selector's once it
        stops finding new arcs, while the fixed thresholds allow for ten times the selector's
        rate: most requests that pass them would take the full decision only to be told no.
        Every request is counted as seen when it ends, under its final route, so the endpoints
        seen are all the endpoints that can be decided; one that has not been sampled yet
        counts as boosted, and an endpoint seen for the first time puts the thresholds back up
        at once (its first request, decided before it was counted, is decided on the lower
        threshold). A request decided before its route is known is kept at its end only if
        its final endpoint's rate picks it, so the lower thresholds hold for it too.
        """
        if self._keep_highest or self._sampler is None:
            return
        raised = self._raised
        with self._count_lock:
            keys = self._summed("counts")
        if not keys:
            return  # nothing seen yet: every endpoint is new
        highest = highest_exact = 0.0
        census_by_span = self.census_by_span
        for method, route in keys:
            rule = self._matcher.match(method, route)
            if rule is None or rule.rate <= 0.0:
                continue
            rate = self._sampler.effective_rate(self.endpoint_name(method, route), rule.rate)
            highest = max(highest, rate)
            if not census_by_span or rule.mode != "census":
                highest_exact = max(highest_exact, rate)
        from runcov.sampling import threshold

        fast, span = threshold(highest), threshold(highest_exact)  # (0 at a rate of 1)
        if raised == self._raised and not self._keep_highest:
            # (max: never more requests decided in full than at the highest rates)
            self._fast_threshold = max(fast, self._highest_fast)
            self._span_threshold = max(span, self._highest_span)

    def _report_capped(self) -> None:
        """Add the requests the rate cap turned away since the last report to the metrics
        (called by the export worker once per round, and at the last one when stopping)."""
        with self._count_lock:
            totals = self._summed("capped")
            reported, self._capped_reported = self._capped_reported, totals
        deltas = {e: n - reported.get(e, 0) for e, n in totals.items()}
        for endpoint, delta in deltas.items():
            if delta > 0:
                try:
                    self.metrics.dropped(endpoint, "rate_cap", count=delta)
                except Exception:
                    self.internal_errors += 1

    def _internal_error(self, endpoint: str) -> None:
        self.internal_errors += 1
        try:
            log.debug("runcov: internal error", exc_info=True)
            if self.metrics is not None:
                self.metrics.dropped(endpoint, "internal_error")
        except Exception:
            pass


#: Seconds after start by which a request should have reached the agent, when it has no
#: OpenTelemetry provider to see requests through (``Agent._check_reached``).
UNREACHED_AFTER = 60

#: Requests of a selector's kind seen before a selector that matched none of them is warned
#: about (``Agent._check_selectors``).
UNMATCHED_AFTER = 1000

_ROUTELESS_HINT = (
    ". Most requests came without a route: no route reaches runcov when the server span "
    "carries none (OpenTelemetry's plain WSGI/ASGI middleware, or that middleware wrapped "
    "around an application its framework's instrumentation also traces, which turns the "
    "framework's span, the one with the route, into an internal span): instrument the "
    "application once, with its framework's instrumentation"
)


def _make_metrics(config: Any, resource: Any) -> Any:
    """The agent's metrics; without them (setup failed) coverage is still measured and sent."""
    try:
        from runcov.metrics import AgentMetrics

        return AgentMetrics(config, resource)
    except Exception:
        log.warning("runcov: agent metrics are off: they could not be set up", exc_info=True)
        return _NullMetrics()


class _NullMetrics:
    """Metrics that record nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_set_provider_watched = False


def _watch_set_tracer_provider() -> None:
    """Attach the running agent to a tracer provider the application sets after start()."""
    global _set_provider_watched
    if _set_provider_watched:
        return
    import wrapt
    from opentelemetry import trace

    def after_set(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        agent = current_agent()
        if agent is not None:
            try:
                agent.attach(trace.get_tracer_provider())
            except Exception:
                log.debug("runcov: could not attach to the new tracer provider", exc_info=True)
        return result

    # ``set_tracer_provider`` calls the private ``_set_tracer_provider`` through the module, so
    # wrapping the latter also catches callers that imported ``set_tracer_provider`` by name.
    name = "set_tracer_provider"
    if hasattr(trace, "_set_tracer_provider"):
        name = "_set_tracer_provider"
    wrapt.wrap_function_wrapper(trace, name, after_set)
    _set_provider_watched = True
