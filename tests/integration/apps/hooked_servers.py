"""Services that real servers run under ``runcov run`` (copied to a temp dir next to ``shop/``).

Factories, each building one application: ``uvicorn --factory hooked_servers:django_asgi``,
``gunicorn 'hooked_servers:flask_with_own_opentelemetry()'``... The ``..._with_own_opentelemetry``
ones set up an SDK tracer provider themselves, after runcov started (its framework hooks are in
by then, and its span processor joins the provider).
"""

from __future__ import annotations

from typing import Any

from shop import logic


def _django_setup(instrumented: bool = False) -> None:
    """A one-site Django: a sync and an async item view."""
    import django
    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    def item(request: Any, item_id: int) -> JsonResponse:
        # Under ASGI a sync view runs in a thread of Django's executor.
        return JsonResponse(logic.describe(item_id, 1))

    async def async_item(request: Any, item_id: int) -> JsonResponse:
        return JsonResponse(logic.describe(item_id, 2))

    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests", MIDDLEWARE=[],
        DEBUG=False,
    )
    globals()["urlpatterns"] = [
        path("items/<int:item_id>", item),
        path("async-items/<int:item_id>", async_item),
    ]
    if instrumented:
        _own_tracer_provider()
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
    django.setup()


def django_asgi() -> Any:
    """The Django site as an ASGI application (uvicorn)."""
    _django_setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def django_wsgi() -> Any:
    """The Django site as a WSGI application (gunicorn)."""
    _django_setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def _own_tracer_provider() -> None:
    """What an application that sets up OpenTelemetry itself does (spans exported nowhere)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())


def flask_with_own_opentelemetry() -> Any:
    """A Flask app instrumented by OpenTelemetry's Flask instrumentation."""
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    _own_tracer_provider()
    app = flask.Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return logic.describe(item_id, 1)

    FlaskInstrumentor().instrument_app(app)
    return app


def django_wsgi_with_own_opentelemetry() -> Any:
    """The Django site under WSGI, instrumented by OpenTelemetry's Django instrumentation."""
    _django_setup(instrumented=True)
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def django_asgi_with_own_opentelemetry() -> Any:
    """The Django site under ASGI, instrumented by OpenTelemetry's Django instrumentation."""
    _django_setup(instrumented=True)
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def _fastapi_items() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return logic.describe(item_id, 1)

    return app


def fastapi_with_own_opentelemetry() -> Any:
    """A FastAPI app, its request spans made by FastAPI itself where it can (its own tracing,
    on once an SDK provider is set), else by OpenTelemetry's FastAPI instrumentation."""
    _own_tracer_provider()
    app = _fastapi_items()
    try:
        import fastapi.telemetry  # noqa: F401  (a FastAPI with its own tracing)
    except ImportError:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    return app


def fastapi_instrumented_with_own_opentelemetry() -> Any:
    """A FastAPI app instrumented by OpenTelemetry's FastAPI instrumentation."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _own_tracer_provider()
    app = _fastapi_items()
    FastAPIInstrumentor.instrument_app(app)
    return app


def fastapi_mounted() -> Any:
    """A FastAPI app with the same FastAPI sub-app mounted twice, a router included with a
    prefix, and a plain Starlette mount whose path has a parameter."""
    from fastapi import APIRouter, FastAPI
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    app = _fastapi_items()

    def things() -> Any:
        sub = FastAPI()

        @sub.get("/things/{thing_id}")
        async def thing(thing_id: int) -> dict[str, int]:
            return logic.describe(thing_id, 3)

        return sub

    users = APIRouter()

    @users.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return logic.describe(user_id, 4)

    async def tenant_item(request: Any) -> JSONResponse:
        return JSONResponse(logic.describe(int(request.path_params["item_id"]), 5))

    app.mount("/v1", things())
    app.mount("/v2", things())
    app.include_router(users, prefix="/api")
    app.router.routes.append(
        Mount("/t/{tenant}", routes=[Route("/items/{item_id:int}", tenant_item)])
    )
    return app
