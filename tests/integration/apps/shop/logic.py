"""Pricing and stock rules with branches, loops and exceptions, so coverage differs per request."""

from __future__ import annotations


class OutOfStock(Exception):
    """Raised when an item cannot be sold."""


def price(item_id: int, quantity: int) -> int:
    """Price of ``quantity`` items, with a bulk discount and an odd-item surcharge."""
    total = 0
    for _ in range(quantity):
        total += 10 + item_id
    if quantity >= 10:
        total = total * 9 // 10
    elif item_id % 2:
        total += 1
    return total


def check_stock(item_id: int) -> int:
    """Units in stock; item 13 is always sold out."""
    if item_id == 13:
        raise OutOfStock("item 13 is sold out")
    return 100 - item_id


def describe(item_id: int, quantity: int) -> dict[str, int]:
    """What the item endpoints answer."""
    try:
        stock = check_stock(item_id)
    except OutOfStock:
        return {"item": item_id, "stock": 0, "price": 0}
    return {"item": item_id, "stock": stock, "price": price(item_id, quantity)}


def health() -> str:
    """The health endpoint's answer."""
    return "ok"
