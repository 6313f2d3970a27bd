"""runcov collector: receives runcov coverage over OTLP and keeps live coverage per release."""

__version__ = "0.1.0"
