"""The shop's errors: each carries the HTTP status and a stable code the web layers return."""

from __future__ import annotations


class ShopError(Exception):
    """Base of every error the shop reports to a client."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """The JSON body the web layers send for this error."""
        return {"error": self.code, "message": self.message}


class ValidationError(ShopError):
    """The request is malformed: missing fields, bad quantities, unknown coupon syntax."""

    status = 422
    code = "invalid"


class NotFound(ShopError):
    """An unknown product or order."""

    status = 404
    code = "not_found"


class OutOfStock(ShopError):
    """Not enough stock for one of the ordered products."""

    status = 409
    code = "out_of_stock"


class Conflict(ShopError):
    """The order is in a state that does not allow the operation."""

    status = 409
    code = "conflict"


class PaymentDeclined(ShopError):
    """The payment provider refused the card."""

    status = 402
    code = "payment_declined"


class PaymentUnavailable(ShopError):
    """The payment provider did not answer, even after retries."""

    status = 503
    code = "payment_unavailable"
