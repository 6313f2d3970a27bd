"""What every example app's entry point shares: its command line and its OpenTelemetry setup."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

#: The directory that holds ``shop/`` and the app packages: runcov's source root, so files are
#: reported as ``shop/pricing.py``, ``shop_flask/views.py``...
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)

#: Which requests runcov may sample: everything except health checks and admin calls.
ENDPOINTS = ["GET /health@0", "* /admin/*@0", "*"]


def parse_args(prog: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The example apps' common options."""
    parser = argparse.ArgumentParser(prog=prog, description="Run the example shop service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SHOP_PORT", "8000")))
    parser.add_argument("--threads", type=int, default=4, help="server worker threads")
    parser.add_argument("--sample-rate", type=float, default=None,
                        help="share of requests runcov measures (default: RUNCOV_SAMPLE_RATE "
                             "or runcov's default)")
    parser.add_argument("--no-agent", action="store_true",
                        help="serve without runcov (OpenTelemetry instrumentation stays on)")
    return parser.parse_args(argv)


def setup_tracing() -> None:
    """Install the OpenTelemetry SDK tracer provider, as an instrumented service does.

    The service's own spans are exported over OTLP only when ``SHOP_EXPORT_SPANS=1``; runcov
    exports its coverage spans through its own pipeline either way.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create())
    if os.environ.get("SHOP_EXPORT_SPANS") == "1":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)

