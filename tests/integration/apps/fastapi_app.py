"""A FastAPI service (instrumented by the test with opentelemetry-instrumentation-fastapi)."""

from __future__ import annotations

import fastapi

from tests.integration.apps.shop import logic


def create_app() -> fastapi.FastAPI:
    """The service: async and sync (thread pool) item endpoints and a health check."""
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

    return app
