"""Endpoint selectors: which requests runcov may sample, at what rate and in which mode.

A selector is ``[METHOD] ROUTE`` optionally followed by ``@RATE`` and/or ``#MODE``::

    "*"                       every request
    "POST /checkout@0.5"      POST /checkout, sampled at 50 %
    "GET /items/*"            any GET route starting with /items/
    "GET /health#census"      GET /health in census mode
    "* /admin/*@1#exact"      any method under /admin/, every request, exact mode
    "WEBSOCKET /ws/*"         websocket connections to any route starting with /ws/
    "job billing.*"           functions marked ``@runcov.critical`` whose name starts with billing.

``*`` in a route matches any run of characters, ``/`` included. The method is compared
case-insensitively; ``*`` or no method means any method. When several selectors match, the most
specific wins: a route without wildcards beats one with wildcards, then more literal characters,
then a named method beats ``*``; on a tie the selector listed first wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from runcov.errors import ConfigError

__all__ = [
    "MODES",
    "WEBSOCKET",
    "EndpointMatcher",
    "Rule",
    "Selector",
    "endpoint_name",
    "parse_selector",
]

#: The recording modes a selector may ask for.
MODES = ("exact", "census")

#: Endpoint kinds that are not HTTP methods keep their lower-case spelling in endpoint names.
_KINDS = ("job", "consumer")

#: The method that names a websocket connection's endpoint (``"WEBSOCKET /ws/{room}"``): its
#: handshake is a GET, but the connection is measured as a request of its own, so that selectors
#: tell it from the HTTP requests of the same routes.
WEBSOCKET = "WEBSOCKET"

#: The methods (as selectors spell them) of the endpoint kinds that are not HTTP requests.
_NOT_HTTP = (*(kind.upper() for kind in _KINDS), WEBSOCKET)


@dataclass(frozen=True)
class Rule:
    """What applies to a matched request: the selector that matched, its rate and its mode."""

    selector: str
    rate: float
    mode: str


@dataclass(frozen=True)
class Selector:
    """One parsed selector. ``rate``/``mode`` are None when the selector does not set them."""

    text: str
    method: Optional[str]
    route: str
    rate: Optional[float]
    mode: Optional[str]
    pattern: re.Pattern[str]
    specificity: tuple[int, int, int]

    def same_kind(self, method: Optional[str]) -> bool:
        """True when a request counted under ``method`` is of the kind this selector selects:
        a job for ``job``, a consumer span for ``consumer``, a websocket connection for
        ``WEBSOCKET``, an HTTP request (any method) for an HTTP method, anything without one."""
        if self.method is None:
            return True
        kind = method.upper() if method else None
        if self.method in _NOT_HTTP:
            return kind == self.method
        return kind is not None and kind not in _NOT_HTTP

    def matches(self, method: Optional[str], route: Optional[str]) -> bool:
        """True when this selector covers ``method`` and ``route`` (None = not known yet)."""
        if self.method is not None and (method is None or method.upper() != self.method):
            return False
        if route is None:
            return self.route == "*"
        return self.pattern.fullmatch(route) is not None


def _fail(option: str, value: str, why: str) -> ConfigError:
    return ConfigError(f"{option}={value!r}: {why}")


def parse_selector(text: str, option: str = "endpoints") -> Selector:
    """Parse one selector string; raises :class:`ConfigError` naming ``option`` when invalid."""
    if not isinstance(text, str):
        raise _fail(option, str(text), "a selector must be a string")
    body = text.strip()
    if not body:
        raise _fail(option, text, "empty endpoint selector")
    rate: Optional[float] = None
    mode: Optional[str] = None
    # Suffixes may come in either order: "@0.5#census" or "#census@0.5".
    for _ in range(2):
        m = re.search(r"([@#])([^@#\s]*)$", body)
        if m is None:
            break
        sign, value = m.group(1), m.group(2)
        body = body[: m.start()].rstrip()
        if sign == "@":
            if rate is not None:
                raise _fail(option, text, "the rate is given twice")
            try:
                rate = float(value)
            except ValueError:
                raise _fail(
                    option, text, f"rate {value!r} is not a number between 0 and 1"
                ) from None
            if not 0.0 <= rate <= 1.0:
                raise _fail(option, text, f"rate {value!r} is not a number between 0 and 1")
        else:
            if mode is not None:
                raise _fail(option, text, "the mode is given twice")
            mode = value.lower()
            if mode not in MODES:
                raise _fail(option, text, f"mode {value!r} is not one of {', '.join(MODES)}")
    if "@" in body or "#" in body:
        raise _fail(option, text, "'@rate' and '#mode' may only end a selector")
    parts = body.split(None, 1)
    if not parts:
        raise _fail(option, text, "the selector has no route")
    if len(parts) == 1:
        token = parts[0]
        if token == "*" or token.startswith("/"):
            method, route = None, token
        else:
            method, route = token, "*"
    else:
        method, route = parts[0], parts[1].strip()
    if method is not None:
        if not re.fullmatch(r"[A-Za-z_*-]+", method):
            raise _fail(option, text, f"method {method!r} is not a word or '*'")
        method = None if method == "*" else method.upper()
    if any(c.isspace() for c in route):
        raise _fail(option, text, "a route may not contain whitespace")
    pattern = re.compile(".*".join(re.escape(piece) for piece in route.split("*")), re.DOTALL)
    literal = len(route.replace("*", ""))
    specificity = (0 if "*" in route else 1, literal, 0 if method is None else 1)
    return Selector(
        text=f"{method or '*'} {route}",
        method=method,
        route=route,
        rate=rate,
        mode=mode,
        pattern=pattern,
        specificity=specificity,
    )


def endpoint_name(method: Optional[str], route: Optional[str]) -> str:
    """The endpoint name runcov reports: ``"GET /items/{item_id}"``, ``"job billing.run"``."""
    if not method:
        return route or "*"
    kind = method.lower()
    head = kind if kind in _KINDS else method.upper()
    return f"{head} {route}" if route else head


class EndpointMatcher:
    """Decides which selector, if any, applies to a request."""

    def __init__(
        self,
        selectors: Iterable[str],
        default_rate: float = 0.01,
        default_mode: str = "exact",
    ) -> None:
        if default_mode not in MODES:
            raise ConfigError(f"mode={default_mode!r}: not one of {', '.join(MODES)}")
        self.default_rate = float(default_rate)
        self.default_mode = default_mode
        parsed = [parse_selector(s) for s in selectors]
        # Stable sort: most specific first, listing order kept on ties.
        self._selectors = sorted(parsed, key=lambda s: s.specificity, reverse=True)
        self._cache: dict[tuple[Optional[str], Optional[str]], Optional[Rule]] = {}

    @property
    def selectors(self) -> list[Selector]:
        """The parsed selectors, most specific first."""
        return list(self._selectors)

    def match(self, method: Optional[str], route: Optional[str]) -> Optional[Rule]:
        """The rule of the most specific selector covering the request, or None.

        A whole endpoint name may be passed as ``route`` with ``method=None``
        (``match(None, "job billing.run")``): it is split at its first space.
        """
        key = (method, route)
        try:
            return self._cache[key]
        except KeyError:
            pass
        rule: Optional[Rule] = None
        if method is None and route is not None and " " in route:
            method, route = route.split(" ", 1)
        for sel in self._selectors:
            if sel.matches(method, route):
                rule = Rule(
                    selector=sel.text,
                    rate=self.default_rate if sel.rate is None else sel.rate,
                    mode=sel.mode or self.default_mode,
                )
                break
        if len(self._cache) >= 4096:  # bounded: routes are templates, but be safe
            self._cache.clear()
        self._cache[key] = rule
        return rule

    def uses_mode(self, mode: str) -> bool:
        """True when some selector applies ``mode``."""
        return any((sel.mode or self.default_mode) == mode for sel in self._selectors)

    def may_match(self, method: Optional[str]) -> bool:
        """True when a selector could match a request with this method once its route is known."""
        return any(
            sel.method is None or (method is not None and method.upper() == sel.method)
            for sel in self._selectors
        )

    def max_rate(self, method: Optional[str]) -> float:
        """The highest rate of any selector that could match ``method`` (0 when none can)."""
        rates = [
            self.default_rate if sel.rate is None else sel.rate
            for sel in self._selectors
            if sel.method is None or (method is not None and method.upper() == sel.method)
        ]
        return max(rates, default=0.0)
