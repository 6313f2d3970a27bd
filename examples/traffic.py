"""Realistic, reproducible shop traffic: a seeded mix of browsing, quotes, orders and mistakes.

Used by the demo, the example tests and the service benchmark. ``next_request`` picks one
request; ``Client`` sends it over a keep-alive loopback connection and remembers order ids so
that later requests can read and cancel real orders.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
BAD_CARD = "4242424242424241"
COUPONS = ["WELCOME10", "SPRING5", "BOOKWORM", "EXPIRED2019", "NOPE42", None, None, None]
TIERS = ["guest", "guest", "member", "gold"]
COUNTRIES = ["DE", "DE", "FR", "NL", "GB", "US"]
#: One product per category, for orders spanning several categories.
BY_CATEGORY = {"books": [1, 2, 3], "games": [4, 5, 6], "garden": [7, 8, 9], "kitchen": [10, 11, 12]}


@dataclass
class Request:
    """One HTTP request: method, path and an optional JSON body."""

    method: str
    path: str
    body: Optional[Any] = None


def _basket(rng: random.Random, categories: int = 1, bulk: bool = False) -> list[dict[str, int]]:
    chosen = rng.sample(sorted(BY_CATEGORY), categories)
    items = []
    for category in chosen:
        qty = rng.randint(5, 12) if bulk else rng.randint(1, 3)
        items.append({"product_id": rng.choice(BY_CATEGORY[category]), "qty": qty})
    return items


def _order_body(rng: random.Random, card: Optional[str], categories: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "items": _basket(rng, categories, bulk=rng.random() < 0.15),
        "tier": rng.choice(TIERS),
        "country": rng.choice(COUNTRIES),
    }
    coupon = rng.choice(COUPONS)
    if coupon is not None:
        body["coupon"] = coupon
    if card is not None:
        body["card"] = card
    return body


def _invalid_body(rng: random.Random) -> Any:
    return rng.choice([
        {"items": []},
        {"items": [{"product_id": 1, "qty": 0}]},
        {"items": [{"product_id": "one"}]},
        {"items": [{"product_id": 2}], "country": "XX"},
        {"items": [{"product_id": 2}], "tier": "platinum"},
        {"items": [{"product_id": 2}], "coupon": "50% OFF"},
        {"items": [{"product_id": 404}]},
        ["not", "an", "object"],
    ])


def next_request(rng: random.Random, order_ids: list[str]) -> Request:
    """One request of the mix; ``order_ids`` are orders placed earlier (read and cancelled)."""
    roll = rng.random()
    if roll < 0.18:
        query = rng.choice(["", "?category=books", "?category=garden&max_price=3000",
                            "?max_price=2000", "?category=toys", "?max_price=cheap"])
        return Request("GET", "/products" + query)
    if roll < 0.36:
        return Request("GET", f"/products/{rng.choice([*range(1, 13), 99])}")
    if roll < 0.52:
        return Request("POST", "/quote", _order_body(rng, None, rng.choice([1, 1, 2, 3])))
    if roll < 0.60:
        return Request("POST", rng.choice(["/quote", "/orders"]), _invalid_body(rng))
    if roll < 0.82:
        card = rng.choices([GOOD_CARD, DECLINED_CARD, BAD_CARD], weights=[8, 1, 1])[0]
        body = _order_body(rng, card, rng.choice([1, 1, 2, 3, 4]))
        if rng.random() < 0.1:
            body["items"] = [{"product_id": rng.choice([3, 6]), "qty": 1}]  # digital only
        return Request("POST", "/orders", body)
    if roll < 0.92:
        if order_ids and rng.random() < 0.85:
            return Request("GET", f"/orders/{rng.choice(order_ids)}")
        return Request("GET", "/orders/o-999999")
    if order_ids:
        return Request("POST", f"/orders/{rng.choice(order_ids)}/cancel")
    return Request("POST", "/orders/o-999999/cancel")


def bundle_order(rng: random.Random) -> Request:
    """An order spanning three or more categories (what release 1.1's bundle discount prices)."""
    return Request("POST", "/orders", {
        "items": _basket(rng, rng.choice([3, 4])), "card": GOOD_CARD, "country": "DE",
    })


@dataclass
class Tally:
    """Responses seen, by status code."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0

    def add(self, other: Tally) -> None:
        """Merge another tally into this one."""
        self.statuses.update(other.statuses)
        self.failures += other.failures

    @property
    def total(self) -> int:
        """Requests answered."""
        return sum(self.statuses.values())


class Client:
    """A keep-alive HTTP client for one thread; reconnects when the server closes."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def send(self, req: Request) -> tuple[int, bytes]:
        """Send ``req`` and return ``(status, body)``; retries once on a dropped connection."""
        payload = None if req.body is None else json.dumps(req.body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(req.method, req.path, body=payload, headers=headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def drive(host: str, port: int, requests: int, *, threads: int = 4, seed: int = 1,
          bundles: int = 0) -> Tally:
    """Send ``requests`` requests of the mix (plus ``bundles`` bundle orders) from ``threads``."""
    order_ids: list[str] = []
    ids_lock = threading.Lock()
    tally = Tally()
    tally_lock = threading.Lock()

    def worker(index: int, count: int, bundle_count: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = Client(host, port)
        mine = Tally()
        plan = [True] * bundle_count + [False] * count
        rng.shuffle(plan)
        try:
            for is_bundle in plan:
                with ids_lock:
                    known = list(order_ids[-50:])
                req = bundle_order(rng) if is_bundle else next_request(rng, known)
                try:
                    status, body = client.send(req)
                except OSError:
                    mine.failures += 1
                    continue
                mine.statuses[status] += 1
                if status == 201:
                    with ids_lock:
                        order_ids.append(json.loads(body)["order_id"])
        finally:
            client.close()
            with tally_lock:
                tally.add(mine)

    workers = [
        threading.Thread(target=worker, args=(i, requests // threads + (i < requests % threads),
                                              bundles // threads + (i < bundles % threads)))
        for i in range(threads)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return tally
