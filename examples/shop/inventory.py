"""Stock levels: check, reserve and release units, safely across request threads."""

from __future__ import annotations

import threading

from shop.catalog import list_products
from shop.errors import OutOfStock

_INITIAL_STOCK = 10_000


class Inventory:
    """Units in stock per product id; reservations are atomic over all lines of an order."""

    def __init__(self, initial: int = _INITIAL_STOCK) -> None:
        self._lock = threading.Lock()
        self._stock = {p.id: initial for p in list_products() if p.physical}

    def available(self, product_id: int) -> int:
        """Units available (digital products are unlimited: -1)."""
        with self._lock:
            return self._stock.get(product_id, -1)

    def reserve(self, wanted: dict[int, int]) -> None:
        """Take ``wanted`` units of each product, all or nothing."""
        with self._lock:
            for product_id, qty in wanted.items():
                have = self._stock.get(product_id)
                if have is not None and have < qty:
                    raise OutOfStock(f"product {product_id}: {have} left, {qty} wanted")
            for product_id, qty in wanted.items():
                if product_id in self._stock:
                    self._stock[product_id] -= qty

    def release(self, wanted: dict[int, int]) -> None:
        """Give back units taken by :meth:`reserve` (a failed payment, a cancellation)."""
        with self._lock:
            for product_id, qty in wanted.items():
                if product_id in self._stock:
                    self._stock[product_id] += qty

    def set_level(self, product_id: int, units: int) -> None:
        """Set the stock of a physical product (used to stage out-of-stock situations)."""
        with self._lock:
            if product_id in self._stock:
                self._stock[product_id] = units
