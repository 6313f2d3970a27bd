"""Getting coverage out of the process: wire encoding and the OTLP span exporter."""

from __future__ import annotations
