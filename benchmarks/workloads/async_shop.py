"""The shop handler served asynchronously: awaits between steps, like an ASGI app's handler."""

from __future__ import annotations

import asyncio

from . import shop


async def fetch_inventory(sku: str) -> int:
    """Pretends to ask a remote service; yields to the event loop."""
    await asyncio.sleep(0)
    return len(sku) * 3


async def handle(raw: str) -> str:
    """Parses, awaits lookups and renders, yielding to other tasks at every step."""
    request = shop.parse(raw)
    await asyncio.sleep(0)
    if request.path == "/checkout" and request.method == "POST":
        problems = shop.validate_order(request.body)
        if problems:
            await asyncio.sleep(0)
            return shop.render(422, {"errors": problems})
        stock = 0
        for entry in request.body["items"].split(",")[:3]:
            stock += await fetch_inventory(entry.partition("*")[0])
        totals = shop.price(request.body)
        totals["stock"] = float(stock)
        return shop.render(200, totals)
    if request.path.startswith("/items/"):
        available = await fetch_inventory(request.path)
        if available > 20:
            return shop.render(200, {"available": available})
    return shop.handle(raw)
