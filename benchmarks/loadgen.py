"""A closed-loop HTTP load generator: N keep-alive client threads sending the shop traffic mix.

Each thread sends its next request as soon as the previous answer arrived (closed loop), over
one persistent ``http.client`` connection. After a warm-up, every request's latency is recorded
for ``--duration`` seconds; the result is one JSON object on stdout:

    {"requests": ..., "seconds": ..., "throughput": ..., "p50_ms": ..., "p90_ms": ...,
     "p99_ms": ..., "errors": ..., "all_requests": ..., "statuses": {...}}

``errors`` counts connection failures and 5xx answers (the mix's 4xx answers are intended);
``all_requests`` counts every request sent, warm-up included.
The request mix is ``examples/traffic.py``'s, seeded per thread, so every run sends the same
sequence.

    python benchmarks/loadgen.py --port 8000 --threads 4 --warmup 2 --duration 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from typing import Any, Optional, Sequence

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Worker(threading.Thread):
    """One client connection in a closed loop."""

    def __init__(self, host: str, port: int, seed: int, measure_from: float,
                 stop_at: float) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.port = port
        self.seed = seed
        self.measure_from = measure_from
        self.stop_at = stop_at
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.sent = 0
        self.first: Optional[float] = None
        self.last: Optional[float] = None

    def run(self) -> None:
        """Send requests until ``stop_at``; record those that started after ``measure_from``."""
        from traffic import Client, next_request

        rng = random.Random(self.seed)
        client = Client(self.host, self.port)
        order_ids: list[str] = []
        perf = time.perf_counter
        try:
            while True:
                started = perf()
                if started >= self.stop_at:
                    break
                req = next_request(rng, order_ids)
                try:
                    status, body = client.send(req)
                except OSError:
                    status, body = 0, b""
                ended = perf()
                self.sent += 1
                if status == 201 and len(order_ids) < 200:
                    order_ids.append(json.loads(body)["order_id"])
                if started < self.measure_from:
                    continue
                if self.first is None:
                    self.first = started
                self.last = ended
                self.latencies.append(ended - started)
                self.statuses[status] += 1
                if status == 0 or status >= 500:
                    self.errors += 1
        finally:
            client.close()


def run(host: str, port: int, threads: int, warmup: float, duration: float,
        seed: int = 1) -> dict[str, Any]:
    """Drive the server and summarise the measured window."""
    sys.path.insert(0, EXAMPLES)
    now = time.perf_counter()
    measure_from = now + warmup
    stop_at = measure_from + duration
    workers = [Worker(host, port, seed * 100 + i, measure_from, stop_at) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies = sorted(x for w in workers for x in w.latencies)
    firsts = [w.first for w in workers if w.first is not None]
    lasts = [w.last for w in workers if w.last is not None]
    seconds = (max(lasts) - min(firsts)) if firsts else 0.0
    statuses: Counter[int] = Counter()
    for w in workers:
        statuses.update(w.statuses)
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 4),
        "throughput": len(latencies) / seconds if seconds > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p90_ms": percentile(latencies, 0.90) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": sum(w.errors for w in workers),
        "all_requests": sum(w.sent for w in workers),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; prints the JSON summary."""
    parser = argparse.ArgumentParser(description="Closed-loop HTTP load on the example shop.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4, help="concurrent connections")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.host, args.port, args.threads, args.warmup, args.duration, args.seed)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
