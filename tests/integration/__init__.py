"""Integration tests: the runcov agent inside real web frameworks, exporting over real OTLP."""
