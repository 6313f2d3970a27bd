"""Runs named requests of the sample shop under runcov's own tracer; prints their coverage.

One JSON object per request on stdout: ``{"name": ..., "files": {path: [lines, arcs]}}``, with
paths relative to this directory. The shop is imported inside the first request's capture,
as it would be on a service's first request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runcov.testing import capture_coverage

ROOT = Path(__file__).resolve().parent

for name in sys.argv[1:]:
    with capture_coverage(source=[str(ROOT / "shop")]) as captured:
        from drive import REQUESTS

        REQUESTS[name][1]()
    files = {
        Path(path).resolve().relative_to(ROOT).as_posix(): [
            sorted(captured.lines.get(path, ())), sorted(captured.arcs.get(path, ()))
        ]
        for path in set(captured.lines) | set(captured.arcs)
    }
    print(json.dumps({"name": name, "traced": captured.traced, "files": files}))
