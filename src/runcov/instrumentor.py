"""The ``opentelemetry-instrument`` entry point: start runcov from the environment."""

from __future__ import annotations

import logging
from typing import Any, Collection

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

log = logging.getLogger("runcov")

__all__ = ["RuncovInstrumentor"]

class RuncovInstrumentor(BaseInstrumentor):
    """Starts the runcov agent under ``opentelemetry-instrument`` (entry point ``runcov``).

    ``opentelemetry-instrument`` loads instrumentors after the distro's configurator has set
    the global tracer provider, so the span processor is attached to it right away (and to a
    provider set later, should the application replace it). Nothing happens unless
    ``RUNCOV_ENABLED`` is true or ``RUNCOV_SOURCE`` is set. A configuration error is logged
    (the service must not fail to boot because of its coverage agent) and runcov stays off.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """runcov instruments no particular library."""
        return []

    def _instrument(self, **kwargs: Any) -> None:
        from runcov.agent import Agent, current_agent, enabled_by_env
        from runcov.errors import RuncovError

        if not enabled_by_env():
            log.debug("runcov: not enabled (set RUNCOV_ENABLED=true or RUNCOV_SOURCE)")
            return

        try:
            agent = current_agent() or Agent.start_from_environment()
        except RuncovError as exc:
            log.error("runcov is off: %s", exc)
            return
        except Exception:
            log.exception("runcov is off: it could not start")
            return
        from opentelemetry import trace

        agent.attach(trace.get_tracer_provider())

    def _uninstrument(self, **kwargs: Any) -> None:
        from runcov.agent import stop

        stop()
