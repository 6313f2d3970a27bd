"""runcov's SIGTERM handler: installed only where SIGTERM has its default action, on the main
thread, and never over a handler of the application's (uvicorn under SIGTERM: see
tests/integration/test_framework_hooks_more.py)."""

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
handler = signal.getsignal(signal.SIGTERM)
print("own" if handler is own else "default" if handler is signal.SIG_DFL else "runcov")
"""


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        ("default", {}, "runcov"),
        ("default", {"RUNCOV_FLUSH_ON_SIGTERM": "false"}, "default"),
        ("own", {}, "own"),
        ("thread", {}, "default"),
    ],
)
def test_the_handler_is_installed_only_over_the_default_action(
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
