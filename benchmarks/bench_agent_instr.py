"""The agent's cost on the example shop in CPU instructions per request, counted by Valgrind.

Timed benchmarks on a shared 2-CPU machine move by a point or two between runs, as much as the
agent costs at 1 %. An instruction count does not move: the same process doing the same work
executes the same instructions, whatever else the machine does. This benchmark runs the Flask
shop (OpenTelemetry Flask instrumentation, runcov started) through Flask's test client, in one
thread, or with ``--app fastapi`` the FastAPI shop (OpenTelemetry FastAPI instrumentation), its
ASGI app called directly on one asyncio loop, one request at a time, under
``valgrind --tool=cachegrind``, and reports the instructions each request costs:

* ``absent``      (``--absent``) the shop without runcov: not imported, not started
* ``none``        runcov started, its span processor detached and its sys.monitoring events off
* ``0%``          runcov as started with ``sample_rate=0``: the path every request takes
* ``1%`` ...      runcov at 1 %, 10 %, 100 % (``--rates``)
* ``processor``, ``monitoring`` (``--split``)  the 0 % path's two parts alone: the span processor
                  (sys.monitoring events off), the sys.monitoring events (processor detached)
* ``zero``        (``--zero``) runcov started at the first of ``--rates``, warmed up sampling at
                  that rate, then sampling nothing while counted: the 0 % path in a process
                  whose agent has sampled (to compare with ``0%``, a process that never did)

With ``--cache-sim`` cachegrind also simulates the caches (the host's I1, D1 and last-level
geometry) and the table adds first-level and last-level misses per request: where a sampled
request's time goes beyond its instructions (cold caches) shows there.

With ``--threads`` the runs are counted by callgrind with a count per thread instead, and the
table adds what the request thread executed (per request, and per sampled request beyond 0 %):
the figure a change to the request path moves, without the export worker, whose rounds under
Valgrind (it wakes by the clock, and Valgrind runs ~50x slower) hold one or two records each
instead of dozens natively, so its share of a sampled request is far larger than natively.

"Per sampled request" divides by the requests actually sampled among the measured ones (the
child reports them), not by the nominal rate: with a fixed sequence of trace ids the count in a
window of a few thousand requests differs from rate x requests by a few.

Each configuration runs twice, with ``--warmup`` requests and then ``--small`` or ``--large``
measured ones; the difference of the two counts divided by the difference in requests is the
cost of one request in the steady state (start-up, imports, warm-up and shutdown cancel out).
Everything the process does counts, the export thread included: at the end of each run the agent
flushes, so the records of the measured requests are processed and sent within the count.

The inputs are fixed: ``PYTHONHASHSEED=0``, the request sequence seeded, the shop's trace ids
drawn from a seeded ``random.Random`` of their own (so the same requests are sampled in every
run, whatever else draws from the global one, and when). The garbage collector is off
while counting (after a full collection; ``--gc`` keeps it on), since where its full collections
fall would move a count by up to 1 %. What runcov decides by the clock is pinned, since Valgrind
runs the program ~50x slower:

* the toggle cost the linger budget is scaled by is set, after each arm or disarm, to the value
  measured natively on the same workload first: the watch's toggles and the median time of
  the promotions a disarm throws away (``--toggle-cost`` to give one). The linger's
  50 ms deadline is lifted: natively its budget of events runs out first at these rates;
* coverage is sent once, at the final flush (``OTEL_BSP_SCHEDULE_DELAY`` of an hour), and metrics
  are not exported during the run (``RUNCOV_METRICS_INTERVAL`` of an hour);
* coverage goes to a real collector (started natively on loopback, SQLite), so the static facts
  of each file are sent once, as in production.

``none`` and ``0%`` then repeat within ~0.3 % (background threads still wake on timeouts). The
sampled rates vary more: what a sampled request costs depends on when the export worker and the
disarm thread run next to it (under Valgrind, threads take turns by blocks executed).

Instructions are not time: a cold cache or a mispredicted branch costs time no instruction count
shows, so a sampled request at 1 % costs more time per instruction than the handler around it.
Use this benchmark to see what a change does to the agent's own work, precisely; use
``bench_service_ab.py`` for what a service's throughput and latency show.

    python benchmarks/bench_agent_instr.py                 # none, 0 %, 1 %, 10 % (~6 minutes)
    python benchmarks/bench_agent_instr.py --rates 0.01,1 --jobs 2
    python benchmarks/bench_agent_instr.py --app fastapi --absent --split
    python benchmarks/bench_agent_instr.py --rates 0.01 --threads   # the request thread's share
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from asgi_direct import call, http_scope  # noqa: E402
from bench_service import EXAMPLES, Bench, stop  # noqa: E402

_IR = re.compile(r"I\s+refs:\s+([\d,]+)")
#: Cachegrind's summary lines of misses (with ``--cache-sim=yes``).
_MISSES = {
    "I1": re.compile(r"I1\s+misses:\s+([\d,]+)"),
    "D1": re.compile(r"D1\s+misses:\s+([\d,]+)"),
    "LLi": re.compile(r"LLi misses:\s+([\d,]+)"),
    "LLd": re.compile(r"LLd misses:\s+([\d,]+)"),
}
_APP_NAMES = {"flask": "Flask", "fastapi": "FastAPI"}


# -- child: one run of the shop, under Valgrind or natively -----------------------------------


def child(
    config: str,
    rate: float,
    warmup: int,
    measured: int,
    toggle_cost: float,
    keep_gc: bool,
    app_name: str = "flask",
) -> int:
    """Serve ``warmup`` then ``measured`` requests of the shop's traffic, one at a time; print
    the core's toggle cost when asked to measure it (``toggle_cost`` < 0)."""
    random.seed(0)  # OpenTelemetry draws trace ids from the random module: same ids every run
    import logging

    sys.path.insert(0, str(EXAMPLES))
    logging.disable(logging.WARNING)
    from opentelemetry import trace
    from shop.serving import ENDPOINTS, SOURCE_ROOT, setup_tracing
    from traffic import next_request

    if app_name == "fastapi":
        from shop_fastapi.app import create_app
    else:
        from shop_flask.app import create_app

    setup_tracing()
    # The shop's trace ids from a Random of their own: the global one is also drawn from on
    # the export thread (runcov's span ids) at points that depend on thread scheduling, so
    # with it the sampled requests would differ between runs and between commits.
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class SeededIds(IdGenerator):
        def __init__(self) -> None:
            self._random = random.Random(0)

        def generate_span_id(self) -> int:
            return self._random.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            return self._random.getrandbits(128) or 1

    trace.get_tracer_provider().id_generator = SeededIds()  # type: ignore[attr-defined]
    rng = random.Random(1)
    orders: list[Any] = []
    requests = [next_request(rng, orders) for _ in range(300)]
    if config == "absent":
        serve = _server(app_name, create_app(agent=None))
        _serve_all(serve, requests, warmup, measured, keep_gc)
        print("sampled 0")
        return 0

    import runcov

    agent = runcov.start(source=[SOURCE_ROOT], endpoints=ENDPOINTS, sample_rate=rate)
    serve = _server(app_name, create_app(agent=agent))
    core = agent.core
    promotions: list[float] = []  # natively: the promotions' time at each disarm
    if toggle_cost < 0 and hasattr(core, "_apply"):
        measured_apply = core._apply

        def measuring(*args: Any, **kwargs: Any) -> Any:
            if getattr(core, "_promote_cost", 0.0):
                promotions.append(core._promote_cost)
            return measured_apply(*args, **kwargs)

        core._apply = measuring
    if toggle_cost > 0 and hasattr(core, "_apply"):
        apply = core._apply

        def pinned(*args: Any, **kwargs: Any) -> Any:
            try:
                return apply(*args, **kwargs)
            finally:
                core._toggle_cost = toggle_cost

        core._apply = pinned
        if hasattr(core, "_promote_cost"):
            # The promotions' time, timed under Valgrind, would be ~50x too long: the pinned
            # toggle cost is the native cycle's, promotions included.
            class Pinned(type(core)):  # type: ignore[misc]
                _promote_cost = property(lambda self: 0.0, lambda self, value: None)

            core.__class__ = Pinned
        # Natively the linger budget runs out long before the 50 ms deadline at these rates;
        # under Valgrind the deadline would come first, a regime that never happens natively.
        core.linger = 3600.0
    if config in ("none", "monitoring"):
        multi = trace.get_tracer_provider()._active_span_processor  # type: ignore[attr-defined]
        multi._span_processors = tuple(
            p for p in multi._span_processors if type(p).__name__ != "RuncovSpanProcessor"
        )
    if config in ("none", "processor") and hasattr(sys, "monitoring"):
        sys.monitoring.set_events(core.tool_id, 0)
    submitted = [0]

    def measuring_starts() -> None:
        submitted[0] = agent.exporter.counters()["submitted"]
        if config == "zero":
            # Sampled at ``rate`` through the warm-up; nothing is sampled while counting.
            agent._span_threshold = 1 << 56

    _serve_all(serve, requests, warmup, measured, keep_gc, measuring_starts)
    print(f"sampled {agent.exporter.counters()['submitted'] - submitted[0]}")
    agent.flush()
    if toggle_cost < 0:
        cycle = getattr(core, "_toggle_cost", 0.0)
        if promotions:
            cycle += sorted(promotions)[len(promotions) // 2]
        print(f"toggle_cost {cycle!r}")
    agent.stop()
    return 0


def _serve_all(
    serve: Any,
    requests: list[Any],
    warmup: int,
    measured: int,
    keep_gc: bool,
    at_measure: Optional[Callable[[], None]] = None,
) -> None:
    for i in range(warmup + measured):
        if i == warmup:
            if at_measure is not None:
                at_measure()
            if not keep_gc:
                gc.collect()
                gc.disable()
        serve(requests[i % len(requests)])


def _server(app_name: str, app: Any) -> Any:
    """A function serving one request of the traffic mix in this thread: Flask's test client,
    or for FastAPI the ASGI app called on one event loop with the request's messages."""
    if app_name != "fastapi":
        client = app.test_client()
        return lambda r: client.open(r.path, method=r.method, json=r.body)
    loop = asyncio.new_event_loop()

    async def one(r: Any) -> None:
        body = json.dumps(r.body).encode() if r.body is not None else b""
        await call(app, http_scope(r.method, r.path, body), body)

    return lambda r: loop.run_until_complete(one(r))


# -- parent ---------------------------------------------------------------------------------


def _env(collector_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNCOV_", "OTEL_", "COVERAGE_"))}
    env.update({
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OTEL_SERVICE_NAME": "bench-agent-instr",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url,
        "OTEL_BSP_SCHEDULE_DELAY": "3600000",
        "RUNCOV_METRICS_INTERVAL": "3600",
        "RUNCOV_MAX_PER_SECOND": "0",
        "RUNCOV_SATURATION": "0",
    })
    return env


def _args(
    config: str,
    rate: float,
    warmup: int,
    measured: int,
    toggle: float,
    keep_gc: bool = False,
    app: str = "flask",
) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", config, str(rate),
            str(warmup), str(measured), repr(toggle), "gc" if keep_gc else "nogc", app]


def native_toggle_cost(env: dict[str, str], warmup: int, app: str = "flask") -> float:
    """The toggle cost the core measures natively on this workload at 10 %."""
    out = subprocess.run(_args("agent", 0.1, warmup, 1000, -1.0, app=app), env=env, check=True,
                         capture_output=True, text=True).stdout
    match = re.search(r"toggle_cost (\S+)", out)
    if match is None:
        raise SystemExit(f"no toggle cost in the native run's output: {out!r}")
    return float(match.group(1))


_SAMPLED = re.compile(r"^sampled (\d+)$", re.MULTILINE)
_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def count(
    env: dict[str, str], args: list[str], cache_sim: bool = False, threads: bool = False
) -> dict[str, int]:
    """Instructions executed by ``args`` under cachegrind (``"Ir"``), and with ``cache_sim``
    the simulated first-level (``"L1"``, instruction and data) and last-level (``"LL"``)
    misses; with ``threads``, under callgrind, also the request (main) thread's instructions
    (``"main"``). ``"sampled"``: requests sampled while counted, as the child reported."""
    if threads:
        return _count_threads(env, args)
    proc = subprocess.run(
        ["valgrind", "--tool=cachegrind", f"--cache-sim={'yes' if cache_sim else 'no'}",
         "--cachegrind-out-file=/dev/null", *args], env=env, capture_output=True, text=True)
    match = _IR.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"cachegrind run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    counts = {"Ir": int(match.group(1).replace(",", ""))}
    if cache_sim:
        found = {}
        for name, pattern in _MISSES.items():
            m = pattern.search(proc.stderr)
            if m is None:
                raise SystemExit(f"no {name} misses in cachegrind's output:\n{proc.stderr[-3000:]}")
            found[name] = int(m.group(1).replace(",", ""))
        counts["L1"] = found["I1"] + found["D1"]
        counts["LL"] = found["LLi"] + found["LLd"]
    counts["sampled"] = _sampled(proc.stdout)
    return counts


def _sampled(stdout: str) -> int:
    match = _SAMPLED.search(stdout)
    if match is None:
        raise SystemExit(f"the child did not report its sampled requests:\n{stdout[-2000:]}")
    return int(match.group(1))


def _count_threads(env: dict[str, str], args: list[str]) -> dict[str, int]:
    """``count`` by thread: callgrind writes one profile per thread (``out-01`` is the main
    thread, the one serving the requests)."""
    with tempfile.TemporaryDirectory(prefix="runcov-callgrind-") as tmp:
        out = Path(tmp) / "cg.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}", *args],
            env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        per_thread = {}
        for path in sorted(Path(tmp).glob("cg.out-*")):
            match = _SUMMARY.search(path.read_text(errors="replace"))
            if match is not None:
                per_thread[path.name] = int(match.group(1))
    if "cg.out-01" not in per_thread:
        raise SystemExit(f"no main-thread profile from callgrind:\n{proc.stderr[-3000:]}")
    return {"Ir": sum(per_thread.values()), "main": per_thread["cg.out-01"],
            "sampled": _sampled(proc.stdout)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0.01,0.1",
                        help="sampling rates measured besides none and 0 (comma-separated)")
    parser.add_argument("--warmup", type=int, default=3000, help="requests before counting")
    parser.add_argument("--small", type=int, default=500, help="measured requests, short run")
    parser.add_argument("--large", type=int, default=4500, help="measured requests, long run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="Valgrind runs at once")
    parser.add_argument("--toggle-cost", type=float, default=0.0,
                        help="seconds per arm/disarm to pin (default: measured natively first)")
    parser.add_argument("--split", action="store_true",
                        help="also count the span processor alone and the events alone")
    parser.add_argument("--gc", action="store_true",
                        help="leave the garbage collector on while counting (see above)")
    parser.add_argument("--app", choices=("flask", "fastapi"), default="flask",
                        help="the example shop served")
    parser.add_argument("--absent", action="store_true",
                        help="also count the shop without runcov at all")
    parser.add_argument("--zero", action="store_true",
                        help="also count the 0 %% path in a process that sampled at the first rate")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches and report misses per request")
    parser.add_argument("--threads", action="store_true",
                        help="count by thread with callgrind: adds the request thread's share")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cache_sim and args.threads:
        parser.error("--cache-sim and --threads are different Valgrind tools: pick one")
    if args.child:
        config, rate, warmup, measured, toggle, collect, app = args.child
        return child(config, float(rate), int(warmup), int(measured), float(toggle),
                     collect == "gc", app)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    configs = [("none", 0.0), ("0%", 0.0)] + [(f"{r * 100:g}%", r) for r in rates if r > 0]
    if args.absent:
        configs.insert(0, ("absent", 0.0))
    if args.split:
        configs += [("processor", 0.0), ("monitoring", 0.0)]
    if args.zero and rates:
        configs.append(("zero", rates[0]))
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="runcov-instr-") as tmp:
        bench = Bench(args.app, Path(tmp), 0.0, 0.0, 1)  # for its collector
        try:
            bench.start_collector()
            env = _env(bench.collector_url)
            toggle = args.toggle_cost or native_toggle_cost(env, args.warmup, args.app)
            print(f"toggle cost pinned at {toggle * 1e6:.1f} µs", file=sys.stderr)
            jobs = {
                (name, n): _args(
                    name if name in ("absent", "none", "processor", "monitoring", "zero")
                    else "agent",
                    rate, args.warmup, n, toggle, args.gc, args.app,
                )
                for name, rate in configs for n in (args.small, args.large)
            }
            with ThreadPoolExecutor(args.jobs) as pool:
                counts = dict(zip(jobs, pool.map(
                    lambda a: count(env, a, args.cache_sim, args.threads), jobs.values())))
        finally:
            if bench.collector is not None:
                stop(bench.collector)

    def per_request(name: str, key: str = "Ir") -> float:
        large, small = counts[(name, args.large)], counts[(name, args.small)]
        return (large[key] - small[key]) / (args.large - args.small)

    def sampled_while_counted(name: str) -> int:
        return counts[(name, args.large)]["sampled"] - counts[(name, args.small)]["sampled"]

    def per_sampled(name: str, key: str = "Ir") -> Optional[float]:
        """Instructions per request sampled while counted, beyond the 0 % path's."""
        large, small = counts[(name, args.large)], counts[(name, args.small)]
        sampled = sampled_while_counted(name)
        if sampled <= 0:
            return None
        zero_large, zero_small = counts[("0%", args.large)], counts[("0%", args.small)]
        return ((large[key] - small[key]) - (zero_large[key] - zero_small[key])) / sampled

    base = per_request("none")
    print(f"\n**{_APP_NAMES[args.app]} shop · Python {platform.python_version()} · "
          f"{platform.machine()} · "
          f"{started:%Y-%m-%d %H:%M} UTC**  ")
    print(f"{'callgrind (by thread)' if args.threads else 'cachegrind'} instruction counts · "
          f"{args.warmup} warm-up requests, then "
          f"{args.small} and {args.large} measured · garbage collector "
          f"{'on' if args.gc else 'off while counting'} · toggle cost pinned at "
          f"{toggle * 1e6:.1f} µs\n")
    head = ("| configuration | instructions / request | vs none | sampled while counted "
            "| per sampled request, beyond 0 % |")
    rule = "|---|---:|---:|---:|---:|"
    if args.threads:
        head += " request thread / request | vs none | request thread per sampled request |"
        rule += "---:|---:|---:|"
    if args.cache_sim:
        head += " L1 misses / request | vs none | LL misses / request | vs none |"
        rule += "---:|---:|---:|---:|"
    print(head)
    print(rule)
    def shown(value: Optional[float]) -> str:
        return "" if value is None else f"{value:,.0f}"

    for name, rate in configs:
        ir = per_request(name)
        sampled = sampled_while_counted(name)
        extra = shown(per_sampled(name)) if rate > 0 and name != "zero" else ""
        row = f"| {name} | {ir:,.0f} | {ir / base:.4f}x | {sampled} | {extra} |"
        if args.threads:
            main_ir, main_base = per_request(name, "main"), per_request("none", "main")
            main_extra = shown(per_sampled(name, "main")) if rate > 0 and name != "zero" else ""
            row += f" {main_ir:,.0f} | {main_ir / main_base:.4f}x | {main_extra} |"
        if args.cache_sim:
            for key in ("L1", "LL"):
                misses, none = per_request(name, key), per_request("none", key)
                row += f" {misses:,.0f} | {misses / none:.3f}x |" if none else f" {misses:,.0f} | |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
