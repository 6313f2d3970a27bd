"""Where the agent's per-request cost falls: on sampled requests, the requests right after
them, or every request.

One process serves the Flask shop (OpenTelemetry Flask instrumentation, runcov started at
``--rate``) through Flask's test client on one thread, and alternates blocks of the same
``--block-size`` requests between two configurations:

* ``none``   runcov's span processor detached and the tool's global events off
* ``agent``  everything on, as started

Each request's thread CPU (``time.thread_time_ns``: the export worker's thread is not
counted) is compared with the same request (same index, same work) in the ``none`` blocks,
the median over those blocks. The agent blocks' requests are then grouped by their distance
from the last sampled request: the sampled ones, the one right after, the next four, and the
rest. Per round (a ``none`` and an ``agent`` block), the ratio of the blocks' mean CPU per
request is what the agent costs a request; the table gives its median over the rounds with a
95 % confidence interval (``stats.py``), and the groups say where it goes.

    python benchmarks/bench_agent_spread.py --rate 0.01 --endpoint http://127.0.0.1:4318
    python benchmarks/bench_agent_spread.py --rate 0      # the path every request takes

``--endpoint`` should be a running collector (``runcov-collector serve``); by default the
export goes nowhere (and fails fast).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from stats import median_interval

GROUPS = ("sampled", "next", "next 2-5", "the rest")


def _group(distance: int) -> str:
    if distance == 0:
        return "sampled"
    if distance == 1:
        return "next"
    if distance <= 5:
        return "next 2-5"
    return "the rest"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.01, help="sampling rate of the agent")
    parser.add_argument("--blocks", type=int, default=12, help="blocks per configuration")
    parser.add_argument("--block-size", type=int, default=2000, help="requests per block")
    parser.add_argument("--endpoint", default="http://127.0.0.1:9",
                        help="OTLP/HTTP endpoint for the agent (default: nothing listens)")
    args = parser.parse_args()

    from inprocess import nominal_agent_env, start_shop
    from traffic import next_request

    import runcov

    nominal_agent_env(args.endpoint, "bench-agent-spread")
    shop = start_shop(args.rate)
    agent, app = shop.agent, shop.app

    sampled = shop.watch_sampling()
    rng = random.Random(1)
    orders: list[str] = []
    requests = [next_request(rng, orders) for _ in range(args.block_size)]
    client = app.test_client()
    clock = time.thread_time_ns

    def run() -> list[tuple[int, bool]]:
        out = []
        for req in requests:
            sampled.flag = False
            t0 = clock()
            client.open(req.path, method=req.method, json=req.body)
            out.append((clock() - t0, sampled.flag))
        return out

    def switch(name: str) -> None:
        shop.attach(processor=name != "none", events=name != "none")

    run()  # warm-up
    none_times: list[list[int]] = [[] for _ in requests]
    agent_blocks: list[list[tuple[int, bool]]] = []
    ratios: list[float] = []
    for rep in range(args.blocks):
        means = {}
        for name in ("none", "agent") if rep % 2 == 0 else ("agent", "none"):
            switch(name)
            rows = run()
            means[name] = statistics.fmean(spent for spent, _ in rows)
            if name == "none":
                for i, (spent, _) in enumerate(rows):
                    none_times[i].append(spent)
            else:
                agent_blocks.append(rows)
        ratios.append(means["agent"] / means["none"])
    switch("agent")
    runcov.stop()

    base = [statistics.median(v) for v in none_times]
    none_mean = statistics.fmean(t for v in none_times for t in v)
    agent_mean = statistics.fmean(t for rows in agent_blocks for t, _ in rows)
    extra: dict[str, list[float]] = {g: [] for g in GROUPS}
    for rows in agent_blocks:
        last = -(10**9)
        for i, (spent, was_sampled) in enumerate(rows):
            if was_sampled:
                last = i
            extra[_group(i - last)].append(spent - base[i])
    total = sum(len(v) for v in extra.values())

    print(f"Python {sys.version.split()[0]}, core {agent.core.name}, rate {args.rate}, "
          f"{args.blocks} blocks of {args.block_size} requests per configuration, one thread")
    print()
    low, high = median_interval(ratios)
    print(f"agent against none, median of the rounds' ratios: {statistics.median(ratios):.4f}x "
          f"(95 % CI {low:.4f}-{high:.4f}); mean thread CPU per request over all blocks: none "
          f"{none_mean / 1e3:.2f} µs, agent {agent_mean / 1e3:.2f} µs")
    print()
    print("| requests | count | extra per request, mean | median | share of the requests |")
    print("|---|---:|---:|---:|---:|")
    for name in GROUPS:
        values = extra[name]
        if not values:
            continue
        print(f"| {name} | {len(values)} | {statistics.fmean(values) / 1e3:+.2f} µs | "
              f"{statistics.median(values) / 1e3:+.2f} µs | {len(values) / total:.3f} |")
    print()
    print("(extra: against the same request's median over the none blocks; the mean carries "
          "the none blocks' outliers that the median base leaves out, the medians do not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
