"""Placing, reading and cancelling orders: validation, pricing, stock, payment, compensation."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any, Optional

from shop.errors import Conflict, NotFound, PaymentDeclined, PaymentUnavailable
from shop.faults import Faults
from shop.inventory import Inventory
from shop.payments import Charge, PaymentGateway, Provider
from shop.pricing import Quote, price_order
from shop.validation import parse_order

MAX_ORDERS = 100_000


@dataclass
class Order:
    """A placed order."""

    order_id: str
    items: dict[int, int]
    quote: Quote
    charge: Charge
    status: str = "paid"

    def as_dict(self) -> dict[str, Any]:
        """The order as JSON (the card is never kept)."""
        return {
            "order_id": self.order_id,
            "items": [{"product_id": p, "qty": q} for p, q in sorted(self.items.items())],
            "quote": self.quote.as_dict(),
            "status": self.status,
            "payment_attempts": self.charge.attempts,
        }


class Shop:
    """The application service every web layer calls."""

    def __init__(self, faults: Optional[Faults] = None) -> None:
        self.faults = faults if faults is not None else Faults.from_env()
        self.inventory = Inventory()
        self.payments = PaymentGateway(Provider(self.faults))
        self._orders: dict[str, Order] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def quote(self, body: Any) -> Quote:
        """Price a request without placing it."""
        return price_order(parse_order(body, need_card=False))

    def place_order(self, body: Any) -> Order:
        """Validate, price, reserve stock, charge; undo the reservation when payment fails."""
        request = parse_order(body, need_card=True)
        quote = price_order(request)
        self.inventory.reserve(request.items)
        try:
            charge = self.payments.charge(request.card or "", quote.total)
        except (PaymentDeclined, PaymentUnavailable):
            self.rollback(request.items)
            raise
        except Exception:
            self.rollback(request.items)
            raise
        with self._lock:
            order = Order(f"o-{next(self._ids):06d}", request.items, quote, charge)
            if len(self._orders) >= MAX_ORDERS:
                self._orders.pop(next(iter(self._orders)))
            self._orders[order.order_id] = order
        return order

    def rollback(self, items: dict[int, int]) -> None:
        """Release the stock of an order whose payment failed."""
        self.inventory.release(items)

    def get_order(self, order_id: str) -> Order:
        """A placed order, or :class:`NotFound`."""
        with self._lock:
            order = self._orders.get(order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        return order

    def cancel_order(self, order_id: str) -> Order:
        """Cancel a paid order: refund it and put its units back in stock."""
        order = self.get_order(order_id)
        with self._lock:
            if order.status != "paid":
                raise Conflict(f"order {order_id} is already {order.status}")
            order.status = "cancelled"
        self.payments.refund(order.charge)
        self.inventory.release(order.items)
        return order
