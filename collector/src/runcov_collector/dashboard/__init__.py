"""The collector's web dashboard: server-rendered pages over the store (Jinja2, a little JS)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

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
        Mount(STATIC_PREFIX, _NoSniffStatic(directory=str(Path(__file__).with_name("static"))),
              name="dashboard-static"),
    ]


class _NoSniffStatic(StaticFiles):
    """The dashboard's script and stylesheet, which browsers must take as the type served and
    never sniff as another (``X-Content-Type-Options: nosniff``)."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
