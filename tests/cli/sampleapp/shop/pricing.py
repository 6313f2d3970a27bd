"""Prices, discounts and taxes (branchy on purpose)."""

from __future__ import annotations

TAX = {"fr": 0.20, "de": 0.19, "us": 0.0}


def discount(total: float, code: str | None) -> float:
    """Apply a discount code."""
    if code is None:
        return total
    if code == "HALF":
        return total / 2
    elif code.startswith("OFF"):
        amount = int(code[3:])
        return max(0.0, total - amount)
    return total


def with_tax(total: float, country: str) -> float:
    """Add the country's tax."""
    rate = TAX.get(country)
    if rate is None:
        raise ValueError(f"unknown country {country}")
    return round(total * (1 + rate), 2)


def bulk_price(unit: float, quantity: int) -> float:
    """Price for a quantity, cheaper per unit from 10 and 100 items."""
    price = 0.0
    for i in range(quantity):
        if i >= 100:
            price += unit * 0.8
        elif i >= 10:
            price += unit * 0.9
        else:
            price += unit
    return price


def never_called(x: int) -> int:  # only tests would call this
    """Dead code in production."""
    if x > 0:
        return x
    return -x
