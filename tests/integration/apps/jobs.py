"""Background jobs (not HTTP requests) measured with ``@runcov.critical``."""

from __future__ import annotations

import asyncio

from tests.integration.apps.shop import logic


def settle(orders: list[int]) -> int:
    """Settle a batch of orders; odd ones pay a surcharge."""
    total = 0
    for item_id in orders:
        total += logic.price(item_id, 1)
    return total


async def restock(item_id: int) -> int:
    """Restock an item (async job)."""
    await asyncio.sleep(0)
    try:
        return logic.check_stock(item_id)
    except logic.OutOfStock:
        return -1


def failing() -> None:
    """A job that fails."""
    raise ValueError("job failed")
