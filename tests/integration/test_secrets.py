"""No secret that reaches a service ever leaves it in runcov's exported bytes.

Secrets travel through every input channel of a real Flask service (URL path and path
parameters, query string, headers, cookies, JSON body, exception text, local variables) that
lives under a home directory whose user name is itself secret. Every raw OTLP body runcov sent
(coverage, denominators, metrics) is searched for each of them.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.flask import FlaskInstrumentor

from tests.agent.otlp_sink import HTTPSink
from tests.integration.conftest import AgentFactory, exported, traceparent

VIEWS = '''
import flask

from leakapp.acme_billing import charge


def create_app():
    app = flask.Flask("leakapp")

    @app.route("/tenants/acme/users/<token>", methods=["GET", "POST"])
    def user(token):
        local_secret = "LOCALSECRET-{marker}"
        body = flask.request.get_json(silent=True) or {{}}
        key = flask.request.args.get("api_key", "")
        auth = flask.request.headers.get("Authorization", "")
        cookie = flask.request.cookies.get("session", "")
        if body.get("password"):
            return {{"charged": charge(body["password"], local_secret)}}
        return {{"len": len(token + key + auth + cookie)}}

    @app.route("/fail/<token>")
    def fail(token):
        raise ValueError("cannot handle " + token + " with EXCSECRET-{marker}")

    return app
'''

BILLING = '''
def charge(password, local_secret):
    digest = 0
    for ch in password + local_secret:
        digest = (digest * 31 + ord(ch)) % 1000003
    return digest
'''


def test_no_secret_in_any_exported_byte(
    start_agent: AgentFactory, sink: HTTPSink, tmp_path: Path, app_provider: Any
) -> None:
    marker = uuid.uuid4().hex[:12]
    user = f"s3cr3tuser{marker}"
    root = tmp_path / "home" / user / "srv"
    package = root / "leakapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "views.py").write_text(textwrap.dedent(VIEWS.format(marker=marker)))
    (package / "acme_billing.py").write_text(textwrap.dedent(BILLING))
    secrets = {
        name: f"{name.upper()}SECRET-{marker}"
        for name in ("path", "query", "header", "cookie", "body", "exc", "local")
    }
    secrets["user"] = user
    secrets["home"] = str(tmp_path / "home")
    secrets["tenant"] = "acme"

    sys.path.insert(0, str(root))
    try:
        views = importlib.import_module("leakapp.views")
        app = views.create_app()
        FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
        client = app.test_client()
        agent = start_agent(source=[str(root)], redact=["acme"], metrics_interval=60)
        client.set_cookie("session", secrets["cookie"])
        headers = {"Authorization": f"Bearer {secrets['header']}"}
        url = f"/tenants/acme/users/{secrets['path']}?api_key={secrets['query']}"
        trace_ids = [0x5EC0001, 0x5EC0002, 0x5EC0003]
        r1 = client.get(url, headers={**headers, "traceparent": traceparent(trace_ids[0])})
        r2 = client.post(
            url,
            json={"password": secrets["body"]},
            headers={**headers, "traceparent": traceparent(trace_ids[1])},
        )
        r3 = client.get(
            f"/fail/{secrets['path']}", headers={"traceparent": traceparent(trace_ids[2])}
        )
        assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 500)
        by_trace = exported(agent, sink, trace_ids)
        sink.wait_for(lambda: sink.metric_points().get("runcov.requests.sampled"))
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "leakapp" or m.startswith("leakapp.")]:
            del sys.modules[name]

    # The data is there (the search below is not vacuous)...
    assert by_trace[trace_ids[1]].lines["leakapp/[REDACTED]_billing.py"]
    assert by_trace[trace_ids[0]].lines["leakapp/views.py"]
    assert by_trace[trace_ids[0]].endpoint == "GET /tenants/[REDACTED]/users/<token>"
    assert by_trace[trace_ids[2]].status_class == "5xx"
    assert sink.static_spans()
    # ...and none of the secrets is, in any body runcov sent.
    assert len(sink.raw) >= 2
    everything = b"\n".join(sink.raw)
    assert b"leakapp/views.py" in everything and b"runcov.requests.sampled" in everything
    for name, secret in secrets.items():
        assert secret.encode() not in everything, f"the {name} secret leaked"
