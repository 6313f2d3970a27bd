"""Services without OpenTelemetry, measured by ``runcov run``'s framework hooks (copied to a
temp dir next to ``shop/``): ``python hooked_apps.py django|starlette TRACE_ID...``."""

from __future__ import annotations

import asyncio
import sys

from shop import logic


def django_client() -> object:
    """A Django test client for a one-view site."""
    import django
    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    def item(request: object, item_id: int) -> JsonResponse:
        return JsonResponse(logic.describe(item_id, 1))

    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests", MIDDLEWARE=[],
    )
    sys.modules[__name__].urlpatterns = [path("items/<int:item_id>", item)]  # type: ignore[attr-defined]
    django.setup()
    from django.test import Client

    return Client()


def run_starlette(trace_ids: list[int]) -> None:
    """Serve the requests through a Starlette app (no OpenTelemetry) over httpx's transport."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: object) -> JSONResponse:
        item_id = int(request.path_params["item_id"])  # type: ignore[attr-defined]
        return JSONResponse(logic.describe(item_id, 1))

    app = Starlette(routes=[Route("/items/{item_id:int}", item)])

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for n, trace_id in enumerate(trace_ids):
                headers = {"traceparent": f"00-{trace_id:032x}-{0xABCDEF:016x}-01"}
                response = await client.get(f"/items/{n + 12}", headers=headers)
                assert response.status_code == 200

    asyncio.run(drive())


def main(argv: list[str]) -> None:
    """Serve one request per trace id with the framework named first."""
    framework, trace_ids = argv[0], [int(a, 16) for a in argv[1:]]
    if framework == "django":
        client = django_client()
        for n, trace_id in enumerate(trace_ids):
            response = client.get(  # type: ignore[attr-defined]
                f"/items/{n + 12}", HTTP_TRACEPARENT=f"00-{trace_id:032x}-{0xABCDEF:016x}-01"
            )
            assert response.status_code == 200
    else:
        run_starlette(trace_ids)
    print("served", len(trace_ids), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
