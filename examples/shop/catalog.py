"""The product catalog: an in-memory list of products, looked up by id and category."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from shop.errors import NotFound, ValidationError

CATEGORIES = ("books", "games", "garden", "kitchen")


@dataclass(frozen=True)
class Product:
    """One product: price in cents, category, and whether it ships physically."""

    id: int
    name: str
    category: str
    price_cents: int
    physical: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The product as JSON."""
        return asdict(self)


_PRODUCTS = [
    Product(1, "The Pragmatic Gardener", "books", 2400),
    Product(2, "Cooking for Engineers", "books", 3150),
    Product(3, "Audiobook: Distributed Tales", "books", 1500, physical=False),
    Product(4, "Board game: Consensus", "games", 4599),
    Product(5, "Card game: Byzantine Generals", "games", 1899),
    Product(6, "Game download: Packet Loss", "games", 999, physical=False),
    Product(7, "Rake", "garden", 2799),
    Product(8, "Hose, 25 m", "garden", 3999),
    Product(9, "Seed box", "garden", 1299),
    Product(10, "Chef's knife", "kitchen", 8900),
    Product(11, "Cast-iron pan", "kitchen", 5400),
    Product(12, "Espresso cups (set of 4)", "kitchen", 2200),
]
_BY_ID = {p.id: p for p in _PRODUCTS}


def get_product(product_id: int) -> Product:
    """The product with this id, or :class:`NotFound`."""
    product = _BY_ID.get(product_id)
    if product is None:
        raise NotFound(f"no product {product_id}")
    return product


def list_products(category: Optional[str] = None, max_price: Optional[int] = None) -> list[Product]:
    """Products, optionally of one category and at most ``max_price`` cents."""
    if category is not None and category not in CATEGORIES:
        raise ValidationError(f"unknown category {category!r}")
    if max_price is not None and max_price < 0:
        raise ValidationError("max_price must not be negative")
    result = []
    for product in _PRODUCTS:
        if category is not None and product.category != category:
            continue
        if max_price is not None and product.price_cents > max_price:
            continue
        result.append(product)
    return result
