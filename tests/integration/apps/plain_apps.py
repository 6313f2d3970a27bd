"""Services without OpenTelemetry: a raw WSGI app and a raw ASGI app (for the middleware)."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from tests.integration.apps.shop import logic


def _route(path: str) -> tuple[str, int]:
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "items" and parts[1].isdigit():
        return "/items/{item_id}", int(parts[1])
    return path, 0


def route_of(path: str) -> str:
    """The route template of a path (the resolver the middleware is given)."""
    return _route(path)[0]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app answering ``/items/<id>`` and ``/health``; 404 otherwise."""
    route, item_id = _route(environ.get("PATH_INFO", "/"))
    if route == "/items/{item_id}":
        body = logic.describe(item_id, 1)
        status = "200 OK"
    elif route == "/health":
        body = {"status": logic.health()}
        status = "200 OK"
    else:
        body = {}
        status = "404 Not Found"
    start_response(status, [("content-type", "application/json")])
    return [json.dumps(body).encode()]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same service as an ASGI app."""
    if scope["type"] != "http":
        return
    route, item_id = _route(scope["path"])
    if route == "/items/{item_id}":
        body, status = logic.describe(item_id, 1), 200
    elif route == "/health":
        body, status = {"status": logic.health()}, 200
    else:
        body, status = {}, 404
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
