"""The collector's web dashboard: server-rendered pages over the store (Jinja2, a little JS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from runcov_collector.dashboard.pages import STATIC_PREFIX, Dashboard
from runcov_collector.model import Store

__all__ = ["routes"]


def routes(store: Store, config: Any) -> list[BaseRoute]:
    """Dashboard routes: ``/`` and ``/ui/...``; reads ``source_dir``/``trace_url_template``."""
    dash = Dashboard(store, config)
    return [
        Route("/", dash.page(dash.index), methods=["GET"], name="dashboard"),
        Route("/ui/service", dash.page(dash.service), methods=["GET"]),
        Route("/ui/release", dash.page(dash.release), methods=["GET"]),
        Route("/ui/file", dash.page(dash.file), methods=["GET"]),
        Route("/ui/diff", dash.page(dash.diff), methods=["GET"]),
        Mount(STATIC_PREFIX, StaticFiles(directory=str(Path(__file__).with_name("static"))),
              name="dashboard-static"),
    ]
