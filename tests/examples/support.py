"""Helpers for the example tests: start a real collector and the example apps as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(url: str, method: str = "GET", body: Any = None,
            timeout: float = 10.0) -> tuple[int, Any]:
    """``(status, JSON body)`` of one request; HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        exc.close()
        return exc.code, json.loads(raw or b"null")


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200; fail with the process's log if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{log.read_text()}")


class Service:
    """A subprocess with its log file; stopped with SIGTERM, then killed."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path,
                 cwd: Optional[Path] = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=cwd)

    def stop(self) -> None:
        """Stop the process and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_collector(workdir: Path) -> tuple[Service, str]:
    """``runcov-collector serve`` on a free port with a SQLite store in ``workdir``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}
    service = Service(
        [str(BIN / "runcov-collector"), "serve", "--http-port", str(port), "--grpc-port", "-1",
         "--store", f"sqlite:///{workdir / 'collector.db'}", "--no-auth",
         "--log-level", "WARNING"],
        env, workdir / "collector.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(service.proc, url + "/readyz", service.log)
    except BaseException:
        service.stop()
        raise
    return service, url


def start_app(module: str, collector_url: str, workdir: Path, *, version: str = "1.0",
              role: str = "baseline", extra: Optional[dict[str, str]] = None
              ) -> tuple[Service, str]:
    """``python -m <module>`` from ``examples/``, measuring every request into the collector."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOV_", "OTEL_"))}
    env.update({
        "OTEL_SERVICE_NAME": module,
        "OTEL_RESOURCE_ATTRIBUTES": f"service.version={version}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url,
        "RUNCOV_ROLE": role,
        "RUNCOV_MAX_PER_SECOND": "0",
        "RUNCOV_SATURATION": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(extra or {}),
    })
    service = Service([sys.executable, "-m", module, "--port", str(port), "--sample-rate", "1"],
                      env, workdir / f"{module}.log", cwd=EXAMPLES)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(service.proc, url + "/health", service.log)
    except BaseException:
        service.stop()
        raise
    return service, url


def wait_for_coverage(collector_url: str, service: str, minimum_requests: int,
                      timeout: float = 30) -> dict[str, Any]:
    """The collector's ``/api/v1/coverage`` answer once it holds enough requests of a service."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, last = request(f"{collector_url}/api/v1/coverage?service={service}&detail=1")
        if status == 200 and last["totals"]["requests"] >= minimum_requests:
            return dict(last)
        time.sleep(0.3)
    raise AssertionError(f"collector has no coverage of {service} after {timeout} s: {last}")
