"""The agent's cost on a real service, A/B inside one server process, over HTTP.

``bench_service.py`` starts a fresh server process per configuration and repetition, so every
comparison carries the difference between two processes (memory layout, CPU placement, what
else the machine did meanwhile): its ``none-again`` row shows a few per cent of noise on a
shared 2-CPU machine, as much as the agent costs at 1 %. This benchmark serves the Flask shop
(OpenTelemetry Flask instrumentation, waitress with 4 threads, runcov started at ``--rate``,
exporting to a running collector) from ONE process pinned to its own CPU, and switches that
process between configurations every block, on command from the benchmark:

* ``none``        runcov's span processor detached and its sys.monitoring events off (what is
                  left of runcov: a wrapper on ``ThreadPoolExecutor.submit``, idle threads)
* ``none-again``  the same once more: its ratio to ``none`` is the noise of the method
* ``agent``       runcov as started, sampling ``--rate`` of the requests

On 3.11 (the settrace core with its probes) ``none`` leaves the probes the agent put into the
code in place, as jumps: the A/B measures what runs beyond them (``bench_service.py`` compares
with servers that run no runcov at all).

The agent runs without its rate cap and saturation boost, so that it samples ``--rate`` of the
requests; ``--defaults`` keeps them as a service gets them out of the box (at most 10 sampled
requests per second, a rate boosted up to 10x while an endpoint still finds new arcs).

With ``--mode census`` the agent records first hits of the sampled traffic. A census line's
local event stays set until its first hit in the epoch (then it is disabled), and switching the
tool's global events off leaves local events alone, so ``none`` differs from ``agent`` by the
census scopes and the span processor: the census's steady state.

``--split`` adds ``processor`` (the span processor only, sys.monitoring events off) and
``monitoring`` (the events only, processor detached); ``--split-sampled`` adds ``zero`` (the
agent sampling nothing: its 0 % path), ``no-arming`` (sampled requests decided and closed, but
no events armed, so nothing recorded or exported) and ``no-export`` (measured, never
exported), to tell which part costs what.

``benchmarks/loadgen.py`` (4 keep-alive connections, closed loop, the shop's traffic mix) drives
each block from the other CPU; each round runs every configuration once, in a random order. Per
block: throughput, p50/p99 latency and the server's CPU time per request. The table shows
medians over blocks and the median of per-round ratios to ``none`` (same round, blocks close in
time).

    python benchmarks/bench_service_ab.py --rate 0.01              # ~6 minutes
    python benchmarks/bench_service_ab.py --rate 0.01 --rounds 2 --duration 1  # smoke run
    python benchmarks/bench_service_ab.py --rate 1 --mode census   # census of all traffic
    python benchmarks/bench_service_ab.py --app fastapi            # the FastAPI shop, uvicorn
    python benchmarks/bench_service_ab.py --defaults   # with the default rate cap and saturation
    python benchmarks/bench_service_ab.py --rounds 30 --processes 3   # three server processes
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_service import EXAMPLES, Bench, free_port, stop, wait_ready  # noqa: E402
from stats import median_interval  # noqa: E402

CONFIGS = ("none", "none-again", "agent")
#: What each configuration switches on: ``processor`` and ``monitoring`` split the agent in two.
SWITCHES = ("none", "agent", "processor", "monitoring", "no-arming", "no-export", "zero")


# -- the server -------------------------------------------------------------------------------


def serve(port: int, rate: float, app_name: str = "flask") -> int:
    """Serve the Flask shop (waitress, 4 threads) or the FastAPI shop (uvicorn) with runcov at
    ``rate``; switch configurations on stdin commands.

    Commands, one per line: a configuration name (switch) or ``cpu``, each answered with one
    line ``ok <process CPU seconds>``; ``threads`` answers ``ok <native id>=<name>,...``.
    """
    from inprocess import start_shop

    shop = start_shop(rate, app_name)
    agent, app = shop.agent, shop.app

    core: Any = agent.core
    activate = getattr(core, "_activate", None)  # (the sys.monitoring core's)
    submit = agent.exporter.submit
    threshold = agent._span_threshold
    from runcov.tracing import _scope

    hooks = list(_scope._hooks)

    def switch(name: str) -> None:
        agent_on = name in ("agent", "no-arming", "no-export", "zero")
        shop.attach(agent_on or name == "processor", agent_on or name == "monitoring")
        # Diagnostics: sampled requests are decided and closed, but nothing is armed (so they
        # record nothing and nothing is exported; neither when the scope opens nor at an
        # asyncio task's steps), or they are measured but never exported; or no request is
        # sampled (the agent at 0 %, in the same process).
        if activate is not None:
            core._activate = (lambda scope: False) if name == "no-arming" else activate
        _scope._hooks[:] = (
            [(lambda scope: False, hooks[0][1])] if name == "no-arming" and hooks else hooks
        )
        agent.exporter.submit = (lambda record: True) if name == "no-export" else submit
        agent._span_threshold = (1 << 56) if name == "zero" else threshold

    import gc

    collected = [0, 0, 0]
    gc_seconds = [0.0, 0.0, 0.0]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            collected[info["generation"]] += 1
            gc_seconds[info["generation"]] += time.perf_counter() - gc_started[0]

    gc.callbacks.append(on_gc)

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command in SWITCHES:
                switch(command)
            elif command == "gc":  # diagnostics: collections and their seconds, by generation
                print("ok " + ",".join(map(str, collected + gc_seconds)), flush=True)
                continue
            elif command == "threads":  # diagnostics: which OS thread is which
                names = {t.native_id: t.name for t in threading.enumerate()}
                print("ok " + ",".join(f"{k}={v}" for k, v in names.items()), flush=True)
                continue
            print(f"ok {time.process_time():.6f}", flush=True)
        os._exit(0)

    threading.Thread(target=control, daemon=True).start()
    if app_name == "fastapi":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        import waitress

        waitress.create_server(app, host="127.0.0.1", port=port, threads=4).run()
    return 0


# -- the benchmark ----------------------------------------------------------------------------


class Server:
    """The A/B server process and its control channel."""

    def __init__(self, bench: Bench, rate: float, workdir: Path, mode: str = "exact",
                 app: str = "flask", defaults: bool = False) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RUNCOV_", "OTEL_", "COVERAGE_"))}
        env.update({
            "PYTHONDONTWRITEBYTECODE": "1",
            "OTEL_SERVICE_NAME": "bench-ab",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.version=ab-{rate}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": bench.collector_url,
            "RUNCOV_MODE": mode,
        })
        if not defaults:
            env.update({"RUNCOV_MAX_PER_SECOND": "0", "RUNCOV_SATURATION": "0"})
        log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed right after
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(self.port),
             "--rate", str(rate), "--app", app],
            cwd=EXAMPLES, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, preexec_fn=Bench._pin_to(bench.server_cpus))
        log.close()
        wait_ready(self.proc, f"http://127.0.0.1:{self.port}/health")  # type: ignore[arg-type]

    def command(self, name: str) -> float:
        """Send a command; return the server's process CPU seconds when it answered."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 2 or answer[0] != "ok":
            raise RuntimeError(f"the server answered {answer!r} to {name!r}")
        return float(answer[1])

    def gc(self) -> list[float]:
        """The server's cyclic collections so far by generation, then their seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("gc\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 2 or answer[0] != "ok":
            raise RuntimeError(f"the server answered {answer!r} to 'gc'")
        return [float(x) for x in answer[1].split(",")]

    def close(self) -> None:
        stop(self.proc)  # type: ignore[arg-type]


def block(server: Server, config: str, settle: float, duration: float,
          threads: int) -> dict[str, Any]:
    """Switch the server to ``config``, let it settle under load, measure one block."""
    import loadgen

    server.command("none" if config == "none-again" else config)
    # Settling load: code re-instrumented by the switch re-specializes, caches refill.
    loadgen.run("127.0.0.1", server.port, threads, 0.0, settle)
    gc0 = server.gc()
    cpu0 = server.command("cpu")
    result = loadgen.run("127.0.0.1", server.port, threads, 0.0, duration)
    cpu1 = server.command("cpu")
    gc1 = server.gc()
    requests = max(1, result["all_requests"])
    result["cpu_us"] = (cpu1 - cpu0) / requests * 1e6
    # The cyclic collector's share: full collections per 1,000 requests, and all its time.
    result["gc2_per_1k"] = (gc1[2] - gc0[2]) / requests * 1000
    result["gc_us"] = sum(gc1[3:]) - sum(gc0[3:])
    result["gc_us"] = result["gc_us"] / requests * 1e6
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark (or, with ``--serve``, the server side of it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=0.01, help="the agent's sampling rate")
    parser.add_argument("--mode", choices=("exact", "census"), default="exact",
                        help="the agent's mode (census: first hits of all sampled traffic)")
    parser.add_argument("--rounds", type=int, default=20, help="blocks per configuration")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per block")
    parser.add_argument("--settle", type=float, default=1.5, help="load before each block")
    parser.add_argument("--threads", type=int, default=4, help="client connections")
    parser.add_argument("--split", action="store_true",
                        help="also measure the span processor and the monitoring events alone")
    parser.add_argument("--split-sampled", action="store_true",
                        help="also measure the agent without arming, and without export")
    parser.add_argument("--app", choices=("flask", "fastapi"), default="flask",
                        help="the Flask shop under waitress, or the FastAPI shop under uvicorn")
    parser.add_argument("--defaults", action="store_true",
                        help="keep the agent's default rate cap (10/s) and saturation boost "
                             "(the rate then is what they make of --rate, as out of the box)")
    parser.add_argument("--processes", type=int, default=1,
                        help="spread the rounds over this many server processes, one after "
                             "another (each its own memory layout and trace ids; a single "
                             "process's figure moves by a point or two from one to the next)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.port, args.rate, args.app)

    workdir = Path(tempfile.mkdtemp(prefix="runcov-bench-ab-"))
    bench = Bench(args.app, workdir, 0.0, args.duration, args.threads, pin=True)
    if bench.other_cpus:
        os.sched_setaffinity(0, bench.other_cpus)  # the load generator runs here
    configs = CONFIGS + (("processor", "monitoring") if args.split else ()) + (
        ("zero", "no-arming", "no-export") if args.split_sampled else ())
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    #: the server process of each round (``--processes``)
    process_of: list[int] = []
    server: Optional[Server] = None
    processes = max(1, min(args.processes, args.rounds))
    try:
        bench.start_collector()
        order = random.Random(1)
        for rnd in range(args.rounds):
            process = rnd * processes // args.rounds
            if server is None or process != process_of[-1]:
                if server is not None:
                    server.close()
                server = Server(bench, args.rate, workdir, args.mode, args.app, args.defaults)
                for config in ("agent", "none"):  # warm-up: imports, analysis, specialization
                    block(server, config, args.settle, args.duration / 2, args.threads)
            process_of.append(process)
            # A fresh random order each round: no configuration keeps the same neighbours or
            # position (the block after a switch of the monitoring events settles longer).
            for config in order.sample(configs, len(configs)):
                result = block(server, config, args.settle, args.duration, args.threads)
                runs[config].append(result)
                print(f"round {rnd + 1}/{args.rounds} {config:<10} "
                      f"{result['throughput']:7.0f} req/s  cpu {result['cpu_us']:5.0f} µs/req  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                      f"gc {result['gc_us']:5.1f} µs/req ({result['gc2_per_1k']:.2f} full/1k)  "
                      f"errors {result['errors']}", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.close()
        if bench.collector is not None:
            stop(bench.collector)

    base = runs["none"]
    shop = "Flask shop (waitress, 4 threads)" if args.app == "flask" else "FastAPI shop (uvicorn)"
    print(f"{shop}, one server process pinned to a CPU of its own, "
          f"runcov at {args.rate:g} ({args.mode}"
          f"{', default cap and saturation' if args.defaults else ''}); "
          f"Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.rounds} "
          f"rounds of {args.duration} s blocks, {args.threads} client connections")
    print()
    print("| configuration | req/s | vs none | p50 ms | vs none | p99 ms | vs none "
          "| server CPU µs/req | vs none | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    #: per configuration and measure: the per-round ratios to ``none``
    per_round: dict[str, dict[str, list[float]]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for config, results in runs.items():
        per_round[config] = {key: [x[key] / b[key] for x, b in zip(results, base)]
                             for key in ("throughput", "p50_ms", "p99_ms", "cpu_us")}
        r = {key: statistics.median(values) for key, values in per_round[config].items()}
        ratios[config] = r
        med = {key: statistics.median(x[key] for x in results)
               for key in ("throughput", "p50_ms", "p99_ms", "cpu_us")}
        print(f"| {config} | {med['throughput']:.0f} | {r['throughput']:.3f} "
              f"| {med['p50_ms']:.2f} | {r['p50_ms']:.3f} | {med['p99_ms']:.2f} "
              f"| {r['p99_ms']:.3f} | {med['cpu_us']:.0f} | {r['cpu_us']:.3f} "
              f"| {sum(x['errors'] for x in results)} |")
    agent = ratios["agent"]
    noise = ratios["none-again"]

    def interval(config: str, key: str, invert: bool = False) -> str:
        low, high = median_interval(per_round[config][key])
        if invert:
            low, high = 1 / high, 1 / low
        return f"{low:.3f}-{high:.3f}"

    print(f"\nagent at {args.rate:g}: throughput cost {1 / agent['throughput']:.3f}x, p99 "
          f"{agent['p99_ms']:.3f}x, CPU {agent['cpu_us']:.3f}x (noise of the method, "
          f"none-again: throughput {1 / noise['throughput']:.3f}x, p99 {noise['p99_ms']:.3f}x, "
          f"CPU {noise['cpu_us']:.3f}x)")
    print("95 % confidence intervals of the median per-round ratios (order statistics): "
          f"agent throughput cost {interval('agent', 'throughput', True)}, "
          f"p99 {interval('agent', 'p99_ms')}, CPU {interval('agent', 'cpu_us')}; "
          f"none-again throughput {interval('none-again', 'throughput', True)}, "
          f"p99 {interval('none-again', 'p99_ms')}, CPU {interval('none-again', 'cpu_us')}")
    print("cyclic collector, medians over blocks: "
          + "; ".join(f"{config} {statistics.median(x['gc_us'] for x in results):.1f} µs/req, "
                      f"{statistics.median(x['gc2_per_1k'] for x in results):.2f} full "
                      "collections per 1,000 requests" for config, results in runs.items()))
    if processes > 1:
        costs = []
        for process in range(processes):
            rounds = [i for i, p in enumerate(process_of) if p == process]
            costs.append(1 / statistics.median(per_round["agent"]["throughput"][i] for i in rounds))
        print(f"throughput cost by server process ({processes} processes, "
              f"{args.rounds // processes}-{-(-args.rounds // processes)} rounds each): "
              + ", ".join(f"{c:.3f}x" for c in costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
