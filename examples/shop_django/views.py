"""Django views over the shared shop domain."""

from __future__ import annotations

import json
from typing import Any, Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.catalog import get_product, list_products
from shop.errors import ShopError, ValidationError
from shop.orders import Shop

SHOP = Shop()
#: The runcov agent, set by the entry point when it runs one.
AGENT: Any = None


def _json_errors(view: Callable[..., Any]) -> Callable[..., HttpResponse]:
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            result = view(request, *args, **kwargs)
        except ShopError as exc:
            return JsonResponse(exc.as_dict(), status=exc.status)
        if isinstance(result, HttpResponse):
            return result
        return JsonResponse(result)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body)
    except ValueError as exc:
        raise ValidationError("body is not valid JSON") from exc


@require_GET
@_json_errors
def health(request: HttpRequest) -> Any:
    """Liveness probe."""
    return {"status": "ok"}


@require_GET
@_json_errors
def products(request: HttpRequest) -> Any:
    """The catalog, filtered by ``?category=`` and ``?max_price=``."""
    max_price = request.GET.get("max_price")
    if max_price is not None and not max_price.isdigit():
        raise ValidationError("max_price must be a number of cents")
    found = list_products(request.GET.get("category"),
                          int(max_price) if max_price is not None else None)
    return {"products": [p.as_dict() for p in found]}


@require_GET
@_json_errors
def product(request: HttpRequest, product_id: int) -> Any:
    """One product with its stock level."""
    item = get_product(product_id)
    return {**item.as_dict(), "available": SHOP.inventory.available(product_id)}


@csrf_exempt
@require_POST
@_json_errors
def quote(request: HttpRequest) -> Any:
    """Price a basket without ordering it."""
    return SHOP.quote(_body(request)).as_dict()


@csrf_exempt
@require_POST
@_json_errors
def orders(request: HttpRequest) -> Any:
    """Place and pay an order."""
    return JsonResponse(SHOP.place_order(_body(request)).as_dict(), status=201)


@require_GET
@_json_errors
def order(request: HttpRequest, order_id: str) -> Any:
    """A placed order."""
    return SHOP.get_order(order_id).as_dict()


@csrf_exempt
@require_POST
@_json_errors
def cancel(request: HttpRequest, order_id: str) -> Any:
    """Cancel and refund an order."""
    return SHOP.cancel_order(order_id).as_dict()


@csrf_exempt
@require_POST
@_json_errors
def flush(request: HttpRequest) -> Any:
    """Send what runcov measured so far to the collector now."""
    flushed = bool(AGENT.flush(10.0)) if AGENT is not None else False
    return {"flushed": flushed, "agent": AGENT is not None}
