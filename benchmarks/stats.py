"""Statistics the benchmarks share."""

from __future__ import annotations

import math
from typing import Sequence


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values``: the order
    statistics ``(k, n + 1 - k)`` with the largest ``k`` whose binomial coverage
    (``1 - 2 P(Bin(n, 1/2) < k)``) is still at least ``level``. With fewer than 6 values no
    such ``k`` exists at 95 %: the interval is then the whole range."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    k, below = 1, 1 / 2**n  # below = P(Bin(n, 1/2) < k)
    while k < (n + 1) // 2:
        nxt = below + math.comb(n, k) / 2**n  # P(Bin < k + 1)
        if 1 - 2 * nxt < level:
            break
        below = nxt
        k += 1
    return ordered[k - 1], ordered[n - k]
