"""The Flask routes: products, quotes, orders and the admin endpoints used on game days."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from shop.catalog import get_product, list_products
from shop.errors import ShopError, ValidationError
from shop.orders import Shop

bp = Blueprint("shop", __name__)


def _shop() -> Shop:
    return current_app.config["SHOP"]


def _body() -> Any:
    try:
        return request.get_json(force=True)
    except BadRequest as exc:
        raise ValidationError("body is not valid JSON") from exc


@bp.errorhandler(ShopError)
def shop_error(exc: ShopError) -> Any:
    """Every domain error becomes a JSON body with its status."""
    return jsonify(exc.as_dict()), exc.status


@bp.get("/health")
def health() -> Any:
    """Liveness probe."""
    return {"status": "ok"}


@bp.get("/products")
def products() -> Any:
    """The catalog, filtered by ``?category=`` and ``?max_price=``."""
    max_price = request.args.get("max_price")
    if max_price is not None and not max_price.isdigit():
        raise ValidationError("max_price must be a number of cents")
    found = list_products(request.args.get("category"),
                          int(max_price) if max_price is not None else None)
    return {"products": [p.as_dict() for p in found]}


@bp.get("/products/<int:product_id>")
def product(product_id: int) -> Any:
    """One product with its stock level."""
    item = get_product(product_id)
    return {**item.as_dict(), "available": _shop().inventory.available(product_id)}


@bp.post("/quote")
def quote() -> Any:
    """Price a basket without ordering it."""
    return _shop().quote(_body()).as_dict()


@bp.post("/orders")
def place_order() -> Any:
    """Place and pay an order."""
    order = _shop().place_order(_body())
    return order.as_dict(), 201


@bp.get("/orders/<order_id>")
def get_order(order_id: str) -> Any:
    """A placed order."""
    return _shop().get_order(order_id).as_dict()


@bp.post("/orders/<order_id>/cancel")
def cancel_order(order_id: str) -> Any:
    """Cancel and refund an order."""
    return _shop().cancel_order(order_id).as_dict()


@bp.post("/admin/faults")
def set_faults() -> Any:
    """Change fault injection rates at runtime (game days)."""
    body = _body()
    if not isinstance(body, dict):
        raise ValidationError("body must be an object of fault rates")
    _shop().faults.update(body)
    return {"faults": _shop().faults.rates}


@bp.post("/admin/flush")
def flush() -> Any:
    """Send what runcov measured so far to the collector now."""
    agent = current_app.config.get("RUNCOV_AGENT")
    flushed = bool(agent.flush(10.0)) if agent is not None else False
    return {"flushed": flushed, "agent": agent is not None}
