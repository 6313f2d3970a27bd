"""Cost of runcov's tracing core next to no agent, coverage.py and slipcover, on one machine.

Two workloads, a threaded one (4 threads handling requests) and an asyncio one (hundreds of
concurrent tasks awaiting between steps), from one of two services (``--workload``):

* ``handler`` (the default): the tight pure-Python shop handler of ``benchmarks/workloads/``,
  every line of it under the source root, 6-7 µs of CPU per request: the worst case for a line
  tracer, where nothing dilutes its per-line and per-request costs.
* ``service``: the example shop as its users run it, ``examples/shop_flask`` (threaded: the
  Flask app's WSGI callable called by 4 threads, one fresh environ per request, as a WSGI
  server does) and ``examples/shop_fastapi`` (asyncio: the FastAPI app's ASGI callable called
  with the request's messages, hundreds of requests at once on one loop; orders are placed on
  worker threads), both instrumented with OpenTelemetry (no SDK configured), the traffic mix of
  ``examples/traffic.py``. The source root is ``examples/``, the service's own code, and the
  framework runs outside it: what the issue's targets are stated for.

Each workload runs under:

* ``none``            no coverage tool at all
* ``none-again``      the same once more: its ratio to ``none`` shows the noise of the machine
* ``runcov-0%``       runcov's core created with the workload as source root, no request sampled
                      (as the agent at a rate of 0: the core expects no exact scope)
* ``runcov-1%`` ...   1 %, 10 %, 100 % of requests open an exact scope (every 100th/10th/each
                      request by index: deterministic)
* ``runcov-zero``     1 % of requests open an exact scope through the warm-up and none while
                      timed: what a process that samples pays between its sampled requests
                      (the code prepared for exact scopes, and what the scopes left behind)
* ``runcov-census``   census (first hits only) of all traffic as the agent runs it: no scope
                      per request, each first hit attributed to the running request (its
                      context, below) and claimed when it ends (sys.monitoring on 3.12+, the
                      census probes on 3.11); a census scope per request where neither exists
                      (the settrace core without its C extension, or forced on 3.12+)
* ``runcov-census-scoped``  a census scope per request (the WSGI/ASGI middleware's census)
* ``runcov-census-uncompacted``  3.11: as ``runcov-census``, the fired probes left in place
                      (a jump per line) instead of compacted away after the warm-up
* ``runcov-1%-py``, ``runcov-100%-py``  as ``runcov-1%``/``runcov-100%`` with the sys.monitoring
                      core's Python recording callbacks (``RUNCOV_ACCEL=0``) instead of its C ones
* ``coverage-line``   coverage.py started for the whole process, lines only
* ``coverage-branch`` coverage.py with branch=True
* ``slipcover``       slipcover (lines and branches), workload imported through its import hook

Every request runs in a context of its own in every configuration (a context variable holding
its index, set and reset around it), as requests do under a web framework and OpenTelemetry's
instrumentation: runcov's census reads it on a line's first hit.

Every (configuration, repetition) runs in a fresh interpreter, so tools cannot leak into each
other; repetitions are interleaved (A B C ... A B C ...) so that machine noise spreads over all
configurations. Within a run, batches of requests are timed after a warm-up; a run's figure is
the median batch cost per request (process CPU time, all threads, and wall time). The table shows
the median over repetitions and the median of the per-repetition ratios to ``none``; with 6
repetitions or more, also a 95 % confidence interval of that median CPU ratio (order statistics,
``benchmarks/stats.py``).

    python benchmarks/bench_core.py                      # full run (about 3 minutes)
    python benchmarks/bench_core.py --workload service   # the example services (about 6 minutes)
    python benchmarks/bench_core.py --quick              # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from stats import median_interval

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.realpath(os.path.join(HERE, "workloads"))
EXAMPLES = os.path.realpath(os.path.join(HERE, os.pardir, "examples"))

CONFIGS = (
    "none",
    "none-again",
    "runcov-0%",
    "runcov-1%",
    "runcov-zero",
    "runcov-10%",
    "runcov-100%",
    "runcov-census",
    "runcov-census-scoped",
    "runcov-census-uncompacted",
    "runcov-1%-py",
    "runcov-100%-py",
    "runcov-0%-traced",
    "runcov-1%-traced",
    "runcov-100%-traced",
    "coverage-line",
    "coverage-branch",
    "slipcover",
)
#: Targets for the core's cost (CPU ratio vs ``none``), from the design issue.
TARGETS = {"runcov-0%": 1.01, "runcov-1%": 1.02, "runcov-census": 1.02, "runcov-100%": 1.5}
THREADS = 4
DISTINCT_REQUESTS = 512

Opener = Optional[Callable[[int], Any]]
After = Optional[Callable[[int], None]]

#: The running request (its index): the request context every configuration sets.
REQUEST: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("request", default=None)


# -- worker: one configuration in this interpreter ------------------------------------------


#: A loaded workload: the threaded handler, the asyncio one, and the inputs they take.
Loaded = tuple[Callable[[Any], Any], Callable[[Any], Any], list[Any]]


def _load_handler() -> Loaded:
    from workloads import async_shop, shop

    raws = [shop.make_request(i) for i in range(DISTINCT_REQUESTS)]
    return shop.handle, async_shop.handle, raws


def _load_service() -> Loaded:
    """The example shop's Flask and FastAPI apps and the traffic mix, as prepared requests."""
    import logging
    import random

    logging.disable(logging.WARNING)  # the shop logs every declined payment
    from asgi_direct import call, http_scope
    from shop.orders import Shop
    from shop_fastapi.app import create_app as create_fastapi
    from shop_flask.app import create_app as create_flask
    from traffic import next_request
    from werkzeug.test import EnvironBuilder

    def shop() -> Shop:
        # Stock that never runs out: the mix of work stays the same over the whole run.
        s = Shop()
        for product_id in range(1, 13):
            s.inventory.set_level(product_id, 10**9)
        return s

    rng = random.Random(1)
    orders = [f"o-{k:06d}" for k in range(1, 41)]  # placed during the warm-up
    requests = [next_request(rng, orders) for _ in range(DISTINCT_REQUESTS)]
    bodies = [json.dumps(r.body).encode() if r.body is not None else b"" for r in requests]

    wsgi = create_flask(shop())
    environs = []
    for r, body in zip(requests, bodies):
        environ = EnvironBuilder(
            path=r.path, method=r.method, data=body, content_type="application/json"
        ).get_environ()
        environ.pop("wsgi.input")
        environs.append(environ)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    def handle_wsgi(k: int) -> None:
        environ = dict(environs[k])
        environ["wsgi.input"] = io.BytesIO(bodies[k])
        result = wsgi(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    asgi = create_fastapi(shop())
    scopes = [http_scope(r.method, r.path, body) for r, body in zip(requests, bodies)]

    async def handle_asgi(k: int) -> None:
        await call(asgi, scopes[k], bodies[k])

    return handle_wsgi, handle_asgi, list(range(DISTINCT_REQUESTS))


def _set_up(config: str, workload: str) -> tuple[Loaded, Opener, After, Callable[[], None]]:
    """Install ``config``'s tool and load ``workload``; return it, what runs before and after
    each request, and a stop."""
    if workload == "service":
        root, load = EXAMPLES, _load_service
        sys.path.insert(0, EXAMPLES)
    else:
        root, load = WORKLOADS, _load_handler
        sys.path.insert(0, HERE)
    opener: Opener = None
    after: After = None
    stop: Callable[[], None] = lambda: None  # noqa: E731
    if config == "slipcover":
        import slipcover

        sci = slipcover.Slipcover(branch=True, source=[root])
        with slipcover.ImportManager(sci, slipcover.FileMatcher(sources=[root])):
            loaded = load()
        return loaded, None, None, stop

    if config.startswith("runcov"):
        from runcov.tracing import CENSUS, EXACT, get_core

        core = get_core()
        core.add_roots([root])
        if config in ("runcov-census", "runcov-census-uncompacted") and core.set_census_owner(
            REQUEST.get
        ):
            core.enable_census()
            pending = core.census_pending
            refresh = getattr(core, "refresh_census", None)
            if refresh is not None and config != "runcov-census-uncompacted":
                # What the agent's export worker does for the census probes (3.11) in a
                # service's first seconds (0.5 s, 1 s, 2 s, ...): take the probes that fired
                # out of the functions' code. Here: once each workload part is warm.
                AFTER_WARMUP.append(refresh)

            def after(i: int) -> None:
                # The span processor's check when a request span ends: claim its first hits.
                if pending:
                    core.take_census(i)

        elif config.startswith("runcov-census"):
            opener = lambda i: core.open_scope(mode=CENSUS)  # noqa: E731
        elif config == "runcov-zero":
            core.expect_exact_scopes()
            sampling = [True]
            BEFORE_WARMUP.append(lambda: sampling.__setitem__(0, True))
            AFTER_WARMUP.append(lambda: sampling.__setitem__(0, False))
            opener = lambda i: (  # noqa: E731
                core.open_scope(mode=EXACT) if sampling[0] and i % 100 == 0 else None
            )
        else:
            pct = int(config.split("-")[1].rstrip("%"))
            if pct:
                core.expect_exact_scopes()  # as the agent does at a rate above 0
                every = 100 // pct
                opener = lambda i: core.open_scope(mode=EXACT) if i % every == 0 else None  # noqa: E731
    elif config.startswith("coverage"):
        import coverage

        cov = coverage.Coverage(
            data_file=None, branch=config == "coverage-branch", source=[root]
        )
        cov.start()
        stop = cov.stop
    elif config not in ("none", "none-again"):
        raise SystemExit(f"unknown configuration {config!r}")
    return load(), opener, after, stop


class _Threaded:
    """``THREADS`` long-lived threads; each batch splits requests among them."""

    def __init__(
        self, handle: Callable[[Any], Any], raws: list[Any], opener: Opener, after: After
    ) -> None:
        self._handle = handle
        self._raws = raws
        self._opener = opener
        self._after = after
        self._go = threading.Barrier(THREADS + 1)
        self._done = threading.Barrier(THREADS + 1)
        self._base = 0
        self._n = 0
        self._stop = False
        self._threads = [
            threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(THREADS)
        ]
        for t in self._threads:
            t.start()

    def _loop(self, k: int) -> None:
        handle, raws, opener, after = self._handle, self._raws, self._opener, self._after
        while True:
            self._go.wait()
            if self._stop:
                return
            for i in range(self._base + k, self._base + self._n, THREADS):
                request = REQUEST.set(i)
                scope = opener(i) if opener is not None else None
                try:
                    handle(raws[i % len(raws)])
                finally:
                    if scope is not None:
                        scope.close()
                    if after is not None:
                        after(i)
                    REQUEST.reset(request)
            self._done.wait()

    def batch(self, base: int, n: int) -> None:
        """Handle requests ``base .. base+n-1`` on the threads."""
        self._base, self._n = base, n
        self._go.wait()
        self._done.wait()

    def close(self) -> None:
        """Stop the threads."""
        self._stop = True
        self._go.wait()
        for t in self._threads:
            t.join()


#: Called once each workload part's warm-up is done (the census probes' compaction), and
#: before it starts.
AFTER_WARMUP: list[Callable[[], Any]] = []
BEFORE_WARMUP: list[Callable[[], Any]] = []


def _measure(run_batch: Callable[[int, int], None], warmup: int, batches: int, n: int) -> dict:
    index = 0
    for prepare in BEFORE_WARMUP:
        prepare()
    for _ in range(warmup):
        run_batch(index, n)
        index += n
    for settle in AFTER_WARMUP:
        settle()
    cpu, wall = [], []
    for _ in range(batches):
        c0, w0 = time.process_time(), time.perf_counter()
        run_batch(index, n)
        cpu.append((time.process_time() - c0) / n * 1e6)
        wall.append((time.perf_counter() - w0) / n * 1e6)
        index += n
    return {"cpu_us": statistics.median(cpu), "wall_us": statistics.median(wall)}


async def _measure_async(
    run_batch: Callable[[int, int], Any], warmup: int, batches: int, n: int
) -> dict:
    index = 0
    for prepare in BEFORE_WARMUP:
        prepare()
    for _ in range(warmup):
        await run_batch(index, n)
        index += n
    for settle in AFTER_WARMUP:
        settle()
    cpu, wall = [], []
    for _ in range(batches):
        c0, w0 = time.process_time(), time.perf_counter()
        await run_batch(index, n)
        cpu.append((time.process_time() - c0) / n * 1e6)
        wall.append((time.perf_counter() - w0) / n * 1e6)
        index += n
    return {"cpu_us": statistics.median(cpu), "wall_us": statistics.median(wall)}


def worker(config: str, warmup: int, batches: int, n: int, workload: str = "handler") -> dict:
    """Run both parts of ``workload`` under ``config``; return their per-request costs."""
    (handle, handle_async, raws), opener, after, stop = _set_up(config, workload)
    result: dict[str, Any] = {"config": config}
    try:
        threaded = _Threaded(handle, raws, opener, after)
        try:
            result["threaded"] = _measure(threaded.batch, warmup, batches, n)
        finally:
            threaded.close()

        async def one(i: int) -> None:
            request = REQUEST.set(i)  # each request is a task: a context of its own
            scope = opener(i) if opener is not None else None
            try:
                await handle_async(raws[i % len(raws)])
            finally:
                if scope is not None:
                    scope.close()
                if after is not None:
                    after(i)
                REQUEST.reset(request)

        async def batch(base: int, count: int) -> None:
            await asyncio.gather(*(one(i) for i in range(base, base + count)))

        result["asyncio"] = asyncio.run(_measure_async(batch, warmup, batches, n))
    finally:
        stop()
    return result


# -- orchestrator -----------------------------------------------------------------------------


def _run_one(config: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        config,
        "--warmup",
        str(args.warmup),
        "--batches",
        str(args.batches),
        "--batch-size",
        str(args.batch_size),
        "--workload",
        args.workload,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE_"))}
    if config.endswith("-py"):
        env["RUNCOV_ACCEL"] = "0"
    if config.endswith("-traced"):
        env["RUNCOV_EXACT_PROBES"] = "0"  # 3.11: exact scopes trace their threads
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def _table(runs: dict[str, list[dict]], configs: list[str], workload: str = "handler") -> str:
    base = runs["none"]
    threaded, aio = ("Flask", "FastAPI") if workload == "service" else ("threaded", "asyncio")
    head = (
        f"| configuration | {threaded} CPU µs/req | ratio | wall ratio "
        f"| {aio} CPU µs/req | ratio | wall ratio | target |"
    )
    # With 6 or more repetitions, a 95 % confidence interval of the median CPU ratio
    # (order statistics of the per-repetition ratios, benchmarks/stats.py).
    with_ci = min(len(r) for r in runs.values()) >= 6
    ci_head = " | ratio 95 % CI" if with_ci else ""
    head = head.replace(" | ratio |", f" | ratio{ci_head} |")
    cols = "---:|" * (8 if with_ci else 6)
    rows = [head, f"|---|{cols}---|"]
    for config in configs:
        cells = [config]
        ratios_cpu = []
        for workload in ("threaded", "asyncio"):
            mine = runs[config]
            cpu = statistics.median(r[workload]["cpu_us"] for r in mine)
            per_rep = [r[workload]["cpu_us"] / b[workload]["cpu_us"] for r, b in zip(mine, base)]
            rc = statistics.median(per_rep)
            rw = statistics.median(
                r[workload]["wall_us"] / b[workload]["wall_us"] for r, b in zip(mine, base)
            )
            ratios_cpu.append(rc)
            cells += [f"{cpu:.1f}", f"{rc:.3f}x"]
            if with_ci:
                low, high = median_interval(per_rep)
                cells.append(f"{low:.3f} to {high:.3f}")
            cells.append(f"{rw:.3f}x")
        target = TARGETS.get(config)
        if target is None:
            cells.append("")
        else:
            ok = all(r <= target for r in ratios_cpu)
            cells.append(f"≤ {target}x {'met' if ok else 'missed'}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up batches per workload")
    parser.add_argument("--batches", type=int, default=25, help="timed batches per workload")
    parser.add_argument("--batch-size", type=int, default=400, help="requests per batch")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument(
        "--workload", choices=("handler", "service"), default="handler",
        help="the tight shop handler (default) or the example Flask and FastAPI services",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(
            worker(args.worker, args.warmup, args.batches, args.batch_size, args.workload)
        ))
        return 0
    if args.quick:
        args.reps, args.warmup, args.batches, args.batch_size = 2, 1, 3, 100
    configs = [c for c in args.configs.split(",") if c]
    if "none" not in configs:
        configs.insert(0, "none")

    runs: dict[str, list[dict]] = {c: [] for c in configs}
    started = time.perf_counter()
    for rep in range(args.reps):
        # Interleave: every configuration once per repetition, the order rotated each time.
        order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
        for config in order:
            runs[config].append(_run_one(config, args))
            print(f"rep {rep + 1}/{args.reps} {config}", file=sys.stderr, flush=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Python {platform.python_version()} · {_machine()} · {when} · {args.workload}")
    print(
        f"{args.reps} interleaved repetitions · {THREADS} threads / {args.batch_size} concurrent "
        f"tasks · {args.batches} timed batches of {args.batch_size} requests after "
        f"{args.warmup} warm-up · {time.perf_counter() - started:.0f} s"
    )
    print()
    print(_table(runs, configs, args.workload))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"python": platform.python_version(), "when": when,
                       "workload": args.workload, "runs": runs}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
