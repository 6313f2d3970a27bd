"""Started by ``runcov run``: start runcov in every Python process of the command."""

from __future__ import annotations

import importlib
import os
import sys


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows (opentelemetry-instrument's, a venv's...)."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved_path = list(sys.path)
    mine = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        try:
            importlib.import_module("sitecustomize")
        except ModuleNotFoundError as exc:
            if exc.name != "sitecustomize":
                raise
    except Exception as exc:  # the other sitecustomize's failure is not runcov's to raise
        print(f"runcov: the chained sitecustomize failed: {exc!r}", file=sys.stderr)
    finally:
        sys.path[:] = saved_path
        if mine is not None:
            sys.modules["sitecustomize"] = mine


def _start() -> None:
    try:
        from runcov.agent import bootstrap

        bootstrap()
    except Exception as exc:  # never keep the application from starting
        print(f"runcov: not started: {exc}", file=sys.stderr)


_chain()
_start()
