"""Tracing cores behind one interface, and the chooser that picks one per process."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Optional

from runcov.tracing._base import CENSUS, EXACT, Core, CoverageData, Scope

log = logging.getLogger("runcov.tracing")

_core: Optional[Core] = None
_lock = threading.Lock()

#: ``RUNCOV_CORE`` forces a core: ``sysmon`` or ``settrace`` (default: best available).
CORE_ENV = "RUNCOV_CORE"


def get_core() -> Core:
    """The process-wide tracing core, created (and chosen) on first use."""
    global _core
    core = _core
    if core is not None:
        return core
    with _lock:
        if _core is None:
            _core = _choose()
        return _core


def _choose() -> Core:
    wanted = os.environ.get(CORE_ENV, "").strip().lower()
    if wanted not in ("", "sysmon", "settrace"):
        raise ValueError(f"{CORE_ENV}={wanted!r}: expected 'sysmon' or 'settrace'")
    if wanted != "settrace" and sys.version_info >= (3, 12):
        from runcov.tracing.sysmon import SysmonCore, ToolUnavailable

        try:
            core = SysmonCore()
        except ToolUnavailable as exc:
            log.warning("runcov: using the settrace core: %s", exc)
        else:
            log.info(
                "runcov: using the sys.monitoring core (tool id %d, %s recording callbacks) on "
                "Python %s",
                core.tool_id,
                "C" if core.accelerated else "Python",
                sys.version.split()[0],
            )
            return core
    elif wanted == "sysmon":
        raise ValueError(f"{CORE_ENV}=sysmon needs Python 3.12+, this is {sys.version.split()[0]}")
    from runcov.tracing.settrace import SettraceCore

    core = SettraceCore()
    how = "C" if core.accelerated else "Python"
    if wanted != "settrace" and sys.version_info < (3, 12):
        log.info(
            "runcov: using the settrace core (%s trace function): Python %s has no sys.monitoring",
            how,
            sys.version.split()[0],
        )
    elif wanted == "settrace":
        log.info("runcov: using the settrace core (%s trace function): %s=settrace", how, CORE_ENV)
    return core


def reset_core() -> None:
    """Shut the process-wide core down; the next :func:`get_core` chooses again (tests)."""
    global _core
    with _lock:
        if _core is not None:
            _core.shutdown()
        _core = None


__all__ = ["CENSUS", "EXACT", "Core", "CoverageData", "Scope", "get_core", "reset_core"]
