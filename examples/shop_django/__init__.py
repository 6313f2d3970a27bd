"""The shop as a minimal Django project, instrumented with OpenTelemetry and measured by runcov."""

from __future__ import annotations
