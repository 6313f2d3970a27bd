"""A Flask service run as a script in a subprocess (copied next to ``shop/`` in a temp dir).

``python zero_code_app.py TRACE_ID...`` sends one request per trace id through Flask's test
client and exits; ``--manual`` makes the script start runcov itself and set up OpenTelemetry
*after* it (a tracer provider set after ``runcov.start()``); ``--own-start`` makes it call
``runcov.start()`` with arguments of its own while a zero-code launcher already started runcov.
"""

from __future__ import annotations

import sys

import flask
from shop import logic


def create_app() -> flask.Flask:
    """The service."""
    app = flask.Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return logic.describe(item_id, int(flask.request.args.get("q", "1")))

    return app


def main(argv: list[str]) -> None:
    """Serve one request per trace id given on the command line."""
    manual = "--manual" in argv
    trace_ids = [int(a, 16) for a in argv if not a.startswith("--")]
    if manual:
        import runcov

        runcov.start()
        from opentelemetry import trace
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        app = create_app()
        FlaskInstrumentor().instrument_app(app)
    else:
        if "--own-start" in argv:
            import runcov

            agent = runcov.start(endpoints=["GET /items/*"], sample_rate=1.0)
            print("own start:", ",".join(agent.config.endpoints), agent.from_environment)
        app = create_app()
    client = app.test_client()
    for n, trace_id in enumerate(trace_ids):
        url = "/items/13" if n % 2 else f"/items/{n + 2}?q={n * 6}"
        headers = {"traceparent": f"00-{trace_id:032x}-{0xABCDEF:016x}-01"}
        assert client.get(url, headers=headers).status_code == 200
    print("served", len(trace_ids), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
