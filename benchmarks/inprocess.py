"""The example shop served with runcov started in this process, and the switch that the A/B
benchmarks share (``bench_agent_ab.py``, ``bench_agent_spread.py``, the server of
``bench_service_ab.py``): runcov's span processor attached or detached, the tool's global
sys.monitoring events on or off."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class ShopUnderAgent:
    """The shop's app and runcov's agent, with what :meth:`attach` switches."""

    app: Any
    agent: Any
    #: The OpenTelemetry SDK's multi-span processor, and its processors with and without
    #: runcov's.
    multi: Any
    with_runcov: tuple[Any, ...]
    without: tuple[Any, ...]
    #: ``sys.monitoring`` (None before 3.12), runcov's tool id and its global events.
    mon: Any
    tool: Optional[int]
    events: int

    def watch_sampling(self) -> threading.local:
        """Wrap the agent's ``begin`` so that each request tells whether it was sampled: the
        returned thread-local's ``flag`` turns True on the thread of a request that ``begin``
        measured (the caller sets it False before each request)."""
        sampled = threading.local()
        real_begin = self.agent.begin

        def begin(*args: Any, **kwargs: Any) -> Any:
            ticket = real_begin(*args, **kwargs)
            if ticket is not None:
                sampled.flag = True
            return ticket

        self.agent.begin = begin
        return sampled

    def attach(self, processor: bool, events: bool) -> None:
        """Attach or detach runcov's span processor; set or clear the tool's global events
        (its local events stay as they are)."""
        self.multi._span_processors = self.with_runcov if processor else self.without
        if self.mon is not None and self.tool is not None:
            self.mon.set_events(self.tool, self.events if events else 0)


def nominal_agent_env(endpoint: str, service_name: str) -> None:
    """The environment of an agent that exports to ``endpoint`` and samples exactly its rate
    (no rate cap, no saturation boost), for :func:`start_shop` in this process."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    os.environ["RUNCOV_MAX_PER_SECOND"] = "0"
    os.environ["RUNCOV_SATURATION"] = "0"


def start_shop(rate: float, app_name: str = "flask") -> ShopUnderAgent:
    """Set up the shop's tracing, start runcov at ``rate`` on the shop's endpoints and build
    the Flask (or FastAPI) app. The ``OTEL_*``/``RUNCOV_*`` environment is the caller's."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from opentelemetry import trace
    from shop.serving import ENDPOINTS, SOURCE_ROOT, setup_tracing

    import runcov

    if app_name == "fastapi":
        from shop_fastapi.app import create_app
    else:
        from shop_flask.app import create_app

    logging.disable(logging.WARNING)  # export retries against a closed port are expected
    setup_tracing()
    agent = runcov.start(source=[SOURCE_ROOT], endpoints=ENDPOINTS, sample_rate=rate)
    app = create_app(agent=agent)
    multi = trace.get_tracer_provider()._active_span_processor  # type: ignore[attr-defined]
    with_runcov = tuple(multi._span_processors)
    without = tuple(p for p in with_runcov if "Runcov" not in type(p).__name__)
    mon: Any = getattr(sys, "monitoring", None)
    tool = getattr(agent.core, "tool_id", None)
    events = mon.get_events(tool) if mon is not None and tool is not None else 0
    return ShopUnderAgent(app, agent, multi, with_runcov, without, mon, tool, events)
