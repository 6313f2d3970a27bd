"""The one-command runcov demo (``./dev demo``): collector, baseline and canary, game day, reports.

It starts a collector on an embedded SQLite store, serves release 1.0 of the Flask shop as the
baseline and release 1.1 (one new discount branch, committed in a throwaway git repository) as
the canary, drives the same few hundred requests at each, then shows what runcov answers: a
report per release, the canary-vs-baseline diff, a gate on the canary's changed lines, a game
day that injects payment-provider faults and gates on the error-handling paths, and an LCOV
export.
Everything lives under ``.demo/`` and every process it starts is stopped when it ends, fails or
is interrupted. Exit status: 0 when every step did what it should, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any, Optional, Sequence

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
BIN = Path(sys.executable).parent
SERVICE = "shop"
ENVIRONMENT = "demo"

#: Release 1.1: orders spanning three or more categories get a bundle discount. Inserted into
#: ``shop/pricing.py`` before ANCHOR, so the canary runs real, changed code.
ANCHOR = "    total = sum(quote.discounts.values())\n"
CANARY_CHANGE = (
    "    if len(categories) >= 3:\n"
    "        # 1.1: bundle discount for baskets spanning three or more categories\n"
    "        quote.discounts[\"bundle\"] = quote.subtotal * 4 // 100\n"
)
#: Traffic seeds per instance, so every run sends the same requests. Baseline and canary share
#: one: they get the same requests in the same order, so what differs between their coverage is
#: what release 1.1's code change does, not which requests each happened to get.
SEEDS = {"baseline": 1, "canary": 1, "game-day": 3}
#: Faults injected on the game day, as the payment provider's bad day.
GAME_DAY_FAULTS = "payment_timeout=0.35,payment_error=0.25,payment_decline=0.05"
#: The error-handling code a game day must exercise.
ERROR_PATHS = [
    "shop/payments.py::PaymentGateway.charge",
    "shop/payments.py::PaymentGateway.give_up",
    "shop/orders.py::Shop.rollback",
]


def _show(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


class StepFailed(Exception):
    """A demo step did not do what it should."""


def banner(text: str) -> None:
    """Print a step title."""
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    """``url``'s JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


class Processes:
    """The demo's child processes: started with logs under ``.demo/logs``, always stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str],
              cwd: Optional[Path] = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with its output going to ``.demo/logs/<name>.log``."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
        log.close()
        self.running.append((name, proc))
        return proc

    def wait_ready(self, name: str, proc: subprocess.Popen[bytes], url: str,
                   timeout: float = 30.0) -> None:
        """Wait until ``url`` answers 200, failing early when the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StepFailed(f"{name} exited with status {proc.returncode}; "
                                 f"see {self.logs / (name + '.log')}:\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise StepFailed(f"{name} did not become ready at {url} within {timeout:.0f} s")

    def tail(self, name: str, lines: int = 20) -> str:
        """The end of a process's log."""
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        """Stop one process gracefully (SIGTERM, so the agent flushes), then by force."""
        for entry in list(self.running):
            if entry[0] == name:
                self._stop(entry[1])
                self.running.remove(entry)

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        while self.running:
            _, proc = self.running.pop()
            self._stop(proc)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class Demo:
    """The demo's steps, in order."""

    def __init__(self, workdir: Path, requests: int, keep_running: bool = False) -> None:
        self.workdir = workdir
        self.requests = requests
        self.keep_running = keep_running
        self.finished = False
        self.logs = workdir / "logs"
        self.procs = Processes(self.logs)
        self.collector_url = ""
        self.src = workdir / "src"
        self.baseline_src = workdir / "baseline"

    # -- helpers ------------------------------------------------------------------------------

    def runcov(self, *args: str, expect: int = 0, cwd: Optional[Path] = None) -> str:
        """Run ``runcov <args>`` against the demo collector, print its output, check its status."""
        cmd = [str(BIN / "runcov"), *args]
        shown = " ".join(a if " " not in a else repr(a) for a in ["runcov", *args])
        print(f"$ {'cd ' + _show(cwd) + ' && ' if cwd else ''}{shown}", flush=True)
        env = {**os.environ, "RUNCOV_COLLECTOR_URL": self.collector_url, "RUNCOV_PROGRESS": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60,
                              check=False, cwd=cwd)
        # stderr is shown too, as a terminal would: it carries what the command did ("wrote
        # ...") and its warnings (a file left out, a checkout that differs from the release).
        out = "\n".join(text.rstrip() for text in (proc.stdout, proc.stderr) if text.strip())
        print(out or "(no output)", flush=True)
        if proc.returncode != expect:
            raise StepFailed(f"`{shown}` exited with {proc.returncode}, expected {expect} "
                             "(its output is above)")
        print(f"(exit status {proc.returncode}, as expected)", flush=True)
        return proc.stdout

    def service_env(self, version: str, role: str, faults: str = "") -> dict[str, str]:
        """The environment of one shop instance: who it is and where its coverage goes."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOV_", "OTEL_"))}
        env.update({
            "OTEL_SERVICE_NAME": SERVICE,
            "OTEL_RESOURCE_ATTRIBUTES":
                f"service.version={version},deployment.environment.name={ENVIRONMENT}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "RUNCOV_ROLE": role,
            # A demo measures every request; production would sample 1-10 % with a cap.
            "RUNCOV_MAX_PER_SECOND": "0",
            "RUNCOV_SATURATION": "0",
            "RUNCOV_METRICS_INTERVAL": "5",
            "SHOP_FAULTS": faults,
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    def start_shop(self, name: str, src: Path, version: str, role: str, faults: str = "") -> int:
        """Start the Flask shop from ``src`` under waitress; returns its port."""
        port = free_port()
        proc = self.procs.start(
            name, [sys.executable, "-m", "shop_flask", "--port", str(port), "--sample-rate", "1"],
            self.service_env(version, role, faults), cwd=src)
        self.procs.wait_ready(name, proc, f"http://127.0.0.1:{port}/health")
        print(f"{name}: release {version} ({role}) on http://127.0.0.1:{port}, "
              f"source {_show(src)}", flush=True)
        return port

    def traffic(self, name: str, port: int, requests: int, bundles: int = 0) -> None:
        """Drive ``requests`` requests of the shop mix and ``bundles`` bundle orders at one
        instance and summarise the answers.

        One client thread: with several, which orders exist when a request picks one to read or
        cancel (and so the requests that follow) depends on thread timing, and the same seed
        would not give baseline and canary the same requests.
        """
        sys.path.insert(0, str(EXAMPLES))
        try:
            from traffic import drive
        finally:
            sys.path.pop(0)
        started = time.monotonic()
        tally = drive("127.0.0.1", port, requests, threads=1, seed=SEEDS[name], bundles=bundles)
        took = time.monotonic() - started
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(tally.statuses.items()))
        print(f"{name}: {tally.total} requests in {took:.1f} s ({codes})", flush=True)
        if tally.failures or tally.total != requests + bundles:
            raise StepFailed(f"{name}: {tally.failures} requests failed to get an answer")
        if not any(500 > code >= 400 for code in tally.statuses):
            raise StepFailed(f"{name}: traffic produced no client errors, the mix is broken")

    def flush(self, name: str, port: int) -> None:
        """Ask one instance's agent to send what it measured now."""
        answer = http_json(f"http://127.0.0.1:{port}/admin/flush", "POST", {}, timeout=30)
        if not answer.get("agent"):
            raise StepFailed(f"{name}: runcov is not running in the service")
        if not answer.get("flushed"):
            raise StepFailed(f"{name}: the agent could not flush its coverage to the collector")

    def wait_for_release(self, version: str, role: str, minimum: int) -> dict[str, Any]:
        """Wait until the collector has stored ``minimum`` requests of a release."""
        deadline = time.monotonic() + 30
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                releases = http_json(f"{self.collector_url}/api/v1/releases?service={SERVICE}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # 404: the service has sent nothing yet
                    raise StepFailed(f"collector query API answered {exc.code}") from exc
                releases = {}
            for rel in releases.get("releases", []):
                if rel.get("version") == version and rel.get("role") == role:
                    seen = rel
            if seen and seen.get("requests", 0) >= minimum and seen.get("lines_total", 0):
                print(f"collector has release {version} ({role}): {seen['requests']} sampled "
                      f"requests, {seen['lines_covered']}/{seen['lines_total']} lines", flush=True)
                return seen
            time.sleep(0.5)
        raise StepFailed(f"the collector did not receive release {version} ({role}) "
                         f"(last seen: {seen or 'nothing'})")

    # -- steps --------------------------------------------------------------------------------

    def prepare_sources(self) -> None:
        """Release 1.0 and 1.1 of the shop in a git repository; 1.0 also copied for the baseline."""
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in ("shop", "shop_flask"):
            shutil.copytree(EXAMPLES / package, self.src / package, ignore=ignore)
        git = ["git", "-C", str(self.src), "-c", "user.name=shop", "-c",
               "user.email=shop@example.invalid", "-c", "commit.gpgsign=false"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "shop 1.0"], check=True)
        subprocess.run([*git, "tag", "v1.0"], check=True)
        shutil.copytree(self.src, self.baseline_src, ignore=shutil.ignore_patterns(".git"))
        pricing = self.src / "shop" / "pricing.py"
        text = pricing.read_text()
        if text.count(ANCHOR) != 1:
            raise StepFailed("shop/pricing.py changed: cannot find where release 1.1's change goes")
        pricing.write_text(text.replace(ANCHOR, CANARY_CHANGE + ANCHOR))
        subprocess.run([*git, "commit", "-q", "-am", "shop 1.1: bundle discount"], check=True)
        subprocess.run([*git, "tag", "v1.1"], check=True)
        diff = subprocess.run([*git, "diff", "--stat", "v1.0", "v1.1"], check=True,
                              capture_output=True, text=True).stdout
        print(f"release 1.0 in {_show(self.baseline_src)}, release 1.1 in {_show(self.src)} "
              "(git tags v1.0, v1.1); the canary's change:")
        print("\n".join("    " + line for line in CANARY_CHANGE.splitlines()))
        print(diff.rstrip(), flush=True)

    def start_collector(self) -> None:
        """``runcov-collector serve`` on free loopback ports with an embedded SQLite store."""
        port = free_port()
        store = self.workdir / "collector.db"
        cmd = [str(BIN / "runcov-collector"), "serve", "--host", "127.0.0.1",
               "--http-port", str(port), "--grpc-port", str(free_port()),
               "--store", f"sqlite:///{store}", "--no-auth", "--log-level", "WARNING",
               "--source-dir", str(self.src)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}
        proc = self.procs.start("collector", cmd, env)
        self.collector_url = f"http://127.0.0.1:{port}"
        self.procs.wait_ready("collector", proc, f"{self.collector_url}/readyz")
        print(f"collector: {self.collector_url} (OTLP/HTTP + query API), store {store}",
              flush=True)

    def run(self) -> None:
        """Every step, in order."""
        started = time.monotonic()
        banner("1/8 Preparing releases 1.0 (baseline) and 1.1 (canary) of the Flask shop")
        self.prepare_sources()

        banner("2/8 Starting the runcov collector (embedded SQLite, no auth, loopback only)")
        self.start_collector()

        banner("3/8 Starting the shop: 1.0 as baseline, 1.1 as canary (runcov samples 100 %)")
        base_port = self.start_shop("baseline", self.baseline_src, "1.0", "baseline")
        canary_port = self.start_shop("canary", self.src, "1.1", "canary")

        bundles = max(10, self.requests // 20)
        banner(f"4/8 Driving traffic: {self.requests + bundles} requests at each release, "
               "the same requests in the same order")
        print(f"{self.requests} requests of the shop's mix (browsing, quotes, orders, mistakes) "
              f"and {bundles} orders spanning three or more categories, which 1.1 prices "
              "differently", flush=True)
        self.traffic("baseline", base_port, self.requests, bundles)
        self.traffic("canary", canary_port, self.requests, bundles)
        for name, port in (("baseline", base_port), ("canary", canary_port)):
            self.flush(name, port)
        total = self.requests + bundles
        self.wait_for_release("1.0", "baseline", total // 2)
        self.wait_for_release("1.1", "canary", total // 2)

        banner("5/8 runcov report: production coverage per release")
        print(f"(the runcov commands below reach the collector through "
              f"RUNCOV_COLLECTOR_URL={self.collector_url})", flush=True)
        common = ["--service", SERVICE, "--environment", ENVIRONMENT]
        self.runcov("report", *common, "--version", "1.0", "--role", "baseline")
        self.runcov("report", *common, "--version", "1.1", "--role", "canary")
        note("Every line and arc above was executed by a sampled request; the endpoint table "
             "says which routes ran how much code. Lines that run only at import time (imports, "
             "def and class lines) show as missed: no request executes them.")
        self.runcov("agent", *common, "--version", "1.1", "--role", "canary")
        note("runcov agent reads the agents' own metrics: requests seen, sampled and dropped "
             "(with the reason), each endpoint's current sample rate, and what measuring cost "
             "the service in CPU time.")

        banner("6/8 runcov diff (canary vs baseline) and the canary's gate on changed lines")
        self.runcov("diff", *common, "--a-version", "1.0", "--a-role", "baseline",
                    "--b-version", "1.1", "--b-role", "canary")
        note("Both releases got the same requests, so every difference is the code change: "
             "the bundle-discount lines run only in the canary, and the lines after them moved "
             "down by three (the diff compares line numbers, so a line that only moved shows up "
             "on both sides).")
        self.runcov("gate", *common, "--version", "1.1", "--role", "canary",
                    "--changed-since", "v1.0", "--source", str(self.src), "--threshold", "100")
        note("The gate reads `git diff v1.0` in the canary's checkout and passes because "
             "production traffic ran every changed executable line.")

        banner("7/8 Game day: payment provider failures injected, gate on error handling")
        print("Before the game day, normal traffic leaves the retry and give-up paths unrun, so "
              "the baseline fails this gate (exit 1 expected):", flush=True)
        gate_paths = ["--paths", *ERROR_PATHS, "--threshold", "90"]
        self.runcov("gate", *common, "--version", "1.0", "--role", "baseline", *gate_paths,
                    "--source", str(self.baseline_src), expect=1)
        print(f"\nStarting 1.1 with role game-day and SHOP_FAULTS={GAME_DAY_FAULTS}; it gets "
              f"{self.requests // 2} requests of the mix and {bundles} bundle orders", flush=True)
        game_port = self.start_shop("game-day", self.src, "1.1", "game-day", GAME_DAY_FAULTS)
        self.traffic("game-day", game_port, self.requests // 2, bundles)
        self.flush("game-day", game_port)
        self.wait_for_release("1.1", "game-day", (self.requests // 2 + bundles) // 2)
        self.runcov("gate", *common, "--version", "1.1", "--role", "game-day", *gate_paths,
                    "--source", str(self.src))
        note("Under injected faults production traffic ran the retry, give-up and rollback "
             "paths, so the same gate now passes for the game-day release.")

        banner("8/8 runcov export --format lcov (for any LCOV viewer or coverage service)")
        lcov = self.workdir / "shop-1.1-canary.lcov"
        self.runcov("export", *common, "--version", "1.1", "--role", "canary",
                    "--format", "lcov", "-o", str(lcov), "--source", ".", cwd=self.src)
        if not lcov.is_file() or "SF:" not in lcov.read_text():
            raise StepFailed(f"{lcov} was not written or holds no file records")
        records = lcov.read_text().count("SF:")
        print(f"{_show(lcov)} holds {records} file records ({lcov.stat().st_size} bytes); "
              "it starts:")
        print("\n".join("    " + line for line in lcov.read_text().splitlines()[:6]), flush=True)

        banner(f"Demo complete in {time.monotonic() - started:.0f} s")
        print(f"Logs are in {self.logs}; the collector's store is {self.workdir / 'collector.db'}.")
        self.finished = True
        if self.keep_running:
            print(f"\nThe collector keeps running: dashboard at {self.collector_url}/ "
                  f"(query API under {self.collector_url}/api/v1/). Press Ctrl-C to stop.",
                  flush=True)
            for name in ("baseline", "canary", "game-day"):
                self.procs.stop(name)
            while True:
                time.sleep(3600)


def note(text: str) -> None:
    """Print what a step's output shows."""
    print(f"-> {text}", flush=True)


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; 0 when every step succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=REPO / ".demo",
                        help="working directory, emptied first (default: .demo/)")
    parser.add_argument("--requests", type=int, default=300,
                        help="requests of the traffic mix per release (default 300); "
                             "orders spanning three or more categories come on top")
    parser.add_argument("--keep-running", action="store_true",
                        help="at the end, keep the collector and its dashboard up until Ctrl-C")
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (as a background job
    # of a non-interactive shell), where Python would not install its own handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    demo = Demo(workdir, args.requests, args.keep_running)
    try:
        demo.run()
    except StepFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if demo.finished:
            return 0
        print("\ndemo interrupted; stopping its processes", file=sys.stderr, flush=True)
        return 130
    finally:
        demo.procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
