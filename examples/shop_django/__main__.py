"""Serve the Django shop with waitress: ``python -m shop_django --port 8000``."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, Optional

import waitress

import runcov
from shop.serving import ENDPOINTS, SOURCE_ROOT, parse_args, setup_tracing


def _stop_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(0)


def main() -> int:
    """Start tracing, runcov and Django, then serve until SIGTERM/SIGINT."""
    args = parse_args("python -m shop_django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_django.settings")
    setup_tracing()
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    # Must run before Django loads its settings: it adds its middleware to MIDDLEWARE.
    DjangoInstrumentor().instrument()
    agent: Any = None
    if not args.no_agent:
        # sample_rate None (no --sample-rate) leaves it to RUNCOV_SAMPLE_RATE or the default.
        agent = runcov.start(source=[SOURCE_ROOT], endpoints=ENDPOINTS,
                             sample_rate=args.sample_rate)
    from django.core.wsgi import get_wsgi_application

    from shop_django import views

    views.AGENT = agent
    app = get_wsgi_application()
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"shop_django serving on http://{args.host}:{server.effective_port}", flush=True)
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
