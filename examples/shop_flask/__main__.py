"""Serve the Flask shop with waitress: ``python -m shop_flask --port 8000 --sample-rate 0.05``."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Optional

import waitress

import runcov
from shop.serving import ENDPOINTS, SOURCE_ROOT, parse_args, setup_tracing
from shop_flask.app import create_app


def _stop_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(0)


def main() -> int:
    """Start tracing, runcov and the app, then serve until SIGTERM/SIGINT."""
    args = parse_args("python -m shop_flask")
    setup_tracing()
    agent: Any = None
    if not args.no_agent:
        # sample_rate None (no --sample-rate) leaves it to RUNCOV_SAMPLE_RATE or the default.
        agent = runcov.start(source=[SOURCE_ROOT], endpoints=ENDPOINTS,
                             sample_rate=args.sample_rate)
    app = create_app(agent=agent)
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"shop_flask serving on http://{args.host}:{server.effective_port}", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
        if agent is not None:
            runcov.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
