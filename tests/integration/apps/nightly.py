"""A module only imported after ``runcov.watch`` named one of its functions."""

from __future__ import annotations

from tests.integration.apps.shop import logic


def report(days: int) -> int:
    """The nightly report."""
    if days > 7:
        return logic.price(1, days)
    return days


class Exporter:
    """A class whose method is watched."""

    def run(self, n: int) -> int:
        """Export ``n`` rows."""
        return sum(range(n))
