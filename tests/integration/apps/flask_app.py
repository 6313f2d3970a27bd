"""A Flask service (instrumented by the test with opentelemetry-instrumentation-flask)."""

from __future__ import annotations

import flask

from tests.integration.apps.shop import logic


def create_app() -> flask.Flask:
    """The service: item pages, an order endpoint and a health check."""
    app = flask.Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        quantity = int(flask.request.args.get("q", "1"))
        return logic.describe(item_id, quantity)

    @app.route("/orders", methods=["POST"])
    def order() -> tuple[dict[str, int], int]:
        body = flask.request.get_json(silent=True) or {}
        result = logic.describe(int(body.get("item", 1)), int(body.get("q", 1)))
        return result, 201

    @app.route("/health")
    def health() -> str:
        return logic.health()

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    return app
