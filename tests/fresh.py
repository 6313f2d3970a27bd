"""Running a script in a fresh interpreter, for tests that need a process of their own (what
happens at start, at import, before anything was instrumented)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterable, Optional

#: The repository root: ``python -m tests.<module>`` runs from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environ_without(prefixes: Iterable[str], keep: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment without the variables whose names start with one of
    ``prefixes``, except those named in ``keep``."""
    prefixes = tuple(prefixes)
    kept = set(keep)
    return {k: v for k, v in os.environ.items() if k in kept or not k.startswith(prefixes)}


def run_python(
    *args: str,
    env: Optional[dict[str, str]] = None,
    cwd: Optional[str] = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python *args`` with this test run's interpreter, its output captured as text; the
    test fails with the end of its standard error when it exits with an error."""
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done
