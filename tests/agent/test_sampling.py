"""Sampling: OpenTelemetry's consistent probability rule, propagation, the cap, saturation."""

from __future__ import annotations

import math
import random
import threading

import pytest
from opentelemetry.trace import TraceState

from runcov.config import Config
from runcov.sampling import (
    DECAY,
    MAX_BOOST,
    QUIET_WINDOW,
    Decision,
    Sampler,
    parse_ot_tracestate,
    randomness,
    threshold,
    would_sample,
)
from runcov.selectors import Rule


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(rate: float = 0.01, *, cap: float = 0.0, saturation: bool = False) -> Sampler:
    return Sampler(Config(max_per_second=cap, saturation=saturation), FakeClock())


def rule(rate: float, mode: str = "exact") -> Rule:
    return Rule("* *", rate, mode)


def trace_ids(n: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(128) for _ in range(n)]


def test_threshold_values() -> None:
    assert threshold(1.0) == 0
    assert threshold(0.0) == 1 << 56
    assert threshold(0.5) == 1 << 55
    assert threshold(0.25) == 3 << 54


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_rate_within_statistical_bounds(rate: float) -> None:
    sampler = make()
    n = 100_000
    picked = sum(sampler.decide(t, None, rule(rate), "e").sampled for t in trace_ids(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(picked - n * rate) < 5 * sigma, (picked, n * rate)


def test_two_samplers_with_same_rate_pick_identical_traces() -> None:
    ids = trace_ids(20_000, seed=11)
    a, b = make(), make()
    picks_a = [t for t in ids if a.decide(t, None, rule(0.1), "x").sampled]
    picks_b = [t for t in ids if b.decide(t, None, rule(0.1), "y").sampled]
    assert picks_a == picks_b
    assert len(picks_a) > 1000


def test_lower_rate_picks_are_a_subset_of_higher_rate_picks() -> None:
    ids = trace_ids(50_000, seed=3)
    sampler = make()
    low = {t for t in ids if sampler.decide(t, None, rule(0.01), "e").sampled}
    mid = {t for t in ids if sampler.decide(t, None, rule(0.1), "e").sampled}
    high = {t for t in ids if sampler.decide(t, None, rule(0.5), "e").sampled}
    assert low and len(low) < len(mid) < len(high)
    assert low <= mid <= high


def test_decision_uses_only_the_low_56_bits() -> None:
    sampler = make()
    r = (1 << 56) - 1  # maximal randomness: sampled at any rate > 0
    assert sampler.decide(r, None, rule(1e-6), "e").sampled
    assert sampler.decide((0xABC << 100) | r, None, rule(1e-6), "e").sampled
    assert not sampler.decide(1 << 56, None, rule(0.5), "e").sampled  # low bits are 0
    assert sampler.decide(1 << 55, None, rule(0.5), "e").sampled  # exactly at threshold


def test_rate_zero_and_one() -> None:
    sampler = make()
    ids = trace_ids(1000)
    assert not any(sampler.decide(t, None, rule(0.0), "e").sampled for t in ids)
    assert all(sampler.decide(t, None, rule(1.0), "e").sampled for t in ids)


def test_no_rule_means_not_sampled() -> None:
    assert make().decide(1, None, None, "e") == Decision(False, "no_match", 0.0)


def test_rv_from_tracestate_replaces_trace_id_randomness() -> None:
    sampler = make()
    low_trace = 0  # randomness 0 from the id: never sampled below rate 1
    assert not sampler.decide(low_trace, None, rule(0.5), "e").sampled
    state = "vendor=1,ot=rv:ffffffffffffff"
    assert sampler.decide(low_trace, state, rule(0.5), "e").sampled
    assert randomness(low_trace, TraceState([("ot", "rv:80000000000000")])) == 1 << 55
    assert not sampler.decide(2**56 - 1, "ot=rv:00000000000001", rule(0.5), "e").sampled


def test_propagated_threshold_is_honoured() -> None:
    sampler = make()
    # th:8 means threshold 0x80000000000000 (50 %), whatever our own rate says.
    up = (1 << 55) + 5
    down = (1 << 55) - 5
    d = sampler.decide(up, "ot=th:8", rule(0.0001), "e")
    assert d == Decision(True, "propagated", 0.5)
    d = sampler.decide(down, "ot=th:8", rule(1.0), "e")
    assert d == Decision(False, "propagated", 0.5)
    state = TraceState([("ot", "th:c;rv:d0000000000000")])
    assert sampler.decide(0, state, rule(0.0), "e").sampled
    assert sampler.decide(0, "ot=th:0", rule(0.0), "e").sampled  # th 0 = keep all


def test_parse_ot_tracestate_ignores_garbage() -> None:
    assert parse_ot_tracestate(None) == (None, None)
    assert parse_ot_tracestate("ot=rv:xyz;th:zz") == (None, None)
    assert parse_ot_tracestate("ot=rv:123") == (None, None)  # rv must be 14 digits
    assert parse_ot_tracestate("a=b,ot=th:4;rv:00000000000010") == (0x10, 0x40000000000000)
    assert not would_sample(0, "ot=garbage", 0.5)
    assert would_sample(0, None, 1.0)


def test_cap_limits_sampled_requests_per_second() -> None:
    clock = FakeClock()
    sampler = Sampler(Config(max_per_second=5, saturation=False), clock)
    decisions = [sampler.decide(t, None, rule(1.0), "e") for t in trace_ids(20)]
    assert sum(d.sampled for d in decisions) == 5
    assert {d.reason for d in decisions if not d.sampled} == {"rate_cap"}
    clock.now += 0.5  # two and a half tokens back
    assert sum(sampler.decide(t, None, rule(1.0), "e").sampled for t in trace_ids(20)) == 2
    clock.now += 100  # the bucket holds at most one second of tokens
    assert sum(sampler.decide(t, None, rule(1.0), "e").sampled for t in trace_ids(20)) == 5


def test_cap_is_shared_across_threads() -> None:
    sampler = Sampler(Config(max_per_second=50, saturation=False), FakeClock())
    count = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal count
        mine = sum(sampler.decide(t, None, rule(1.0), "e").sampled for t in trace_ids(500))
        with lock:
            count += mine

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count == 50


def test_unsampled_requests_do_not_spend_tokens() -> None:
    sampler = Sampler(Config(max_per_second=2, saturation=False), FakeClock())
    assert not any(sampler.decide(t, None, rule(0.0), "e").sampled for t in trace_ids(100))
    assert sum(sampler.decide(t, None, rule(1.0), "e").sampled for t in trace_ids(10)) == 2


def test_saturation_boosts_while_new_arcs_and_decays_after() -> None:
    sampler = make(saturation=True)
    base = 0.01
    assert sampler.effective_rate("GET /a", base) == pytest.approx(base * MAX_BOOST)
    for _ in range(50):
        sampler.observe("GET /a", 3)
    assert sampler.effective_rate("GET /a", base) == pytest.approx(0.1)
    # Quiet requests inside the window keep the boost.
    for _ in range(QUIET_WINDOW - 1):
        sampler.observe("GET /a", 0)
    assert sampler.effective_rate("GET /a", base) == pytest.approx(0.1)
    assert sampler.window("GET /a")[-1] == 0
    sampler.observe("GET /a", 0)  # the window is now quiet: decay starts
    assert sampler.effective_rate("GET /a", base) == pytest.approx(0.1 * DECAY)
    rates = []
    for _ in range(100):
        sampler.observe("GET /a", 0)
        rates.append(sampler.effective_rate("GET /a", base))
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(base / MAX_BOOST)  # the floor
    # A new arc brings the boost back at once.
    sampler.observe("GET /a", 1)
    assert sampler.effective_rate("GET /a", base) == pytest.approx(0.1)
    # Other endpoints are independent.
    assert sampler.effective_rate("GET /b", base) == pytest.approx(0.1)


def test_saturated_rate_changes_what_is_sampled() -> None:
    sampler = make(saturation=True)
    ids = trace_ids(50_000, seed=5)
    boosted = sum(sampler.decide(t, None, rule(0.01), "GET /a").sampled for t in ids)
    for _ in range(QUIET_WINDOW + 100):
        sampler.observe("GET /a", 0)
    decayed = [sampler.decide(t, None, rule(0.01), "GET /a") for t in ids]
    assert decayed[0].rate == pytest.approx(0.001)
    assert 3000 < boosted < 7000  # ~10 %
    assert 10 < sum(d.sampled for d in decayed) < 120  # ~0.1 %


def test_boost_never_exceeds_one_and_floor_never_exceeds_rate() -> None:
    sampler = make(saturation=True)
    assert sampler.effective_rate("e", 0.5) == 1.0
    assert sampler.effective_rate("e", 0.0) == 0.0
    for _ in range(200):
        sampler.observe("e", 0)
    assert sampler.effective_rate("e", 0.00005) == pytest.approx(0.00005)
    assert sampler.effective_rate("e", 0.0005) == pytest.approx(0.0001)


def test_without_saturation_rates_are_as_configured() -> None:
    sampler = make(saturation=False)
    sampler.observe("e", 10)
    assert sampler.effective_rate("e", 0.01) == 0.01
    assert sampler.window("e") == []


def test_reset_forgets_state() -> None:
    sampler = make(saturation=True)
    for _ in range(100):
        sampler.observe("e", 0)
    assert sampler.effective_rate("e", 0.01) < 0.01
    sampler.reset()
    assert sampler.effective_rate("e", 0.01) == pytest.approx(0.1)


def test_decide_never_raises() -> None:
    sampler = make()
    assert sampler.decide("not-an-int", None, rule(0.5), "e") == Decision(  # type: ignore[arg-type]
        False, "internal_error", 0.0
    )
