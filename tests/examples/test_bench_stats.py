"""The benchmarks' confidence interval for a median (benchmarks/stats.py)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from stats import median_interval


def _coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for n draws of a continuous distribution."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


@pytest.mark.parametrize(("n", "k"), [(6, 1), (8, 1), (12, 3), (20, 6), (40, 14)])
def test_interval_is_the_widest_order_statistics_pair_at_95(n: int, k: int) -> None:
    values = [float(i) for i in range(n, 0, -1)]  # unsorted on purpose
    assert median_interval(values) == (float(k), float(n + 1 - k))
    assert _coverage(n, k) >= 0.95
    if k + 1 <= n // 2:
        assert _coverage(n, k + 1) < 0.95  # the next narrower pair would not do


def test_too_few_values_give_the_whole_range() -> None:
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    with pytest.raises(ValueError):
        median_interval([])
