"""runcov's OpenTelemetry integration: the span processor that measures server spans."""

from __future__ import annotations

from runcov.otel.processor import RuncovSpanProcessor

__all__ = ["RuncovSpanProcessor"]
