"""runcov: production runtime coverage, sampled per request, exported over OpenTelemetry."""

__version__ = "0.1.0"
