"""The shop as a FastAPI service, instrumented with OpenTelemetry and measured by runcov."""

from __future__ import annotations
