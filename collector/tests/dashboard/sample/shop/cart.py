"""Cart arithmetic with a few branches (one taken both ways, one half-taken, one never)."""


def total(prices, coupon=None):
    """Sum the prices and apply a coupon. <b>not html</b>"""
    amount = 0
    for price in prices:
        amount += price
    if coupon == "HALF":
        amount = amount / 2
    if amount > 1000:
        raise ValueError("too expensive")
    return amount


def empty(items):
    """Whether the cart is empty."""
    return not items


def unused():
    """Never called."""
    return "<script>alert(1)</script>"
