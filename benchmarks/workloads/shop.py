"""A small pure-Python shop request handler: parsing, validation, pricing and rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

TAX = {"eu": 0.21, "us": 0.07, "uk": 0.2}
COUPONS = {"SAVE10": 0.10, "SAVE25": 0.25, "VIP": 0.30}
CATALOG = {f"sku{i}": 100 + 37 * i % 900 for i in range(40)}


@dataclass
class Request:
    """A parsed request."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, str] = field(default_factory=dict)


def parse(raw: str) -> Request:
    """Parses ``METHOD /path?query\\nheader: value\\n\\nbody`` into a Request."""
    head, _, body = raw.partition("\n\n")
    lines = head.split("\n")
    method, _, target = lines[0].partition(" ")
    path, _, query = target.partition("?")
    request = Request(method.upper(), path)
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        request.query[key] = value
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            request.headers[name.strip().lower()] = value.strip()
    for pair in body.split("&"):
        key, sep, value = pair.partition("=")
        if sep:
            request.body[key] = value
    return request


def validate_order(body: dict[str, str]) -> list[str]:
    """Checks an order body; returns the problems found."""
    problems = []
    items = body.get("items", "")
    if not items:
        problems.append("no items")
    for entry in items.split(","):
        if not entry:
            continue
        sku, _, qty = entry.partition("*")
        if sku not in CATALOG:
            problems.append(f"unknown {sku}")
        elif qty and not qty.isdigit():
            problems.append(f"bad quantity for {sku}")
        elif qty and int(qty) > 20:
            problems.append(f"too many {sku}")
    region = body.get("region", "eu")
    if region not in TAX:
        problems.append("unknown region")
    coupon = body.get("coupon")
    if coupon is not None and coupon not in COUPONS:
        problems.append("bad coupon")
    return problems


def price(body: dict[str, str]) -> dict[str, float]:
    """Computes subtotal, discount, tax and total for a valid order."""
    subtotal = 0.0
    count = 0
    for entry in body["items"].split(","):
        sku, _, qty = entry.partition("*")
        n = int(qty) if qty else 1
        unit = CATALOG[sku]
        if n >= 10:
            unit = unit * 0.9
        elif n >= 5:
            unit = unit * 0.95
        subtotal += unit * n
        count += n
    discount = subtotal * COUPONS.get(body.get("coupon", ""), 0.0)
    if count > 30 and discount == 0:
        discount = subtotal * 0.05
    taxable = subtotal - discount
    tax = taxable * TAX[body.get("region", "eu")]
    shipping = 0.0 if taxable > 500 else (4.99 if count < 5 else 9.99)
    return {
        "subtotal": round(subtotal, 2),
        "discount": round(discount, 2),
        "tax": round(tax, 2),
        "shipping": shipping,
        "total": round(taxable + tax + shipping, 2),
    }


def search(query: dict[str, str]) -> list[str]:
    """Finds catalog entries by prefix and price bounds."""
    prefix = query.get("q", "")
    low = int(query["min"]) if query.get("min", "").isdigit() else 0
    high = int(query["max"]) if query.get("max", "").isdigit() else 10**9
    found = [sku for sku, cost in CATALOG.items() if sku.startswith(prefix) and low <= cost <= high]
    if query.get("sort") == "price":
        found.sort(key=lambda sku: CATALOG[sku])
    elif query.get("sort") == "name":
        found.sort()
    limit = int(query.get("limit", "10") or 10)
    return found[:limit]


def render(status: int, payload: object) -> str:
    """Serialises a response without the json module (pure Python on purpose)."""
    if isinstance(payload, dict):
        parts = [f'"{k}":{render_value(v)}' for k, v in payload.items()]
        body = "{" + ",".join(parts) + "}"
    elif isinstance(payload, list):
        body = "[" + ",".join(render_value(v) for v in payload) + "]"
    else:
        body = render_value(payload)
    return f"{status} {body}"


def render_value(value: object) -> str:
    """One JSON-ish value."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    return "null"


def handle(raw: str) -> str:
    """Routes one raw request to its handler and renders the response."""
    request = parse(raw)
    if request.headers.get("authorization", "") == "" and request.path.startswith("/admin"):
        return render(401, {"error": "unauthorized"})
    if request.path == "/checkout":
        if request.method != "POST":
            return render(405, {"error": "method"})
        problems = validate_order(request.body)
        if problems:
            return render(422, {"errors": problems})
        return render(200, price(request.body))
    if request.path.startswith("/items/"):
        sku = request.path[len("/items/") :]
        if sku in CATALOG:
            return render(200, {"sku": sku, "price": CATALOG[sku]})
        return render(404, {"error": "no such item"})
    if request.path == "/search":
        return render(200, search(request.query))
    if request.path == "/health":
        return render(200, {"ok": True})
    return render(404, {"error": "not found"})


def make_request(index: int) -> str:
    """A deterministic variety of requests, chosen by index."""
    kind = index % 8
    sku = f"sku{index % 45}"
    if kind in (0, 1, 2):
        qty = str(index % 25)
        items = f"{sku}*{qty},sku{(index * 7) % 40}*{index % 6},sku{index % 40}"
        coupon = ("&coupon=" + ("SAVE10", "SAVE25", "VIP", "BOGUS")[index % 4]) if index % 3 else ""
        region = ("eu", "us", "uk", "mars")[index % 4 if index % 5 == 0 else index % 3]
        return f"POST /checkout\ncontent-type: form\n\nitems={items}&region={region}{coupon}"
    if kind == 3:
        return f"GET /items/{sku}\naccept: */*"
    if kind in (4, 5):
        sort = ("price", "name", "")[index % 3]
        return f"GET /search?q=sku{index % 4}&min={index % 300}&max=800&sort={sort}&limit=8"
    if kind == 6:
        return "GET /admin/stats" + ("\nauthorization: token" if index % 2 else "")
    return "GET /health" if index % 16 == 7 else "DELETE /checkout"
