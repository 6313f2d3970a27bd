"""An HTTP request handed straight to an ASGI app, as a server would hand it (no socket).

Used by the in-process benchmarks (``bench_core.py --workload service``,
``bench_agent_instr.py --app fastapi``) to serve the FastAPI shop without a server's own cost.
"""

from __future__ import annotations

import asyncio
from typing import Any


def http_scope(method: str, target: str, body: bytes) -> dict[str, Any]:
    """The ASGI ``http`` scope of a JSON request for ``target`` (path and query string)."""
    path, _, query = target.partition("?")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"shop"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, scope: dict[str, Any], body: bytes) -> None:
    """Run ``app`` on one request: ``body`` in one message, the response discarded."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(dict(scope), receive, send)
