"""runcov's SIGTERM handler: installed only where SIGTERM has its default action, on the main
thread, never over a handler of the application's, and removed when the agent stops (uvicorn
under SIGTERM: see tests/integration/test_framework_hooks_more.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import signal, sys, threading
import runcov

def own(signum, frame):
    pass

case = sys.argv[1]
if case == "own":
    signal.signal(signal.SIGTERM, own)
if case == "thread":
    t = threading.Thread(target=runcov.start, kwargs={"source": [sys.argv[2]]})
    t.start()
    t.join()
else:
    runcov.start(source=[sys.argv[2]])

def name():
    handler = signal.getsignal(signal.SIGTERM)
    return "own" if handler is own else "default" if handler is signal.SIG_DFL else "runcov"

started = name()
if case == "later":  # the application's handler, installed after runcov's
    signal.signal(signal.SIGTERM, own)
runcov.stop(0.5)
print(started, name())
"""


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        ("default", {}, "runcov default"),
        ("default", {"RUNCOV_FLUSH_ON_SIGTERM": "false"}, "default default"),
        ("own", {}, "own own"),
        ("thread", {}, "default default"),
        ("later", {}, "runcov own"),
    ],
)
def test_the_handler_is_installed_only_over_the_default_action_and_removed_at_stop(
    tmp_path: Path, case: str, env: dict[str, str], expected: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOV_", "OTEL_"))}
    clean.update(RUNCOV_METRICS_INTERVAL="0", RUNCOV_EXPORTER_ENDPOINT="http://127.0.0.1:9", **env)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, case, str(tmp_path)], env=clean, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
