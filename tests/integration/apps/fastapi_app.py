"""A FastAPI service (instrumented by the test with opentelemetry-instrumentation-fastapi)."""

from __future__ import annotations

import fastapi

from tests.integration.apps.shop import logic


def create_app() -> fastapi.FastAPI:
    """The service: async and sync (thread pool) item endpoints, a health check and a
    websocket feed answering item ids."""
    app = fastapi.FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, q: int = 1) -> dict[str, int]:
        return logic.describe(item_id, q)

    @app.get("/sync/items/{item_id}")
    def sync_item(item_id: int, q: int = 1) -> dict[str, int]:
        return logic.describe(item_id, q)

    @app.get("/health")
    async def health() -> str:
        return logic.health()

    @app.websocket("/ws/items/{room}")
    async def item_feed(websocket: fastapi.WebSocket, room: str) -> None:
        await websocket.accept()
        while (message := await websocket.receive_text()) != "bye":
            await websocket.send_json({"room": room, **logic.describe(int(message), 1)})
        await websocket.close()

    return app
