"""Which traces runcov samples: consistent probability sampling, a rate cap and saturation.

**Consistent probability sampling** follows OpenTelemetry's rule, so every service that samples
at the same rate picks the same traces and a lower rate's picks are a subset of a higher rate's:
the randomness ``R`` of a trace is the ``rv`` value of the ``ot`` W3C tracestate entry when there
is one, else the low 56 bits of the trace id; a rate ``p`` gives the threshold
``T = round((1 - p) * 2**56)``; the trace is sampled iff ``R >= T``. A ``th`` value in the
incoming ``ot`` entry is a decision already taken upstream and is honoured: sampled iff
``R >= th``.

**Cap.** At most ``max_per_second`` sampled requests per second per process (a token bucket
holding one second of tokens); a request over the cap is not sampled (reason ``rate_cap``).

**Saturation** (``saturation=True``). Per endpoint runcov watches how many new arcs each sampled
request finds (:meth:`Sampler.observe`). The endpoint's rate is its selector rate ``p`` times a
multiplier ``m`` kept between 1/10 and 10:

- a new endpoint starts boosted (``m = 10``): everything it runs is new;
- a sampled request that finds new arcs sets ``m`` back to 10;
- after ``QUIET_WINDOW`` sampled requests in a row found nothing new, each further such request
  multiplies ``m`` by ``DECAY`` (down to 1/10).

The rate used is ``min(1, p * m)``, never below the floor ``min(p, max(p / 10, MIN_FLOOR))`` so
that a code path that appears later is still found, after which the boost returns. The rule keeps
the consistency property at every moment: a request is sampled iff ``R >= T(current rate)``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from runcov._fork import in_forked_child
from runcov.config import Config
from runcov.selectors import Rule

__all__ = [
    "DECAY",
    "MAX_BOOST",
    "MIN_FLOOR",
    "QUIET_WINDOW",
    "RANDOMNESS_BITS",
    "Decision",
    "Sampler",
    "parse_ot_tracestate",
    "randomness",
    "threshold",
    "would_sample",
]

RANDOMNESS_BITS = 56
_MAX_R = 1 << RANDOMNESS_BITS
_MASK = _MAX_R - 1
#: Boost factor while an endpoint still finds new arcs; the rate decays down to 1/MAX_BOOST.
MAX_BOOST = 10.0
#: Sampled requests in a row without new arcs before the rate starts decaying.
QUIET_WINDOW = 20
#: Multiplier applied per quiet sampled request once the window is quiet.
DECAY = 0.8
#: Absolute floor of a saturated rate (unless the configured rate itself is lower).
MIN_FLOOR = 1e-4


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: sampled or not, why, and the rate that applied."""

    sampled: bool
    reason: str
    rate: float


def threshold(rate: float) -> int:
    """The 56-bit rejection threshold for a sampling probability (0 = keep all)."""
    rate = min(1.0, max(0.0, rate))
    return round((1.0 - rate) * _MAX_R)


def parse_ot_tracestate(tracestate: Any) -> tuple[Optional[int], Optional[int]]:
    """``(rv, th)`` from the ``ot`` entry of a W3C tracestate (a header string or a TraceState).

    Missing or malformed values come back as None.
    """
    if tracestate is None:
        return None, None
    value: Optional[str]
    if isinstance(tracestate, str):
        value = None
        for member in tracestate.split(","):
            key, sep, val = member.strip().partition("=")
            if sep and key.strip() == "ot":
                value = val.strip()
                break
    else:
        try:
            value = tracestate.get("ot")
        except Exception:
            return None, None
    if not value:
        return None, None
    rv = th = None
    for field in value.split(";"):
        key, sep, val = field.partition(":")
        if not sep:
            continue
        if key == "rv" and len(val) == 14:
            try:
                rv = int(val, 16)
            except ValueError:
                rv = None
        elif key == "th" and 1 <= len(val) <= 14:
            try:
                th = int(val.ljust(14, "0"), 16)
            except ValueError:
                th = None
    return rv, th


def randomness(trace_id: int, tracestate: Any = None) -> int:
    """The trace's 56-bit randomness: ``rv`` from tracestate, else the trace id's low 56 bits."""
    rv, _ = parse_ot_tracestate(tracestate)
    return rv if rv is not None else trace_id & _MASK


def would_sample(trace_id: int, tracestate: Any, rate: float) -> bool:
    """The bare probability rule: would a trace be sampled at ``rate`` (no cap, no propagation)."""
    if rate <= 0.0:
        return False
    return randomness(trace_id, tracestate) >= threshold(rate)


_NO_MATCH = Decision(False, "no_match", 0.0)


class _Endpoint:
    """Saturation state of one endpoint."""

    __slots__ = ("multiplier", "quiet", "window")

    def __init__(self) -> None:
        self.multiplier = MAX_BOOST
        self.quiet = 0
        self.window: deque[int] = deque(maxlen=QUIET_WINDOW)


class Sampler:
    """Decides per request whether to sample; thread-safe, constant time per call.

    ``clock`` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._saturation = bool(config.saturation)
        self._cap = float(config.max_per_second)
        self._capacity = max(1.0, self._cap)
        self._tokens = self._capacity
        self._last = clock()
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._thresholds: dict[float, int] = {}
        self._unsampled: dict[float, Decision] = {}
        in_forked_child(self._after_fork)

    def _after_fork(self) -> None:
        # The lock may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()

    def effective_rate(self, endpoint: str, rate: float) -> float:
        """The saturation-adjusted rate of ``endpoint`` whose configured rate is ``rate``."""
        if not self._saturation or rate <= 0.0:
            return rate
        state = self._endpoints.get(endpoint)
        boosted = rate * (MAX_BOOST if state is None else state.multiplier)
        if boosted > 1.0:
            return 1.0
        floor = rate / MAX_BOOST
        if floor < MIN_FLOOR:
            floor = MIN_FLOOR if rate > MIN_FLOOR else rate
        return boosted if boosted > floor else floor

    def _not_sampled(self, rate: float) -> Decision:
        # The common outcome: reuse one immutable Decision per rate instead of allocating.
        decision = self._unsampled.get(rate)
        if decision is None:
            decision = Decision(False, "not_sampled", rate)
            if len(self._unsampled) < 4096:
                self._unsampled[rate] = decision
        return decision

    def _threshold(self, rate: float) -> int:
        t = self._thresholds.get(rate)
        if t is None:
            t = threshold(rate)
            if len(self._thresholds) < 4096:
                self._thresholds[rate] = t
        return t

    def decide(
        self,
        trace_id: int,
        tracestate: Any,
        rule: Optional[Rule],
        endpoint: str,
    ) -> Decision:
        """Decide for one request. Never raises."""
        if rule is None:
            return _NO_MATCH
        try:
            rv, th = parse_ot_tracestate(tracestate) if tracestate else (None, None)
            r = rv if rv is not None else trace_id & _MASK
            if th is not None:
                rate = (_MAX_R - th) / _MAX_R
                if r < th:
                    return Decision(False, "propagated", rate)
                reason = "propagated"
            else:
                rate = self.effective_rate(endpoint, rule.rate) if self._saturation else rule.rate
                if rate <= 0.0 or r < self._threshold(rate):
                    return self._not_sampled(rate)
                reason = "sampled"
            if self._cap > 0.0 and not self._take_token():
                return Decision(False, "rate_cap", rate)
            return Decision(True, reason, rate)
        except Exception:
            return Decision(False, "internal_error", 0.0)

    def _take_token(self) -> bool:
        with self._lock:
            now = self._clock()
            elapsed = now - self._last
            self._last = now
            if elapsed > 0:
                self._tokens = min(self._capacity, self._tokens + elapsed * self._cap)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def observe(self, endpoint: str, new_arcs: int) -> None:
        """Feed the number of new arcs a sampled request of ``endpoint`` found. Never raises."""
        if not self._saturation:
            return
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None:
                if len(self._endpoints) >= 10_000:  # bounded: endpoints are templates
                    return
                state = self._endpoints[endpoint] = _Endpoint()
            state.window.append(int(new_arcs))
            if new_arcs > 0:
                state.multiplier = MAX_BOOST
                state.quiet = 0
                return
            state.quiet += 1
            if state.quiet >= QUIET_WINDOW:
                state.multiplier = max(1.0 / MAX_BOOST, state.multiplier * DECAY)

    def window(self, endpoint: str) -> list[int]:
        """New-arc counts of the endpoint's last sampled requests (oldest first)."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            return list(state.window) if state is not None else []

    def reset(self) -> None:
        """Forget saturation state and refill the cap (used after fork and for a new release)."""
        with self._lock:
            self._endpoints.clear()
            self._tokens = self._capacity
            self._last = self._clock()
