"""What the agent's own code costs a sampled request, phase by phase, cold and warm.

One process serves the Flask shop (OpenTelemetry Flask instrumentation, runcov started at
``--rate``) through Flask's test client on one thread, and times, with the thread's CPU clock,
each call of the agent's methods on a sampled request's path: ``Agent.begin`` (the decision and
the scope's opening) with the core's ``open_scope`` and its arm (``_activate``, whose toggling
is ``_apply``), and ``Agent.finish`` (the close, the disarm in ``_deactivate``, the hand-off to
the exporter). Only calls that reach Python are timed: ``begin`` is called by the span gate for
requests it could not turn away in C.

At a low rate (1 %) these run once every hundred requests or so, with the interpreter's caches
full of the application; at ``--rate 1`` every request runs them (warm, and the code stays armed
between requests, so there is no toggle). The difference is what a sampled request pays for
being rare.

    python benchmarks/bench_agent_phases.py                 # 1 % and 100 %, 20,000 requests
    python benchmarks/bench_agent_phases.py --rates 0.01 --requests 5000   # a smoke run

The wrappers add ~0.5 µs per timed call (each nested one counts in its callers).
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

#: (label, where the method lives, its name): outermost first.
PHASES = (
    ("begin", "agent", "begin"),
    ("  open_scope", "core", "open_scope"),
    ("    _activate (arm)", "core", "_activate"),
    ("finish", "agent", "finish"),
    ("  _deactivate (disarm)", "core", "_deactivate"),
    ("_apply (toggles, arm and disarm)", "core", "_apply"),
)


def measure(rate: float, requests: int) -> dict[str, list[int]]:
    """Serve ``requests`` shop requests at ``rate`` after a warm-up; the thread CPU (ns) of
    each timed call, by phase."""
    from inprocess import nominal_agent_env, start_shop
    from traffic import next_request

    import runcov

    nominal_agent_env("http://127.0.0.1:9", "bench-agent-phases")  # nothing listens there
    shop = start_shop(rate)
    owners = {"agent": shop.agent, "core": shop.agent.core}
    clock = time.thread_time_ns
    spent: dict[str, list[int]] = collections.defaultdict(list)

    def timed(label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return real(*args, **kwargs)
            finally:
                spent[label].append(clock() - t0)

        return call

    rng = random.Random(1)
    orders: list[str] = []
    mix = [next_request(rng, orders) for _ in range(requests)]
    client = shop.app.test_client()
    for req in mix[: min(2000, requests)]:  # warm-up: imports, analysis, specialization
        client.open(req.path, method=req.method, json=req.body)
    for label, owner, name in PHASES:
        if hasattr(owners[owner], name):
            setattr(owners[owner], name, timed(label, getattr(owners[owner], name)))
    for req in mix:
        client.open(req.path, method=req.method, json=req.body)
    runcov.stop()
    return dict(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0.01,1", help="comma-separated sampling rates")
    parser.add_argument("--requests", type=int, default=20000, help="timed requests per rate")
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)  # one rate, in a child
    args = parser.parse_args()
    if args.rate is not None:
        spent = measure(args.rate, args.requests)
        for index, (label, _owner, _name) in enumerate(PHASES):
            print(index, *spent.get(label, []))
        return 0

    print(f"Python {sys.version.split()[0]}, Flask shop, one thread, {args.requests} requests "
          "per rate after 2,000 of warm-up; thread CPU per call")
    print()
    print("| phase | rate | calls | mean µs | median µs |")
    print("|---|---:|---:|---:|---:|")
    for rate in (float(r) for r in args.rates.split(",")):
        # A process per rate: the agent starts once per process.
        out = subprocess.run(
            [sys.executable, __file__, "--rate", str(rate), "--requests", str(args.requests)],
            capture_output=True, text=True, check=True,
        ).stdout
        for line in out.splitlines():
            index, *numbers = line.split()
            label = PHASES[int(index)][0].strip()
            values = [int(n) for n in numbers]
            if values:
                print(f"| {label} | {rate:g} | {len(values)} | "
                      f"{statistics.fmean(values) / 1e3:.1f} | "
                      f"{statistics.median(values) / 1e3:.1f} |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
