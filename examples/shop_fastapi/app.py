"""The FastAPI application: async routes over the shared shop domain."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from shop.catalog import get_product, list_products
from shop.errors import ShopError, ValidationError
from shop.orders import Shop


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValidationError("body is not valid JSON") from exc


def create_app(shop: Optional[Shop] = None, agent: Any = None) -> FastAPI:
    """The shop's FastAPI app; ``agent`` is the running runcov agent, if any."""
    app = FastAPI(title="shop")
    app.state.shop = shop if shop is not None else Shop()
    app.state.agent = agent

    @app.exception_handler(ShopError)
    async def shop_error(request: Request, exc: ShopError) -> JSONResponse:
        return JSONResponse(exc.as_dict(), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/products")
    async def products(category: Optional[str] = None, max_price: Optional[int] = None) -> Any:
        found = list_products(category, max_price)
        return {"products": [p.as_dict() for p in found]}

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> Any:
        item = get_product(product_id)
        return {**item.as_dict(), "available": app.state.shop.inventory.available(product_id)}

    @app.post("/quote")
    async def quote(request: Request) -> Any:
        return app.state.shop.quote(await _body(request)).as_dict()

    @app.post("/orders", status_code=201)
    async def place_order(request: Request) -> Any:
        body = await _body(request)
        # The payment provider call blocks, so the order is placed on a worker thread.
        order = await asyncio.to_thread(app.state.shop.place_order, body)
        return order.as_dict()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Any:
        return app.state.shop.get_order(order_id).as_dict()

    @app.post("/orders/{order_id}/cancel")
    async def cancel_order(order_id: str) -> Any:
        return app.state.shop.cancel_order(order_id).as_dict()

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Any:
        body = await _body(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be an object of fault rates")
        app.state.shop.faults.update(body)
        return {"faults": app.state.shop.faults.rates}

    @app.post("/admin/flush")
    async def flush() -> Any:
        agent = app.state.agent
        flushed = bool(await asyncio.to_thread(agent.flush, 10.0)) if agent is not None else False
        return {"flushed": flushed, "agent": agent is not None}

    FastAPIInstrumentor.instrument_app(app)
    return app
