"""The shop as a Flask service, instrumented with OpenTelemetry and measured by runcov."""

from __future__ import annotations
