"""Request handlers of the shop."""

from __future__ import annotations

from shop import pricing


def checkout(items: list[tuple[float, int]], country: str, code: str | None = None) -> dict:
    """Total an order."""
    total = 0.0
    for unit, quantity in items:
        total += pricing.bulk_price(unit, quantity)
    total = pricing.discount(total, code)
    try:
        total = pricing.with_tax(total, country)
    except ValueError:
        return {"status": 400, "error": "bad country"}
    return {"status": 200, "total": total}


def item(item_id: int) -> dict:
    """Show one item."""
    if item_id < 0:
        return {"status": 404}
    label = "even" if item_id % 2 == 0 else "odd"
    return {"status": 200, "id": item_id, "label": label}


class Admin:
    """Admin-only handlers."""

    def report(self, verbose: bool) -> str:
        """A report."""
        lines = ["report"]
        if verbose:
            lines.append("details")
        return "\n".join(lines)
