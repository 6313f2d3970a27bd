"""runcov: production runtime coverage, sampled per request, exported over OpenTelemetry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Config",
    "ConfigError",
    "RuncovError",
    "__version__",
    "critical",
    "start",
    "stop",
    "watch",
]

if TYPE_CHECKING:
    from runcov._critical import critical, watch
    from runcov.agent import Agent
    from runcov.config import Config
    from runcov.errors import ConfigError, RuncovError

# Imported on first use, so that ``import runcov`` (e.g. by the CLI's report commands, or a
# sitecustomize) stays cheap and pulls in neither OpenTelemetry nor the tracing core.
_LAZY = {
    "Agent": "runcov.agent",
    "Config": "runcov.config",
    "ConfigError": "runcov.errors",
    "RuncovError": "runcov.errors",
    "critical": "runcov._critical",
    "watch": "runcov._critical",
}


def start(**options: Any) -> Agent:
    """Start runcov in this process and return the agent (see :meth:`runcov.Agent.start`).

    Options are :class:`runcov.Config` fields (``source``, ``endpoints``, ``sample_rate``...);
    unset ones come from ``RUNCOV_*`` environment variables, then defaults. A bad value raises
    :class:`ConfigError`; tracing problems never reach the application.
    """
    from runcov.agent import Agent

    return Agent.start(**options)


def stop(timeout: float = 5.0) -> None:
    """Stop the running agent, sending what it measured (waiting up to ``timeout`` s)."""
    from runcov.agent import stop as _stop

    _stop(timeout)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runcov' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
