"""Builds the Flask application and instruments it with OpenTelemetry."""

from __future__ import annotations

from typing import Any, Optional

from flask import Flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from shop.orders import Shop
from shop_flask.views import bp


def create_app(shop: Optional[Shop] = None, agent: Any = None) -> Flask:
    """The shop's Flask app; ``agent`` is the running runcov agent, if any."""
    app = Flask("shop_flask")
    app.config["SHOP"] = shop if shop is not None else Shop()
    app.config["RUNCOV_AGENT"] = agent
    app.register_blueprint(bp)
    FlaskInstrumentor().instrument_app(app)
    return app
