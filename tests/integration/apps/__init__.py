"""Small real services measured by the integration tests (their directory is the source root)."""
