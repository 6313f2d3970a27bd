"""Prices an order: line totals, coupons, tier and bulk discounts, shipping and tax."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shop.catalog import get_product
from shop.errors import ValidationError
from shop.validation import OrderRequest

#: Coupon code -> (kind, value): "pct" takes a percentage off, "fixed" takes cents off.
COUPONS = {
    "WELCOME10": ("pct", 10),
    "SPRING5": ("fixed", 500),
    "BOOKWORM": ("books", 15),
    "EXPIRED2019": ("expired", 0),
}
VAT = {"DE": 19, "FR": 20, "NL": 21, "GB": 20, "US": 0}
FREE_SHIPPING_FROM = 5000
SHIPPING = {"DE": 490, "FR": 690, "NL": 690, "GB": 990, "US": 1990}


@dataclass
class Quote:
    """The price of an order, every amount in cents."""

    subtotal: int
    discounts: dict[str, int] = field(default_factory=dict)
    shipping: int = 0
    tax: int = 0
    total: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The quote as JSON."""
        return asdict(self)


def price_order(order: OrderRequest) -> Quote:
    """Price ``order``: subtotal, then discounts, then shipping, then tax."""
    subtotal = 0
    physical = False
    categories: dict[str, int] = {}
    for product_id, qty in order.items.items():
        product = get_product(product_id)
        line = product.price_cents * qty
        subtotal += line
        categories[product.category] = categories.get(product.category, 0) + line
        physical = physical or product.physical
    quote = Quote(subtotal=subtotal)
    apply_discounts(quote, order, categories)
    discounted = subtotal - sum(quote.discounts.values())
    quote.shipping = shipping_cost(order, discounted, physical)
    quote.tax = discounted * VAT[order.country] // 100
    quote.total = discounted + quote.shipping + quote.tax
    return quote


def shipping_cost(order: OrderRequest, amount: int, physical: bool) -> int:
    """Shipping in cents: nothing for digital orders, free over a threshold or for gold."""
    if not physical:
        return 0
    if order.tier == "gold":
        return 0
    if amount >= FREE_SHIPPING_FROM and order.country != "US":
        return 0
    return SHIPPING[order.country]


def coupon_discount(code: str, subtotal: int, categories: dict[str, int]) -> int:
    """The amount a coupon takes off, or :class:`ValidationError` for unknown/expired ones."""
    kind, value = COUPONS.get(code.upper(), ("unknown", 0))
    if kind == "unknown":
        raise ValidationError(f"unknown coupon {code!r}")
    if kind == "expired":
        raise ValidationError(f"coupon {code!r} has expired")
    if kind == "pct":
        return subtotal * value // 100
    if kind == "fixed":
        return min(value, subtotal)
    # category coupon: a percentage off that category's lines only
    return categories.get(kind, 0) * value // 100


def apply_discounts(quote: Quote, order: OrderRequest, categories: dict[str, int]) -> None:
    """Fill ``quote.discounts``: coupon, member tier, bulk; never more than the subtotal."""
    if order.coupon:
        quote.discounts["coupon"] = coupon_discount(order.coupon, quote.subtotal, categories)
    if order.tier == "member":
        quote.discounts["member"] = quote.subtotal * 3 // 100
    elif order.tier == "gold":
        quote.discounts["gold"] = quote.subtotal * 5 // 100
    units = sum(order.items.values())
    if units >= 10:
        quote.discounts["bulk"] = quote.subtotal * 2 // 100
    total = sum(quote.discounts.values())
    if total > quote.subtotal:
        quote.discounts = {"capped": quote.subtotal}
