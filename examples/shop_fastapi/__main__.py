"""Serve the FastAPI shop with uvicorn: ``python -m shop_fastapi --port 8000``."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

import runcov
from shop.serving import ENDPOINTS, SOURCE_ROOT, parse_args, setup_tracing
from shop_fastapi.app import create_app


def main() -> int:
    """Start tracing, runcov and the app, then serve until SIGTERM/SIGINT."""
    args = parse_args("python -m shop_fastapi")
    setup_tracing()
    agent: Any = None
    if not args.no_agent:
        # sample_rate None (no --sample-rate) leaves it to RUNCOV_SAMPLE_RATE or the default.
        agent = runcov.start(source=[SOURCE_ROOT], endpoints=ENDPOINTS,
                             sample_rate=args.sample_rate)
    app = create_app(agent=agent)
    print(f"shop_fastapi serving on http://{args.host}:{args.port}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if agent is not None:
            runcov.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
