"""A Django service (instrumented by the test with opentelemetry-instrumentation-django).

Django's instrumentation learns ``http.route`` only after the span started (in
``process_view``), which exercises runcov's late-route decision.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.integration.apps.shop import logic


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """An item page."""
    return JsonResponse(logic.describe(item_id, int(request.GET.get("q", "1"))))


def health(request: HttpRequest) -> JsonResponse:
    """The health check."""
    return JsonResponse({"status": logic.health()})


urlpatterns = [
    path("items/<int:item_id>", item),
    path("health", health),
]


def configure() -> Any:
    """Configure Django for this module once per process; return the WSGI application."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="integration-tests-only",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
        django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()
