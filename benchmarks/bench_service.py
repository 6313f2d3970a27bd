"""Overhead of runcov on a real service under load, next to no agent, coverage.py and slipcover.

The Flask example shop (``examples/shop_flask``: OpenTelemetry Flask instrumentation, waitress
with 4 threads) — or with ``--app fastapi`` the FastAPI shop under uvicorn — runs in a
subprocess under one configuration at a time while ``benchmarks/loadgen.py`` (4 keep-alive
connections, closed loop, the shop's traffic mix) drives it over loopback:

* ``none``            the instrumented service without runcov
* ``none-again``      the same once more: its ratio to ``none`` is the machine's noise
* ``runcov-0%`` ...   runcov started at 0 %, 1 %, 10 %, 100 % sampling, exporting to a running
                      collector (no per-second cap and no saturation adjustment, so the rate
                      is exactly what the name says)
* ``runcov-100%-py``  100 % with the tracing core's Python callbacks (``RUNCOV_ACCEL=0``)
                      instead of its C ones (not in the default set)
* ``runcov-census``   census of all traffic (``RUNCOV_MODE=census``): first hits only, each
                      tied to the request that made it (not in the default set)
* ``coverage``        the whole process under ``coverage run --branch`` (C tracer forced)
* ``slipcover``       the whole process under ``python -m slipcover --branch``

Every (configuration, repetition) is a fresh server process; repetitions are interleaved
(A B C ... B C A ... C A B ...: the order rotates) so that noise spreads over every
configuration. Per run: throughput,
p50/p99 latency, the server process's CPU time per request (all threads; warm-up included in
both CPU and request count, so one-off startup work such as the agent's static analysis of each
file counts), its steady-state CPU per request (CPU rate after the warm-up divided by the
measured throughput) and its RSS at the end. ``--pin`` runs the server on a CPU of its own.
The table shows medians over repetitions and the median of per-repetition ratios to ``none``
(same repetition, so same machine state).

    python benchmarks/bench_service.py             # full run: 5 repetitions (~6 minutes)
    python benchmarks/bench_service.py --quick     # smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent

CONFIGS = (
    "none",
    "none-again",
    "runcov-0%",
    "runcov-1%",
    "runcov-10%",
    "runcov-100%",
    "coverage",
    "slipcover",
)
#: Targets from the design: the cost in throughput, p99 latency and server CPU per request
#: (ratios to ``none``) must all stay under them.
TARGETS = {"runcov-1%": 1.02}
RATES = {
    "runcov-0%": "0",
    "runcov-1%": "0.01",
    "runcov-10%": "0.1",
    "runcov-100%": "1",
    "runcov-100%-py": "1",  # with RUNCOV_ACCEL=0: the tracing core's Python callbacks
    "runcov-census": "1",  # with RUNCOV_MODE=census: census sees all traffic
    # 3.11 with RUNCOV_EXACT_PROBES=0: exact scopes on the settrace tracer, not the probes
    "runcov-0%-traced": "0",
    "runcov-1%-traced": "0.01",
    "runcov-100%-traced": "1",
}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200 (fails when the process exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def rss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process in KiB (0 when unknown)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class ServerDidNotStart(RuntimeError):
    """The service did not answer its health check."""


class Bench:
    """Runs the configurations against one collector and collects the figures."""

    def __init__(self, app: str, workdir: Path, warmup: float, duration: float,
                 threads: int, pin: bool = False) -> None:
        self.app = app
        #: With ``pin``, the server runs on the last CPU and the load generator and collector on
        #: the others, so that they do not take turns on the server's CPU (less noise).
        self.server_cpus: Optional[set[int]] = None
        self.other_cpus: Optional[set[int]] = None
        if pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("--pin needs at least 2 CPUs")
            self.server_cpus, self.other_cpus = {cpus[-1]}, set(cpus[:-1])
        self.workdir = workdir
        self.warmup = warmup
        self.duration = duration
        self.threads = threads
        self.collector: Optional[subprocess.Popen[bytes]] = None
        self.collector_url = ""

    def start_collector(self) -> None:
        """A collector on a SQLite store, receiving the agent's coverage during the runs."""
        port = free_port()
        log = open(self.workdir / "collector.log", "wb")  # noqa: SIM115 - closed right after
        self.collector = subprocess.Popen(
            [str(BIN / "runcov-collector"), "serve", "--http-port", str(port), "--grpc-port",
             "-1", "--store", f"sqlite:///{self.workdir / 'collector.db'}", "--no-auth",
             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=self._pin_to(self.other_cpus))
        log.close()
        self.collector_url = f"http://127.0.0.1:{port}"
        wait_ready(self.collector, self.collector_url + "/readyz")

    @staticmethod
    def _pin_to(cpus: Optional[set[int]]) -> Any:
        """A ``preexec_fn`` that restricts the child to ``cpus`` (None: no restriction)."""
        if cpus is None:
            return None
        return lambda: os.sched_setaffinity(0, cpus)

    def command(self, config: str, port: int) -> tuple[list[str], dict[str, str]]:
        """The server command line and environment of one configuration."""
        module = f"shop_{self.app}"
        server = ["-m", module, "--port", str(port), "--threads", "4"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RUNCOV_", "OTEL_", "COVERAGE_"))}
        env.update({
            "PYTHONDONTWRITEBYTECODE": "1",
            "OTEL_SERVICE_NAME": f"bench-{self.app}",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.version={config}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector_url,
            "RUNCOV_MAX_PER_SECOND": "0",
            "RUNCOV_SATURATION": "0",
        })
        if config in RATES:
            if config.endswith("-py"):  # the tracing core's Python callbacks, not its C ones
                env["RUNCOV_ACCEL"] = "0"
            if config.endswith("-traced"):
                env["RUNCOV_EXACT_PROBES"] = "0"
            if config == "runcov-census":
                env["RUNCOV_MODE"] = "census"
            return [sys.executable, *server, "--sample-rate", RATES[config]], env
        server.append("--no-agent")
        if config == "coverage":
            env["COVERAGE_CORE"] = "ctrace"
            env["COVERAGE_FILE"] = str(self.workdir / ".coverage")
            return [sys.executable, "-m", "coverage", "run", "--branch", *server], env
        if config == "slipcover":
            return [sys.executable, "-m", "slipcover", "--branch", "--source", str(EXAMPLES),
                    "--out", str(self.workdir / "slipcover.json"), "--json", *server], env
        return [sys.executable, *server], env

    def run_one(self, config: str) -> dict[str, Any]:
        """Serve under ``config``, drive load, measure, stop; retried when the server fails to
        start (another process may take the free port between choosing it and binding it)."""
        for attempt in range(3):
            try:
                return self._run_one(config)
            except ServerDidNotStart:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _run_one(self, config: str) -> dict[str, Any]:
        port = free_port()
        cmd, env = self.command(config, port)
        log = open(self.workdir / f"{config}.log", "ab")  # noqa: SIM115 - closed right after
        proc = subprocess.Popen(cmd, cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=self._pin_to(self.server_cpus))
        log.close()
        try:
            try:
                wait_ready(proc, f"http://127.0.0.1:{port}/health")
            except RuntimeError as exc:
                raise ServerDidNotStart(str(exc)) from exc
            cpu_before = cpu_seconds(proc.pid)
            # Steady state: the server's CPU rate after the warm-up (startup work such as the
            # agent's one-off static analysis of each file falls into the warm-up), divided
            # by the measured throughput.
            mark: dict[str, float] = {}

            def take_mark() -> None:
                mark["cpu"], mark["at"] = cpu_seconds(proc.pid), time.monotonic()

            timer = threading.Timer(self.warmup + 0.2, take_mark)
            timer.start()
            load = subprocess.run(
                [sys.executable, str(HERE / "loadgen.py"), "--port", str(port),
                 "--threads", str(self.threads), "--warmup", str(self.warmup),
                 "--duration", str(self.duration)],
                capture_output=True, text=True, check=True,
                timeout=self.warmup + self.duration + 60,
                preexec_fn=self._pin_to(self.other_cpus))
            cpu_end, end_at = cpu_seconds(proc.pid), time.monotonic()
            timer.cancel()
            cpu = cpu_end - cpu_before
            result: dict[str, Any] = json.loads(load.stdout)
            result["cpu_us"] = cpu / max(1, result["all_requests"]) * 1e6
            if "cpu" in mark and result["throughput"] > 0:
                rate = (cpu_end - mark["cpu"]) / max(1e-6, end_at - mark["at"])
                result["steady_cpu_us"] = rate / result["throughput"] * 1e6
            else:
                result["steady_cpu_us"] = result["cpu_us"]
            result["rss_kib"], result["hwm_kib"] = rss_kib(proc.pid)
        finally:
            stop(proc)
        return result


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per configuration and medians of per-repetition ratios to ``none``."""
    base = runs["none"]
    summary: dict[str, dict[str, Any]] = {}
    for config, results in runs.items():
        pairs = list(zip(results, base))
        summary[config] = {
            "throughput": statistics.median(r["throughput"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "cpu_us": statistics.median(r["cpu_us"] for r in results),
            "cpu_ratio": statistics.median(r["cpu_us"] / b["cpu_us"] for r, b in pairs),
            "steady_cpu_us": statistics.median(r["steady_cpu_us"] for r in results),
            "steady_cpu_ratio": statistics.median(
                r["steady_cpu_us"] / b["steady_cpu_us"] for r, b in pairs),
            "rss_mib": statistics.median(r["rss_kib"] for r in results) / 1024,
            "errors": sum(r["errors"] for r in results),
            "throughput_ratio": statistics.median(
                r["throughput"] / b["throughput"] for r, b in pairs),
            "p50_ratio": statistics.median(r["p50_ms"] / b["p50_ms"] for r, b in pairs),
            "p99_ratio": statistics.median(r["p99_ms"] / b["p99_ms"] for r, b in pairs),
            "rss_delta_mib": statistics.median(
                (r["rss_kib"] - b["rss_kib"]) / 1024 for r, b in pairs),
        }
    return summary


def render(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """A Markdown table of the summary."""
    lines = [
        f"{meta['app']} example, {meta['server']}, {meta['threads']} client connections; "
        f"Python {meta['python']}, {meta['cpus']} CPUs, {meta['date']}; "
        f"{meta['repetitions']} interleaved repetitions of {meta['duration']} s "
        f"(after {meta['warmup']} s warm-up)",
        "",
        "| configuration | req/s | vs none | p50 ms | vs none | p99 ms | vs none "
        "| server CPU µs/req | vs none | steady CPU µs/req | vs none | RSS MiB | RSS vs none "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, s in summary.items():
        lines.append(
            f"| {config} | {s['throughput']:.0f} | {s['throughput_ratio']:.3f} "
            f"| {s['p50_ms']:.2f} | {s['p50_ratio']:.3f} | {s['p99_ms']:.2f} "
            f"| {s['p99_ratio']:.3f} | {s['cpu_us']:.0f} | {s['cpu_ratio']:.3f} "
            f"| {s['steady_cpu_us']:.0f} | {s['steady_cpu_ratio']:.3f} "
            f"| {s['rss_mib']:.1f} | {s['rss_delta_mib']:+.1f} "
            f"| {s['errors']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--app", choices=["flask", "fastapi"], default="flask")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4, help="client connections")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of: " + ", ".join(CONFIGS).replace("%", "%%"))
    parser.add_argument("--pin", action="store_true",
                        help="run the server on its own CPU, load generator and collector on "
                             "the others (steadier figures on a machine with few cores)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition of 1 s after 0.5 s warm-up")
    parser.add_argument("--json", type=Path, help="also write raw runs and summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repetitions, args.warmup, args.duration = 1, 0.5, 1.0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS) - set(RATES)
    if unknown or "none" not in configs:
        parser.error(f"unknown configurations {sorted(unknown)}" if unknown
                     else "the configurations must include 'none'")
    workdir = Path(tempfile.mkdtemp(prefix="runcov-bench-service-"))
    bench = Bench(args.app, workdir, args.warmup, args.duration, args.threads, pin=args.pin)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    try:
        bench.start_collector()
        for rep in range(args.repetitions):
            # Rotate the order each repetition so that no configuration always runs in the same
            # position (e.g. right after the most expensive one).
            shift = rep % len(configs)
            for config in configs[shift:] + configs[:shift]:
                result = bench.run_one(config)
                runs[config].append(result)
                print(f"rep {rep + 1}/{args.repetitions} {config:<12} "
                      f"{result['throughput']:7.0f} req/s  cpu {result['cpu_us']:5.0f} µs/req  "
                      f"p50 {result['p50_ms']:6.2f} ms  "
                      f"p99 {result['p99_ms']:6.2f} ms  rss {result['rss_kib'] / 1024:6.1f} MiB"
                      f"  errors {result['errors']}", file=sys.stderr, flush=True)
    finally:
        if bench.collector is not None:
            stop(bench.collector)
    meta = {
        "app": args.app,
        "server": "waitress, 4 threads" if args.app == "flask" else "uvicorn",
        "threads": args.threads,
        "pinned": args.pin,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "repetitions": args.repetitions,
        "warmup": args.warmup,
        "duration": args.duration,
    }
    summary = summarise(runs)
    print(render(summary, meta))
    for config, target in TARGETS.items():
        if config in summary:
            s = summary[config]
            # The target is on throughput and p99 latency; CPU is shown alongside.
            worst = max(1 / s["throughput_ratio"], s["p99_ratio"])
            verdict = "meets" if worst <= target else "MISSES"
            noise = summary.get("none-again")
            if noise:
                # The noise row's distance from 1.00 bounds what the run can tell: a ratio within
                # that distance of the target is neither a pass nor a miss.
                spread = max(abs(1 / noise["throughput_ratio"] - 1), abs(noise["p99_ratio"] - 1))
                if abs(worst - target) <= spread:
                    verdict = f"CANNOT TELL (within the noise, {spread:.1%}) whether it meets"
            noise_text = (f" (none-again, the noise: throughput {noise['throughput_ratio']:.3f}, "
                          f"p99 {noise['p99_ratio']:.3f}, steady CPU "
                          f"{noise['steady_cpu_ratio']:.3f})" if noise else "")
            print(f"\n{config}: throughput cost {1 / s['throughput_ratio']:.3f}x, p99 "
                  f"{s['p99_ratio']:.3f}x: {verdict} the {target}x target; CPU "
                  f"{s['cpu_ratio']:.3f}x (steady {s['steady_cpu_ratio']:.3f}x){noise_text}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                        indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
