"""The agent's memory in a long-running service: does it level off, and how much does it add?

A soak run. One process serves the Flask shop (OpenTelemetry Flask instrumentation, runcov
started at ``--rate`` with no rate cap, ``inprocess.py``'s ``start_shop``) through Flask's test
client and drives ``--requests`` requests through it, from ``--threads`` threads that are
replaced every wave of ``--wave`` requests (as a server that starts threads per connection
does). The traffic mix stresses what could grow with the traffic rather than with the code:

* 55 % the shop's own mix (``examples/traffic.py``: browsing, quotes, orders, cancellations);
* 20 % unknown URLs: 404s with 1-4 random path segments, some under ``/admin/``, ``/orders/``
  (the shop's own 404 for an order it does not know) and ``/products/``;
* 22 % known routes with a distinct query string each (``/products?...&ref=<random>``);
* 3 % made-up HTTP methods (405s, which the instrumentation names ``_OTHER``);
* every request a new trace (the SDK's random trace ids), and 30 % of them with an incoming
  ``traceparent`` (a random trace and parent, 10 % of them unsampled) of which 80 % carry a
  ``tracestate`` with a varied ``ot=`` entry (``rv``, ``th`` of every precision, both,
  malformed ones) and 0-3 random vendor entries.

Each configuration is a fresh process (``--configs``):

* ``none``              runcov started, its span processor detached and its global events off
                        (``attach(False, False)``): the app's own growth under the same traffic
* ``collector``         exporting to ``runcov-collector serve`` (SQLite in a temporary
                        directory, on the ``--helper-cpu``)
* ``down``              exporting to a loopback port nothing listens on: every export fails
* ``hang``              exporting to a receiver that accepts connections, reads the requests
                        and never answers (each send waits out the OTLP timeout)
* ``...-sat``           the same with saturation on (``RUNCOV_SATURATION=1``); without the
                        suffix it is off, so the rate is exactly ``--rate``

Each configuration runs twice (``--runs``): ``rss`` samples the process's RSS (``VmRSS`` of
``/proc/self/status``) after each wave, after a full garbage collection; ``traced`` does the same
under ``tracemalloc`` (``--frames`` frames per allocation: slower, hence a run of its own,
``--traced-requests``), samples the traced size, and compares a snapshot taken at the end of
the first quarter with one at the end. Each allocation is charged to its innermost frame in
runcov's, OpenTelemetry's, the shop's, Flask's or Werkzeug's files (else to its innermost
frame): what the standard library or ``requests`` allocates for runcov is runcov's, what the
shop allocates under the instrumentation's frames the shop's (and what runcov's C callbacks
allocate while the shop's code runs is charged to the shop's line: a scope's records, copied
under runcov's lines when it closes). The tables give the growth per category and the sites in
runcov's and OpenTelemetry's files that grew most. The containers
(dicts, sets, lists, deques) held by the agent's objects (agent, span processor, sampler,
matcher, exporter, transport, metrics, core) are counted at the same two points, and those that
grew are listed.

Reported per configuration: RSS after the warm-up, the mean of the first and of the last
quarter's samples and the growth between them, the slope over the second half (KiB per
100,000 requests: about zero when memory has levelled off), the same growth and slope for the
difference to ``none`` (the same wave boundaries and the same seeded traffic: the agent's own),
and what the exporter did (sampled, exported, dropped). The shop keeps up to 100,000 orders in
memory (``examples/shop/orders.py`` ``MAX_ORDERS``; ``--max-orders`` changes it): its own growth
is what ``none`` shows.

    taskset -c 1 .venv-3.12/bin/python benchmarks/bench_agent_memory.py            # ~25 min
    taskset -c 1 .venv-3.12/bin/python benchmarks/bench_agent_memory.py --quick    # ~3 min
    taskset -c 1 .venv-3.12/bin/python benchmarks/bench_agent_memory.py \\
        --configs none,down --runs traced --traced-requests 200000 --json out.json

Run it pinned (``taskset -c 1``): the shop then runs on CPU 1, and the collector and the hanging
receiver on ``--helper-cpu`` (0 by default on a machine with 2 CPUs or more).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from bench_service import Bench, free_port, stop  # noqa: E402
from traffic import next_request  # noqa: E402

SITUATIONS = ("collector", "down", "hang")
CONFIGS = ("none", *SITUATIONS, *(f"{s}-sat" for s in SITUATIONS))
#: The files an allocation is charged to: its innermost frame in one of these packages (else its
#: innermost frame), so that what the standard library or a client library allocates for runcov
#: is runcov's, and what the shop allocates under the instrumentation's frames the shop's.
PACKAGES = (("runcov", "runcov"), ("opentelemetry", "opentelemetry"),
            ("flask/werkzeug", "flask"), ("flask/werkzeug", "werkzeug"))
#: Categories of the traced growth, by the file an allocation is charged to ("benchmark": this
#: script's own frames, such as the wrapper that counts the measured requests).
CATEGORIES = ("runcov", "opentelemetry", "shop", "flask/werkzeug", "benchmark", "other")

# -- traffic ------------------------------------------------------------------------------------

ODD_METHODS = ("PROPFIND", "PURGE", "LINK", "BREW", "SEARCH", "REPORT")


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _unknown_path(rng: random.Random) -> str:
    """A URL no route knows (or a route's 404): random segments under varied prefixes."""
    segments = [_hex(rng, 32) for _ in range(rng.randint(1, 4))]
    prefix = rng.choice(["", "", "/admin", "/api/v2", "/static"])
    roll = rng.random()
    if roll < 0.2:
        return f"/orders/o-{rng.randrange(10**9):09d}"  # the shop's own 404
    if roll < 0.3:
        return f"/products/{segments[0]}"  # not an int: no route
    return prefix + "/" + "/".join(segments)


def _query_path(rng: random.Random) -> str:
    """A known route with a query string seen once."""
    if rng.random() < 0.7:
        params = [f"ref={_hex(rng, 48)}", f"page={rng.randrange(10**6)}"]
        if rng.random() < 0.5:
            params.append(f"category={rng.choice(['books', 'games', 'garden', 'kitchen'])}")
        rng.shuffle(params)
        return "/products?" + "&".join(params)
    return f"/products/{rng.randint(1, 12)}?utm_source={_hex(rng, 32)}&utm_id={rng.random()}"


def _ot_entry(rng: random.Random) -> str:
    """A W3C ``ot`` tracestate value: rv, th (every precision), both, or malformed."""
    rv = f"rv:{_hex(rng, 56)}"
    rate = rng.uniform(0.001, 0.3)
    digits = f"{round((1 - rate) * 2**56):014x}"[: rng.randint(1, 14)].rstrip("0") or "0"
    th = f"th:{digits}"
    return rng.choice([
        rv, th, f"{th};{rv}", f"{rv};{th}",
        "rv:zz", "th:", f"th:{_hex(rng, 64)}", f"p:{rng.randrange(64)}",
        f"{rv};x:{_hex(rng, 16)}",
    ])


def _incoming(rng: random.Random) -> dict[str, str]:
    """An incoming trace context: a random trace and parent, usually a tracestate."""
    flags = "01" if rng.random() < 0.9 else "00"
    headers = {"traceparent": f"00-{_hex(rng, 128)}-{_hex(rng, 64)}-{flags}"}
    if rng.random() < 0.8:
        members = [f"ot={_ot_entry(rng)}"]
        members += [f"v{rng.randrange(1000)}={_hex(rng, 32)}" for _ in range(rng.randint(0, 3))]
        rng.shuffle(members)
        headers["tracestate"] = ",".join(members)
    return headers


def soak_request(rng: random.Random, order_ids: list[str]) -> tuple[str, str, Any, dict[str, str]]:
    """One request of the soak mix: ``(method, path, JSON body, headers)``."""
    roll = rng.random()
    body: Any = None
    if roll < 0.55:
        req = next_request(rng, order_ids)
        method, path, body = req.method, req.path, req.body
    elif roll < 0.75:
        method, path = rng.choice(["GET", "GET", "GET", "POST", "DELETE"]), _unknown_path(rng)
    elif roll < 0.97:
        method, path = "GET", _query_path(rng)
    else:
        method, path = rng.choice(ODD_METHODS), rng.choice(["/products", "/quote", "/orders"])
    headers = _incoming(rng) if rng.random() < 0.3 else {}
    return method, path, body, headers


# -- measurements -------------------------------------------------------------------------------


def rss_kib() -> int:
    """This process's resident set size (``VmRSS``) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _containers(agent: Any) -> dict[str, int]:
    """The sizes of the containers the agent's objects hold (attribute name -> length)."""
    exporter = getattr(agent, "exporter", None)
    owners = {
        "agent": agent,
        "processor": getattr(agent, "_processor", None),
        "sampler": getattr(agent, "_sampler", None),
        "matcher": getattr(agent, "_matcher", None),
        "exporter": exporter,
        "transport": getattr(exporter, "_transport", None),
        "static": getattr(exporter, "_static", None),
        "redactor": getattr(exporter, "_redactor", None),
        "metrics": getattr(agent, "metrics", None),
        "core": getattr(agent, "core", None),
    }
    sizes: dict[str, int] = {}
    for owner, obj in owners.items():
        try:
            attributes = vars(obj)
        except TypeError:
            continue
        for name, value in list(attributes.items()):
            if isinstance(value, (dict, set, frozenset, list)) or type(value).__name__ == "deque":
                sizes[f"{owner}.{name}"] = len(value)
    return sizes


def _owners() -> list[tuple[str, str]]:
    """``(category, directory + os.sep)`` of the packages allocations are charged to."""
    import importlib

    owners = [("shop", str(HERE.parent / "examples") + os.sep)]
    for form in {__file__, os.path.abspath(__file__), str(Path(__file__).resolve())}:
        owners.append(("benchmark", form))  # (as the script was started)
    for category, name in PACKAGES:
        module = importlib.import_module(name)
        for directory in getattr(module, "__path__", []):  # (opentelemetry: a namespace)
            for form in {directory, str(Path(directory).resolve())}:
                owners.append((category, form.rstrip(os.sep) + os.sep))
    return owners


def _category(filename: str, owners: list[tuple[str, str]]) -> str:
    for category, directory in owners:
        if filename.startswith(directory):
            return category
    return "other"


def _charge(snapshot: Any) -> dict[tuple[str, int], list[int]]:
    """Traced bytes and blocks per site (see OWNERS)."""
    sites: dict[tuple[str, int], list[int]] = {}
    owners = _owners()
    known: dict[str, str] = {}
    for trace in snapshot.traces:
        frames = list(trace.traceback)  # oldest first
        site = (frames[-1].filename, frames[-1].lineno) if frames else ("?", 0)
        for frame in reversed(frames):
            category = known.get(frame.filename)
            if category is None:
                category = known[frame.filename] = _category(frame.filename, owners)
            if category != "other":
                site = (frame.filename, frame.lineno)
                break
        entry = sites.setdefault(site, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    return sites


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/examples/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _growth(first: Any, last: Any, top: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Traced growth from snapshot ``first`` to ``last``: per category, and the ``top`` sites
    in runcov's and OpenTelemetry's files that grew most."""
    before, after = _charge(first), _charge(last)
    owners = _owners()
    by_category = dict.fromkeys(CATEGORIES, 0)
    rows = []
    for site in set(before) | set(after):
        b = before.get(site, [0, 0])
        a = after.get(site, [0, 0])
        category = _category(site[0], owners)
        by_category[category] += a[0] - b[0]
        if category in ("runcov", "opentelemetry"):
            rows.append({"site": f"{_short(site[0])}:{site[1]}", "bytes": a[0] - b[0],
                         "blocks": a[1] - b[1], "bytes_end": a[0]})
    rows.sort(key=lambda r: r["bytes"], reverse=True)
    return by_category, rows[:top]


# -- the measured process -----------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """One configuration in this process: serve the shop, drive the traffic, sample."""
    import tracemalloc

    from inprocess import nominal_agent_env, start_shop

    import runcov

    traced = args.kind == "traced"
    code_commit = _code_commit()
    nominal_agent_env(args.endpoint, "bench-agent-memory")
    os.environ["RUNCOV_SATURATION"] = "1" if args.config.endswith("-sat") else "0"
    under = start_shop(args.rate)
    if args.config == "none":
        under.attach(False, False)
    if args.max_orders:
        import shop.orders

        shop.orders.MAX_ORDERS = args.max_orders
    app, agent = under.app, under.agent
    # What the agent measured and dropped (by reason, as its metrics are told: the drops before
    # a request is measured, queue full or tracer busy, are counted there only).
    measured = [0]
    drops: dict[str, int] = {}
    real_begin, real_dropped = agent.begin, agent.metrics.dropped

    def begin(*a: Any, **kw: Any) -> Any:
        ticket = real_begin(*a, **kw)
        if ticket is not None:
            measured[0] += 1
        return ticket

    def dropped(endpoint: str, reason: str, **kw: Any) -> None:
        drops[reason] = drops.get(reason, 0) + kw.get("count", 1)
        real_dropped(endpoint, reason, **kw)

    agent.begin, agent.metrics.dropped = begin, dropped

    order_ids: list[str] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def worker(seed: int, count: int) -> None:
        rng = random.Random(seed)
        client = app.test_client()
        mine: dict[int, int] = {}
        for _ in range(count):
            method, path, body, headers = soak_request(rng, order_ids)
            response = client.open(path, method=method, json=body, headers=headers)
            code = response.status_code
            mine[code] = mine.get(code, 0) + 1
            if code == 201:
                order_ids.append(response.get_json()["order_id"])
                if len(order_ids) > 2000:
                    with lock:
                        del order_ids[:1000]  # the benchmark's own memory stays bounded
            response.close()
        with lock:
            for code, n in mine.items():
                statuses[code] = statuses.get(code, 0) + n

    def wave(index: int, size: int) -> None:
        threads = [
            threading.Thread(
                target=worker,
                args=(args.seed * 1_000_003 + index * 64 + i,
                      size // args.threads + (i < size % args.threads)),
            )
            for i in range(args.threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    total = args.requests
    waves = max(1, (total + args.wave - 1) // args.wave)
    for w in range(max(1, (args.warmup + args.wave - 1) // args.wave)):
        wave(-1 - w, min(args.wave, args.warmup))
    statuses.clear()
    measured[0] = 0
    drops.clear()
    counters_before = agent.exporter.counters()
    if traced:
        tracemalloc.start(args.frames)
    gc.collect()
    t0 = time.monotonic()
    samples = [(0, rss_kib(), tracemalloc.get_traced_memory()[0] if traced else 0, 0.0)]
    first_snapshot = None
    containers_q1: dict[str, int] = {}
    done = 0
    for w in range(waves):
        size = min(args.wave, total - done)
        wave(w, size)
        done += size
        gc.collect()
        samples.append((done, rss_kib(), tracemalloc.get_traced_memory()[0] if traced else 0,
                        time.monotonic() - t0))
        if not containers_q1 and done * 4 >= total:
            containers_q1 = _containers(agent)
            if traced:
                first_snapshot = tracemalloc.take_snapshot()
        print(f"  {args.config} {args.kind}: {done}/{total} requests, RSS "
              f"{samples[-1][1] / 1024:.1f} MiB", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    containers_end = _containers(agent)
    result: dict[str, Any] = {
        "config": args.config,
        "kind": args.kind,
        "python": sys.version.split()[0],
        "commit": code_commit,
        "core": getattr(agent.core, "name", "?"),
        "samples": samples,
        "seconds": elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "exporter": {k: v - counters_before.get(k, 0)
                     for k, v in agent.exporter.counters().items()},
        "measured": measured[0],
        "drops": drops,
        "containers_q1": containers_q1,
        "containers_end": containers_end,
    }
    if traced and first_snapshot is not None:
        last = tracemalloc.take_snapshot()
        result["categories"], result["sites"] = _growth(first_snapshot, last, args.top)
        tracemalloc.stop()
    runcov.stop(timeout=1.0)
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- helpers in other processes -----------------------------------------------------------------


def hang_receiver() -> int:
    """Accept connections on a loopback port (printed), read what comes, never answer."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(server.getsockname()[1], flush=True)

    def drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def _pin(cpu: int) -> Any:
    return None if cpu < 0 else (lambda: os.sched_setaffinity(0, {cpu}))


def run_config(args: argparse.Namespace, config: str, kind: str, workdir: Path) -> dict[str, Any]:
    """One configuration and kind of run in a fresh process, with its receiver."""
    situation = config.removesuffix("-sat")
    helper: Optional[subprocess.Popen[bytes]] = None
    bench: Optional[Bench] = None
    rundir = Path(tempfile.mkdtemp(prefix=f"{config}-{kind}-", dir=workdir))
    try:
        if situation == "collector":
            bench = Bench("flask", rundir, 0.0, 0.0, 1)
            bench.other_cpus = None if args.helper_cpu < 0 else {args.helper_cpu}
            bench.start_collector()
            endpoint = bench.collector_url
        elif situation == "hang":
            helper = subprocess.Popen(
                [sys.executable, __file__, "--hang-receiver"], stdout=subprocess.PIPE,
                preexec_fn=_pin(args.helper_cpu))
            assert helper.stdout is not None
            endpoint = f"http://127.0.0.1:{int(helper.stdout.readline())}"
        else:  # down, none: nothing listens
            endpoint = f"http://127.0.0.1:{free_port()}"
        out = rundir / "result.json"
        requests = args.traced_requests if kind == "traced" else args.requests
        cmd = [sys.executable, __file__, "--child", config, "--kind", kind, "--endpoint", endpoint,
               "--out", str(out), "--rate", str(args.rate), "--requests", str(requests),
               "--wave", str(args.wave), "--threads", str(args.threads), "--warmup",
               str(args.warmup), "--seed", str(args.seed), "--frames", str(args.frames),
               "--top", str(args.top), "--max-orders", str(args.max_orders)]
        subprocess.run(cmd, check=True)
        return dict(json.loads(out.read_text()))
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
        if bench is not None and bench.collector is not None:
            stop(bench.collector)


# -- the report ---------------------------------------------------------------------------------


def _quarters(samples: list[list[float]], column: int) -> tuple[float, float]:
    """Means of the first and of the last quarter's samples (after the one at 0)."""
    total = samples[-1][0]
    first = [s[column] for s in samples[1:] if s[0] * 4 <= total] or [samples[1][column]]
    last = [s[column] for s in samples[1:] if s[0] * 4 > 3 * total] or [samples[-1][column]]
    return statistics.fmean(first), statistics.fmean(last)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(requests, value)`` over the second half, per 100,000."""
    total = points[-1][0]
    half = [p for p in points if p[0] * 2 >= total]
    if len(half) < 2:
        return 0.0
    return float(statistics.linear_regression([p[0] for p in half],
                                              [p[1] for p in half]).slope) * 100_000


def _series(res: dict[str, Any], kind: str) -> list[tuple[float, float]]:
    """``(requests, KiB)`` of a run: RSS, or the traced size."""
    if kind == "rss":
        return [(s[0], float(s[1])) for s in res["samples"]]
    return [(s[0], s[2] / 1024) for s in res["samples"]]


def _growth_row(series: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """At start, first quarter's mean, last quarter's mean, second half's slope (KiB)."""
    q1, q4 = _quarters([list(p) for p in series], 1)
    return series[0][1], q1, q4, _slope(series)


def _code_commit() -> str:
    """The commit of the agent's code as this process imported it ("+" when ``src/`` had
    uncommitted changes), taken when the run starts: a long run outlives later commits."""
    try:
        git = ["git", "-C", str(HERE.parent)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return ""
    return commit + ("+" if dirty else "")


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]],
           started: datetime.datetime) -> None:
    """The markdown tables."""
    any_result = next(iter(results.values()))
    ended = datetime.datetime.now(datetime.timezone.utc)
    commits = sorted({r.get("commit") or "?" for r in results.values()})
    print(f"Python {any_result['python']}, core {any_result['core']}, "
          f"{os.cpu_count()} CPUs; commit {', '.join(commits)}; "
          f"{started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC")
    print(f"rate {args.rate}, no rate cap; {args.threads} threads replaced every wave of "
          f"{args.wave:,} requests; {args.warmup:,} warm-up requests; the shop's order bound "
          f"{args.max_orders or 100_000:,}")
    for kind in ("rss", "traced"):
        rows = [(c, results[(c, kind)]) for c in args.config_list if (c, kind) in results]
        if not rows:
            continue
        base = results.get(("none", kind))
        n = rows[0][1]["samples"][-1][0]
        print()
        print(f"**{'RSS' if kind == 'rss' else 'tracemalloc-traced size'}**, {n:,} requests "
              "after the warm-up, a sample after each wave (after a full collection). MiB; "
              "growth: last quarter's mean - first quarter's; slope: KiB per 100,000 requests "
              "over the second half; - none: of the difference to `none`, sample by sample")
        print()
        print("| configuration | at start | first quarter | last quarter | growth | slope | "
              "growth - none | slope - none | req/s | measured | nothing to send | exported | "
              "dropped |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for config, res in rows:
            series = _series(res, kind)
            start, q1, q4, slope = _growth_row(series)
            vs = ["", ""]
            if base is not None and config != "none":
                other = _series(base, kind)
                if [p[0] for p in other] == [p[0] for p in series]:
                    diff = [(p[0], p[1] - o[1]) for p, o in zip(series, other)]
                    _, d1, d4, dslope = _growth_row(diff)
                    vs = [f"{(d4 - d1) / 1024:+.2f}", f"{dslope:+.0f}"]
            ex = res["exporter"]
            drops = ", ".join(f"{n:,} {reason.replace('_', ' ')}"
                              for reason, n in sorted(res["drops"].items())) or "0"
            print(f"| {config} | {start / 1024:.1f} | {q1 / 1024:.1f} | {q4 / 1024:.1f} | "
                  f"{(q4 - q1) / 1024:+.2f} | {slope:+.0f} | {vs[0]} | {vs[1]} | "
                  f"{n / res['seconds']:.0f} | {res['measured']:,} | {ex.get('empty', 0):,} | "
                  f"{ex.get('requests_exported', 0):,} | {drops} |")
        if kind == "traced":
            print()
            print("Traced growth from the end of the first quarter to the end, by the file "
                  "each allocation is charged to (MiB):")
            print()
            print("| configuration | " + " | ".join(CATEGORIES) + " |")
            print("|---|" + "---:|" * len(CATEGORIES))
            for config, res in rows:
                cats = res.get("categories", {})
                print(f"| {config} | "
                      + " | ".join(f"{cats.get(c, 0) / 2**20:+.2f}" for c in CATEGORIES) + " |")
            for config, res in rows:
                sites = [s for s in res.get("sites", []) if s["bytes"] > 0]
                if not sites:
                    continue
                print()
                print(f"`{config}`: the sites in runcov's and OpenTelemetry's files that grew most")
                print()
                print("| site | growth, KiB | blocks | held at the end, KiB |")
                print("|---|---:|---:|---:|")
                for s in sites:
                    print(f"| `{s['site']}` | {s['bytes'] / 1024:+.1f} | {s['blocks']:+d} | "
                          f"{s['bytes_end'] / 1024:.1f} |")
    grown = []
    for (config, kind), res in results.items():
        q1, end = res.get("containers_q1", {}), res.get("containers_end", {})
        for name, size in end.items():
            if size > q1.get(name, 0) + 16 and config != "none":
                grown.append(f"{config} ({kind}): `{name}` {q1.get(name, 0)} → {size}")
    print()
    if grown:
        print("Containers held by the agent's objects that grew by more than 16 entries after "
              "the first quarter:")
        print()
        for line in grown:
            print(f"- {line}")
    else:
        print("No container held by the agent's objects grew by more than 16 entries after the "
              "first quarter.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"configurations, from {', '.join(CONFIGS)}")
    parser.add_argument("--runs", default="rss,traced", help="rss, traced or both")
    parser.add_argument("--rate", type=float, default=0.1, help="sampling rate of the agent")
    parser.add_argument("--requests", type=int, default=200_000,
                        help="requests of an rss run after the warm-up")
    parser.add_argument("--traced-requests", type=int, default=None,
                        help="requests of a traced run (default: as --requests)")
    parser.add_argument("--wave", type=int, default=2000,
                        help="requests per wave (new threads; a sample after each)")
    parser.add_argument("--threads", type=int, default=4, help="threads sending each wave")
    parser.add_argument("--warmup", type=int, default=4000, help="warm-up requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8, help="tracemalloc frames kept")
    parser.add_argument("--top", type=int, default=12, help="growing sites listed")
    parser.add_argument("--max-orders", type=int, default=0,
                        help="the shop's order bound (0: its own, 100,000)")
    parser.add_argument("--helper-cpu", type=int, default=0 if (os.cpu_count() or 1) > 1 else -1,
                        help="CPU of the collector and hanging receiver (-1: not pinned)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20,000 requests (traced 10,000), waves of 1,000")
    parser.add_argument("--json", help="write every run's raw figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="rss", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--hang-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hang_receiver:
        return hang_receiver()
    if args.child:
        args.config = args.child
        return child(args)
    if args.quick:
        args.requests, args.wave, args.warmup = 20_000, 1000, 2000
        args.traced_requests = args.traced_requests or 10_000
    if args.traced_requests is None:
        args.traced_requests = args.requests
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    if not args.config_list or any(c not in CONFIGS for c in args.config_list):
        parser.error(f"configurations are {', '.join(CONFIGS)}")
    if not kinds or any(k not in ("rss", "traced") for k in kinds):
        parser.error("runs are rss and traced")

    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="runcov-memory-") as tmp:
        for kind in kinds:
            for config in args.config_list:
                print(f"{config} ({kind})...", file=sys.stderr, flush=True)
                results[(config, kind)] = run_config(args, config, kind, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{c}/{k}": r for (c, k), r in results.items()},
                                              indent=1))
    report(args, results, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
