"""A Flask service served by gunicorn with several pre-forked workers (copied to a temp dir)."""

from __future__ import annotations

import os

import flask
from shop import logic

app = flask.Flask(__name__)


@app.route("/items/<int:item_id>")
def item(item_id: int) -> dict[str, int]:
    """An item page that says which worker answered."""
    body = logic.describe(item_id, 1)
    body["pid"] = os.getpid()
    return body
