"""Bearer-token checks for ingestion and queries (constant-time comparison)."""

from __future__ import annotations

import base64
import binascii
import hmac


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be required of clients, or None when it can.

    Tokens travel in HTTP ``Authorization`` headers and gRPC metadata, which are visible ASCII
    in practice: HTTP servers (Starlette here) read header bytes as latin-1, gRPC refuses other
    metadata values, and clients differ in how they would encode them, so a token with other
    characters could be accepted on one path and refused on another. Surrounding spaces are
    trimmed from a presented credential, so spaces are refused too. The token is not quoted.
    """
    for char in token:
        if "!" <= char <= "~":
            continue
        if char == " ":
            kind = "a space"
        elif char.isascii():
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        return (
            f"contains {kind}: a token must consist of visible ASCII characters "
            "(letters, digits and punctuation, such as the output of `openssl rand -hex 32`)"
        )
    return None


class TokenCheck:
    """Accepts a request whose credentials carry ``token``; with ``token=None`` accepts all.

    Credentials are ``Authorization: Bearer <token>``; when ``allow_basic`` is set, HTTP Basic
    with the token as password is accepted too (so a browser can open the dashboard). The
    configuration admits only visible-ASCII tokens (``token_problem``), which both forms carry
    alike.
    """

    def __init__(self, token: str | None, allow_basic: bool = False) -> None:
        self._token = token.encode("utf-8") if token is not None else None
        self.allow_basic = allow_basic

    @property
    def open(self) -> bool:
        """True when no token is required."""
        return self._token is None

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header (or gRPC metadata value) is acceptable."""
        if self._token is None:
            return True
        presented = self._credential(authorization or "")
        if presented is None:
            # Compare anyway so a missing header costs the same as a wrong one.
            hmac.compare_digest(self._token, b"\x00" * len(self._token))
            return False
        return hmac.compare_digest(self._token, presented)

    def _credential(self, header: str) -> bytes | None:
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            return value.encode("utf-8", "surrogateescape")
        if scheme == "basic" and self.allow_basic and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _, sep, password = decoded.partition(":")
            return password.encode("utf-8") if sep else None
        return None
