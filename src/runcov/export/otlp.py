"""Keyword arguments of the OTLP exporters (spans and metrics), from the agent's configuration."""

from __future__ import annotations

from typing import Any

from runcov.config import Config


def otlp_exporter_options(config: Config, signal: str) -> dict[str, Any]:
    """Endpoint, headers, timeout, compression (and, for gRPC, transport security) of the OTLP
    exporter of ``signal`` (``"traces"`` or ``"metrics"``) for the configured protocol."""
    grpc = config.exporter_protocol == "grpc"
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
    options: dict[str, Any] = {
        "endpoint": config.traces_endpoint() if signal == "traces" else config.metrics_endpoint(),
        "headers": dict(config.exporter_headers) or None,
        "timeout": config.exporter_timeout,
        "compression": Compression.Gzip
        if config.exporter_compression == "gzip"
        else Compression.NoCompression,
    }
    if grpc:
        options["insecure"] = config.exporter_insecure()
    return options
