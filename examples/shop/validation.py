"""Parsing and validating the JSON bodies of quote and order requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from shop.errors import ValidationError

MAX_LINES = 20
MAX_QTY = 50
TIERS = ("guest", "member", "gold")
COUNTRIES = ("DE", "FR", "NL", "US", "GB")


@dataclass
class OrderRequest:
    """A validated order or quote request."""

    items: dict[int, int]
    coupon: Optional[str] = None
    tier: str = "guest"
    country: str = "DE"
    card: Optional[str] = None
    extras: dict[str, Any] = field(default_factory=dict)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer")
    return value


def parse_order(body: Any, *, need_card: bool) -> OrderRequest:
    """Validate a request body; raise :class:`ValidationError` saying what is wrong."""
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object")
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise ValidationError("items must be a non-empty list")
    if len(raw_items) > MAX_LINES:
        raise ValidationError(f"at most {MAX_LINES} lines per order")
    items: dict[int, int] = {}
    for line in raw_items:
        if not isinstance(line, dict):
            raise ValidationError("each item must be an object")
        product_id = _int(line.get("product_id"), "product_id")
        qty = _int(line.get("qty", 1), "qty")
        if not 1 <= qty <= MAX_QTY:
            raise ValidationError(f"qty must be between 1 and {MAX_QTY}")
        items[product_id] = items.get(product_id, 0) + qty
    tier = body.get("tier", "guest")
    if tier not in TIERS:
        raise ValidationError(f"tier must be one of {', '.join(TIERS)}")
    country = body.get("country", "DE")
    if country not in COUNTRIES:
        raise ValidationError(f"we do not ship to {country!r}")
    coupon = body.get("coupon")
    if coupon is not None and (not isinstance(coupon, str) or not coupon.isalnum()):
        raise ValidationError("coupon must be alphanumeric")
    card = body.get("card")
    if need_card and not isinstance(card, str):
        raise ValidationError("card is required")
    return OrderRequest(items=items, coupon=coupon, tier=tier, country=country, card=card)
