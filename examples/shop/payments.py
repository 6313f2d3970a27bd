"""The payment step: charge a card through a (simulated) provider, with retries and refunds."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from shop.errors import PaymentDeclined, PaymentUnavailable, ValidationError
from shop.faults import Faults

MAX_ATTEMPTS = 3
#: Test cards with a fixed outcome, as real providers document them.
DECLINED_CARDS = {"4000000000000002": "generic_decline", "4000000000009995": "insufficient_funds"}


class ProviderTimeout(Exception):
    """The provider did not answer in time (retryable)."""


class ProviderError(Exception):
    """The provider answered with a server error (retryable)."""


@dataclass(frozen=True)
class Charge:
    """A successful charge."""

    charge_id: str
    amount: int
    attempts: int


def card_is_valid(card: str) -> bool:
    """Luhn check of a card number (digits only, 12 to 19 of them)."""
    if not card.isdigit() or not 12 <= len(card) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(card)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


class Provider:
    """A simulated card provider; faults make it time out, fail or decline."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def authorize(self, card: str, amount: int) -> str:
        """Charge ``amount`` cents; returns a charge id or raises a provider error."""
        if self.faults.fires("payment_timeout"):
            raise ProviderTimeout("provider did not answer within 2 s")
        if self.faults.fires("payment_error"):
            raise ProviderError("provider answered 502")
        if card in DECLINED_CARDS:
            raise PaymentDeclined(DECLINED_CARDS[card])
        if self.faults.fires("payment_decline"):
            raise PaymentDeclined("do_not_honor")
        with self._lock:
            return f"ch_{next(self._ids):06d}"

    def refund(self, charge_id: str) -> None:
        """Give a charge back (never fails in this simulation)."""


class PaymentGateway:
    """Charges orders: validates the card, retries provider failures, gives up cleanly."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def charge(self, card: str, amount: int) -> Charge:
        """Charge ``amount`` cents to ``card``; retries timeouts and provider errors."""
        if amount <= 0:
            return Charge("ch_free", 0, 0)
        if not card_is_valid(card):
            raise ValidationError("card number is not valid")
        last_error = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                charge_id = self.provider.authorize(card, amount)
            except ProviderTimeout as exc:
                last_error = f"timeout: {exc}"
                continue
            except ProviderError as exc:
                last_error = f"error: {exc}"
                if attempt == MAX_ATTEMPTS:
                    break
                continue
            return Charge(charge_id, amount, attempt)
        return self.give_up(last_error)

    def give_up(self, last_error: str) -> Charge:
        """Every attempt failed: report the provider as unavailable."""
        raise PaymentUnavailable(f"payment provider unavailable after {MAX_ATTEMPTS} attempts "
                                 f"({last_error})")

    def refund(self, charge: Charge) -> None:
        """Refund a charge (free orders have nothing to refund)."""
        if charge.amount > 0:
            self.provider.refund(charge.charge_id)
