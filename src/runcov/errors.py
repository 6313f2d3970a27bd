"""The exceptions runcov raises to its callers."""

from __future__ import annotations

__all__ = ["ConfigError", "RuncovError"]


class RuncovError(Exception):
    """Base class of every exception runcov raises on purpose."""


class ConfigError(RuncovError, ValueError):
    """A configuration value is invalid.

    The message names the option (as an argument or ``RUNCOV_*`` variable), the offending value
    and why it was rejected, e.g. ``RUNCOV_SAMPLE_RATE='abc': not a number between 0 and 1``.
    """
