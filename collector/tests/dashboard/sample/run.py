"""Runs one named request against the dashboard sample (argument: a request name)."""

import sys

from shop import cart

REQUESTS = {
    "plain": lambda: cart.total([1, 2]),
    "half": lambda: cart.total([4], "HALF"),
    "empty": lambda: cart.empty([]),
}

for name in sys.argv[1:]:
    REQUESTS[name]()
