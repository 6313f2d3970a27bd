"""The agent's own per-request cost on the Flask shop, measured A/B inside one process.

Service benchmarks (``bench_service.py``) compare separate server processes, so their figures
carry the noise of the machine between runs (a few per cent on a shared 2-CPU machine), as
much as the agent costs at low rates. This benchmark removes most of it: one process serves the
Flask shop (OpenTelemetry Flask instrumentation, runcov started) through Flask's test client,
from ``--threads`` threads, and switches between configurations every block of requests:

* ``none``       runcov's span processor detached and its sys.monitoring events off
* ``agent``      everything on, as started (the rate given by ``--rate``)
* ``processor``  the span processor only (sys.monitoring events off)
* ``monitoring`` the sys.monitoring events only (span processor detached)
* ``zero``       everything on, but no request sampled (the agent's 0 % path, in a process
                 whose agent samples at ``--rate``)

Blocks alternate (A B C D, D C B A, ...), each timed by process CPU time (all threads, so the
agent's export thread counts), and the table shows the median per-request CPU of each
configuration and its ratio to ``none``. Since every configuration runs in the same process
with the same heap, imports and threads, the ratio isolates what the agent does per request.
Coverage goes to ``--endpoint`` (a running collector) or, by default, nowhere (export fails
fast, which costs less than a real export).

It also reports the latency of sampled requests next to unsampled ones in the ``agent``
configuration (wall time, same process, interleaved).

    python benchmarks/bench_agent_ab.py --rate 0 --threads 4
    python benchmarks/bench_agent_ab.py --rate 0.01 --endpoint http://127.0.0.1:4318
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.0, help="sampling rate of the agent")
    parser.add_argument("--threads", type=int, default=4, help="threads sending requests")
    parser.add_argument("--blocks", type=int, default=12, help="timed blocks per configuration")
    parser.add_argument("--block-size", type=int, default=1000, help="requests per block")
    parser.add_argument("--endpoint", default="http://127.0.0.1:9",
                        help="OTLP/HTTP endpoint for the agent (default: nothing listens)")
    parser.add_argument("--configs", default="none,agent,processor,monitoring")
    args = parser.parse_args()

    from inprocess import nominal_agent_env, start_shop
    from traffic import next_request

    import runcov

    nominal_agent_env(args.endpoint, "bench-agent-ab")
    shop = start_shop(args.rate)
    agent, app, core = shop.agent, shop.app, shop.agent.core
    #: configuration -> (span processor attached, global events on)
    configs = {
        "none": (False, False),
        "agent": (True, True),
        "processor": (True, False),
        "monitoring": (False, True),
        "zero": (True, True),
    }
    chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
    if any(c not in configs for c in chosen) or not chosen:
        parser.error(f"configurations are {sorted(configs)}")

    # Which requests the agent measured, for the latency comparison.
    measured = shop.watch_sampling()
    rng = random.Random(1)
    orders: list[str] = []
    requests = [next_request(rng, orders) for _ in range(args.block_size)]
    latencies: dict[bool, list[float]] = {True: [], False: []}

    def worker(part: list[Any], record: bool) -> None:
        client = app.test_client()
        for req in part:
            measured.flag = False
            t0 = time.perf_counter()
            client.open(req.path, method=req.method, json=req.body)
            if record:
                latencies[bool(measured.flag)].append(time.perf_counter() - t0)

    def run(block: list[Any], record: bool = False) -> None:
        n = args.threads
        threads = [threading.Thread(target=worker, args=(block[i::n], record)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    threshold = agent._span_threshold

    def switch(name: str) -> None:
        shop.attach(*configs[name])
        agent._span_threshold = (1 << 56) if name == "zero" else threshold

    run(requests)  # warm-up
    results: dict[str, list[float]] = {c: [] for c in chosen}
    for rep in range(args.blocks):
        for name in chosen if rep % 2 == 0 else chosen[::-1]:
            switch(name)
            run(requests[:100])  # settle (code re-instrumented after the switch)
            t0 = time.process_time()
            run(requests, record=name == "agent")
            results[name].append((time.process_time() - t0) / len(requests) * 1e6)
    switch("agent")
    runcov.stop()

    base = statistics.median(results[chosen[0]])
    print(f"Python {sys.version.split()[0]}, core {core.name}, rate {args.rate}, "
          f"{args.threads} threads, {args.blocks} blocks of {args.block_size} requests")
    print()
    print(f"| configuration | CPU µs/request (median) | vs {chosen[0]} |")
    print("|---|---:|---:|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.3f} |")
    if latencies[True]:
        sampled = statistics.median(latencies[True]) * 1e6
        unsampled = statistics.median(latencies[False]) * 1e6
        print()
        print(f"agent: {len(latencies[True])} sampled requests, median latency {sampled:.0f} µs; "
              f"{len(latencies[False])} unsampled, {unsampled:.0f} µs "
              f"(sampled / unsampled {sampled / unsampled:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
