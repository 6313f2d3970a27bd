"""Keyword arguments of the SDK's OTLP metric exporter, from the agent's configuration.

(Coverage spans are encoded and sent by runcov itself: :mod:`runcov.export.transport`.)
"""

from __future__ import annotations

from typing import Any

from runcov.config import Config


def otlp_metric_exporter_options(config: Config) -> dict[str, Any]:
    """Endpoint, headers, timeout, compression (and, for gRPC, transport security) of the OTLP
    metric exporter for the configured protocol."""
    grpc = config.exporter_protocol == "grpc"
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
    options: dict[str, Any] = {
        "endpoint": config.metrics_endpoint(),
        "headers": dict(config.exporter_headers) or None,
        "timeout": config.exporter_timeout,
        "compression": {"gzip": Compression.Gzip, "deflate": Compression.Deflate}.get(
            config.exporter_compression, Compression.NoCompression
        ),
    }
    if grpc:
        options["insecure"] = config.exporter_insecure("metrics")
    return options
