"""Each example app, served for real, answers its routes and its coverage reaches the collector."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples import support

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"

#: module -> (its web layer's file, the endpoint name of ``GET /products/<id>``)
APPS = {
    "shop_flask": ("shop_flask/views.py", "GET /products/<int:product_id>"),
    "shop_fastapi": ("shop_fastapi/app.py", "GET /products/{product_id}"),
    "shop_django": ("shop_django/views.py", "GET /products/<int:product_id>"),
}


def line_of(path: str, text: str) -> int:
    """The number of the only line of ``examples/<path>`` containing ``text``."""
    lines = (support.EXAMPLES / path).read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if text in line]
    assert len(found) == 1, f"{text!r} found {len(found)} times in {path}"
    return found[0]


@pytest.fixture
def collector(tmp_path: Path):
    service, url = support.start_collector(tmp_path)
    yield url
    service.stop()


@pytest.mark.parametrize("module", sorted(APPS))
def test_app_serves_the_shop_and_reports_coverage(module: str, collector: str,
                                                  tmp_path: Path) -> None:
    app, url = support.start_app(module, collector, tmp_path)
    try:
        status, product = support.request(f"{url}/products/3")
        assert (status, product["name"]) == (200, "Audiobook: Distributed Tales")
        assert support.request(f"{url}/products/99")[0] == 404
        status, quote = support.request(f"{url}/quote", "POST", {
            "items": [{"product_id": 1, "qty": 2}], "coupon": "WELCOME10", "country": "US"})
        assert status == 200
        assert quote["subtotal"] == 4800
        assert quote["discounts"] == {"coupon": 480}
        assert quote["shipping"] == 1990
        assert support.request(f"{url}/quote", "POST", {"items": []})[0] == 422
        status, order = support.request(f"{url}/orders", "POST", {
            "items": [{"product_id": 10}, {"product_id": 6}], "card": GOOD_CARD, "tier": "gold"})
        assert status == 201, order
        assert order["quote"]["discounts"] == {"gold": (8900 + 999) * 5 // 100}
        order_path = f"{url}/orders/{order['order_id']}"
        assert support.request(order_path)[1]["status"] == "paid"
        assert support.request(order_path + "/cancel", "POST", {})[1]["status"] == "cancelled"
        assert support.request(order_path + "/cancel", "POST", {})[0] == 409
        status, declined = support.request(f"{url}/orders", "POST", {
            "items": [{"product_id": 7}], "card": DECLINED_CARD})
        assert (status, declined["error"]) == (402, "payment_declined")
        assert support.request(f"{url}/admin/flush", "POST", {})[1] == {
            "flushed": True, "agent": True}
        coverage = support.wait_for_coverage(collector, module, minimum_requests=9)
    finally:
        app.stop()

    files = {f["path"]: f for f in coverage["files"]}
    web_file, product_endpoint = APPS[module]
    assert files[web_file]["lines_covered"] > 0
    covered = {path: {line[0] for line in f["lines"]} for path, f in files.items()}
    assert line_of("shop/payments.py", "raise PaymentDeclined(DECLINED_CARDS[card])") in (
        covered["shop/payments.py"])
    # The payment step runs on a worker thread in FastAPI (asyncio.to_thread): still measured.
    assert line_of("shop/orders.py", "charge = self.payments.charge(") in covered["shop/orders.py"]
    assert line_of("shop/pricing.py", 'quote.discounts["gold"]') in covered["shop/pricing.py"]
    # No faults were injected: the give-up path never ran.
    assert line_of("shop/payments.py", "raise PaymentUnavailable(") not in covered[
        "shop/payments.py"]
    assert files["shop/pricing.py"]["lines_total"] > files["shop/pricing.py"]["lines_covered"]
    status, endpoints = support.request(f"{collector}/api/v1/endpoints?service={module}")
    names = {e["endpoint"] for e in endpoints["endpoints"]}
    assert {product_endpoint, "POST /orders", "POST /quote"} <= names
    assert not any("/admin/" in name or name.endswith("/health") for name in names)
