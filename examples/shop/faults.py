"""Fault injection for game days: how often the payment provider times out, errors or declines.

Faults come from the ``SHOP_FAULTS`` environment variable at start
(``payment_timeout=0.3,payment_error=0.1``) and can be changed while running through the apps'
``POST /admin/faults`` endpoint. Rates are probabilities per provider call.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Mapping, Optional

from shop.errors import ValidationError

KINDS = ("payment_timeout", "payment_error", "payment_decline")


class Faults:
    """Current fault rates, with a seeded random source so game days can be replayed."""

    def __init__(self, rates: Optional[Mapping[str, float]] = None, seed: int = 7) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.rates: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        if rates:
            self.update(rates)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Faults:
        """Faults configured by ``SHOP_FAULTS`` (empty: none)."""
        text = (environ if environ is not None else os.environ).get("SHOP_FAULTS", "")
        rates: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            try:
                rates[name.strip()] = float(value)
            except ValueError as exc:
                raise ValidationError(f"SHOP_FAULTS: bad rate in {item!r}") from exc
        return cls(rates)

    def update(self, rates: Mapping[str, float]) -> None:
        """Set some rates (0 turns a fault off)."""
        for name, rate in rates.items():
            if name not in KINDS:
                raise ValidationError(f"unknown fault {name!r}; known: {', '.join(KINDS)}")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValidationError(f"fault rate for {name} must be between 0 and 1")
        with self._lock:
            self.rates.update({name: float(rate) for name, rate in rates.items()})

    def fires(self, kind: str) -> bool:
        """Whether fault ``kind`` happens on this call."""
        rate = self.rates[kind]
        if rate <= 0.0:
            return False
        with self._lock:
            return self._random.random() < rate
