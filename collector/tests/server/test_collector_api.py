"""The query API routes: parameter parsing and validation, errors, and what reaches the store."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from runcov_collector import api
from runcov_collector.model import Selection
from runcov_collector.testing import (
    coverage_span,
    file_hits,
    file_static,
    resource_attributes,
    static_span,
    trace_request,
)

HOUR_NS = 3600 * 10**9


def _seed(client, version="1.0", role="baseline", when_ns=None, lines=(1, 2), endpoint="GET /a"):
    when_ns = when_ns or time.time_ns()
    resource = {
        "service.name": "shop",
        "service.version": version,
        "deployment.environment.name": "prod",
    }
    resource["runcov.deployment.role"] = role
    spans = [
        coverage_span(endpoint, [file_hits("shop/views.py", lines)], end_time_unix_nano=when_ns),
        static_span([file_static("shop/views.py", [1, 2, 3, 4], [(1, 2), (1, 3), (2, 4)])]),
    ]
    response = client.send(trace_request(spans, resource))
    assert response.status_code == 200, response.text


def test_parse_time_accepts_iso_and_relative():
    assert (
        api.parse_time("2026-11-25T10:00:00Z", "since")
        == datetime(2026, 11, 25, 10, tzinfo=timezone.utc).timestamp()
    )
    assert api.parse_time("2026-11-25T10:00:00", "since") == api.parse_time(
        "2026-11-25T10:00:00+00:00", "since"
    )
    assert api.parse_time("2026-11-25T12:00:00+02:00", "since") == api.parse_time(
        "2026-11-25T10:00:00Z", "since"
    )
    assert api.parse_time("90m", "since", now=10_000.0) == 10_000.0 - 5400
    assert api.parse_time("6h", "since", now=100_000.0) == 100_000.0 - 6 * 3600
    assert api.parse_time("7d", "since", now=1e9) == 1e9 - 7 * 86400
    with pytest.raises(api.BadParameter, match="since='yesterday' is neither ISO-8601"):
        api.parse_time("yesterday", "since")
    with pytest.raises(api.BadParameter):
        api.parse_time("-5h", "until")


def test_selection_from_parameters_and_diff_prefixes():
    sel = api.selection(
        {
            "service": "shop",
            "version": "1.0",
            "role": "canary",
            "endpoint": "GET /a",
            "since": "2026-11-25T10:00:00Z",
        }
    )
    assert sel == Selection(
        service="shop",
        version="1.0",
        role="canary",
        endpoint="GET /a",
        since_unix=datetime(2026, 11, 25, 10, tzinfo=timezone.utc).timestamp(),
    )
    params = {
        "service": "shop",
        "environment": "prod",
        "a_version": "1.0",
        "b_version": "1.1",
        "b_role": "canary",
    }
    a, b = api.selection(params, "a_"), api.selection(params, "b_")
    assert (a.version, a.environment, a.role) == ("1.0", "prod", None)
    assert (b.version, b.environment, b.role) == ("1.1", "prod", "canary")


def test_empty_version_or_environment_means_the_empty_value():
    """Given empty, version and environment select releases without them; absent, any."""
    assert api.selection({"service": "shop", "version": "", "environment": ""}) == Selection(
        "shop", version="", environment=""
    )
    assert api.selection({"service": "shop", "role": "", "endpoint": "", "since": ""}) == (
        Selection("shop")
    )
    params = {"service": "shop", "version": "1.0", "a_version": "", "b_environment": ""}
    a, b = api.selection(params, "a_"), api.selection(params, "b_")
    assert (a.version, a.environment) == ("", None)
    assert (b.version, b.environment) == ("1.0", "")


def test_releases_without_version_or_environment_are_selectable(client):
    releases = [("", ""), ("", "prod"), ("2.0", ""), ("2.0", "prod")]
    for n, (version, environment) in enumerate(releases):
        resource = resource_attributes("emptyrel", version=version, environment=environment)
        spans = [
            coverage_span(
                "GET /x",
                [file_hits("app/x.py", [1, 2])],
                end_time_unix_nano=time.time_ns() - (len(releases) - n) * 10**9,
            )
        ]
        assert client.send(trace_request(spans, resource)).status_code == 200
    for version, environment in releases:
        answer = client.query(
            "/api/v1/coverage", service="emptyrel", version=version, environment=environment
        )
        assert (answer["release"]["version"], answer["release"]["environment"]) == (
            version,
            environment,
        )
    newest = client.query("/api/v1/coverage", service="emptyrel")["release"]
    assert (newest["version"], newest["environment"]) == ("2.0", "prod")
    only_env = client.query("/api/v1/coverage", service="emptyrel", environment="")["release"]
    assert (only_env["version"], only_env["environment"]) == ("2.0", "")
    diff = client.query(
        "/api/v1/diff", service="emptyrel", environment="", a_version="", b_version="2.0"
    )
    assert (diff["a"]["version"], diff["a"]["environment"]) == ("", "")
    assert (diff["b"]["version"], diff["b"]["environment"]) == ("2.0", "")


@pytest.mark.parametrize(
    ("route", "params", "message"),
    [
        ("/api/v1/releases", {}, "missing parameter service"),
        ("/api/v1/coverage", {}, "missing parameter service"),
        (
            "/api/v1/coverage",
            {"service": "shop", "role": "prod"},
            "role='prod' is not one of baseline",
        ),
        (
            "/api/v1/coverage",
            {"service": "shop", "since": "last tuesday"},
            "since='last tuesday' is neither",
        ),
        (
            "/api/v1/coverage",
            {"service": "shop", "since": "1h", "until": "2h"},
            "since must be before until",
        ),
        (
            "/api/v1/coverage",
            {"service": "shop", "detail": "maybe"},
            "detail='maybe' must be 0 or 1",
        ),
        (
            "/api/v1/coverage",
            {"service": "shop", "path_prefix": "../"},
            "path_prefix must be relative",
        ),
        (
            "/api/v1/coverage",
            {"service": "sh\x01op"},
            "parameter service contains control characters",
        ),
        (
            "/api/v1/coverage",
            {"service": "s" * 1025},
            "parameter service is longer than 1024 bytes",
        ),
        ("/api/v1/file", {"service": "shop"}, "missing parameter path"),
        (
            "/api/v1/file",
            {"service": "shop", "path": "../../etc/passwd"},
            "contains a '..' segment",
        ),
        ("/api/v1/file", {"service": "shop", "path": "/etc/passwd"}, "is absolute"),
        ("/api/v1/series", {"service": "shop", "path": "a\x00b"}, "NUL or control characters"),
        ("/api/v1/diff", {"service": "shop", "a_role": "x"}, "a_role='x' is not one of"),
    ],
)
def test_bad_parameters_are_400_with_a_message(client, route, params, message):
    _seed(client)
    response = client.get(route, **params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_unknown_release_or_file_is_404(client):
    _seed(client)
    response = client.get("/api/v1/coverage", service="nope")
    assert response.status_code == 404
    assert "no release matches" in response.json()["error"]
    assert client.get("/api/v1/coverage", service="shop", version="9.9").status_code == 404
    assert client.get("/api/v1/file", service="shop", path="shop/other.py").status_code == 404


def test_an_endpoint_the_release_never_saw_is_404_not_zero_coverage(client):
    _seed(client, endpoint="GET /a", when_ns=time.time_ns() - 3 * HOUR_NS)
    release = {"service": "shop", "version": "1.0"}
    for route, params in (
        ("/api/v1/coverage", {}),
        ("/api/v1/endpoints", {}),
        ("/api/v1/file", {"path": "shop/views.py"}),
        ("/api/v1/series", {}),
        ("/api/v1/coverage", {"since": "1h"}),
    ):
        response = client.get(route, **release, endpoint="GET /typo", **params)
        assert response.status_code == 404, route
        assert response.json() == {
            "error": "no endpoint 'GET /typo' in shop 1.0 (prod, baseline): it never sent "
            "coverage of it (GET /api/v1/endpoints lists the endpoints of a release)"
        }
    # A known endpoint without requests in the window is zero coverage, not unknown.
    quiet = client.query("/api/v1/coverage", **release, endpoint="GET /a", since="1h")
    assert (quiet["totals"]["requests"], quiet["totals"]["lines_covered"]) == (0, 0)


def test_unknown_api_routes_and_methods_answer_json(client):
    """A mistyped route or method under /api/ gets the API's JSON error like any other error;
    other paths keep their plain-text answers."""
    for route in ("/api/v1/nope", "/api/v2/coverage", "/api/"):
        response = client.get(route, service="shop")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": f"no API endpoint {route}"}
    posted = client.http.post(
        "/api/v1/coverage", headers={"authorization": "Bearer query-secret-token"}
    )
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert posted.json() == {
        "error": "method POST is not allowed on /api/v1/coverage (allowed: GET, HEAD)"
    }
    # Without the query token the answer is still the 401 (nothing about which routes exist).
    assert client.get("/api/v1/nope", token=None).status_code == 401
    outside = client.get("/nope")
    assert (outside.status_code, outside.headers["content-type"]) == (
        404,
        "text/plain; charset=utf-8",
    )


def test_routes_return_the_store_answers(client):
    now = time.time_ns()
    _seed(client, version="1.0", when_ns=now - 5 * HOUR_NS, lines=[1])
    _seed(client, version="1.1", role="canary", when_ns=now - 2 * HOUR_NS, lines=[1, 2])
    _seed(client, version="1.1", role="canary", when_ns=now, lines=[1, 4], endpoint="GET /b")

    services = client.query("/api/v1/services")["services"]
    assert [(s["service"], s["releases"]) for s in services] == [("shop", 2)]
    releases = client.query("/api/v1/releases", service="shop")["releases"]
    assert [(r["version"], r["role"]) for r in releases] == [("1.1", "canary"), ("1.0", "baseline")]

    canary = {"service": "shop", "version": "1.1", "role": "canary"}
    cov = client.query("/api/v1/coverage", **canary, detail=1)
    assert cov["release"] == {**canary, "environment": "prod"}
    [f] = cov["files"]
    assert [line for line, _, _ in f["lines"]] == [1, 2, 4]
    assert cov["totals"]["lines_total"] == 4
    assert "lines" not in client.query("/api/v1/coverage", **canary)["files"][0]
    assert client.query("/api/v1/coverage", **canary, path_prefix="other/")["files"] == []

    only_b = client.query("/api/v1/file", **canary, path="shop/views.py", endpoint="GET /b")
    assert [line for line, _, _ in only_b["lines"]] == [1, 4]
    recent = client.query("/api/v1/file", **canary, path="shop/views.py", since="1h")
    assert [line for line, _, _ in recent["lines"]] == [1, 4]
    older = client.query("/api/v1/file", **canary, path="shop/views.py", until=_iso(now - HOUR_NS))
    assert [line for line, _, _ in older["lines"]] == [1, 2]

    series = client.query("/api/v1/series", **canary)["series"]
    assert sum(bucket["requests"] for bucket in series) == 2
    endpoints = client.query("/api/v1/endpoints", **canary)["endpoints"]
    assert sorted(e["endpoint"] for e in endpoints) == ["GET /a", "GET /b"]

    diff = client.query(
        "/api/v1/diff",
        service="shop",
        a_version="1.0",
        a_role="baseline",
        b_version="1.1",
        b_role="canary",
    )
    assert diff["a"]["version"] == "1.0" and diff["b"]["version"] == "1.1"
    [changes] = diff["files"]
    assert changes["newly_covered_lines"] == [2, 4]
    assert changes["no_longer_covered_lines"] == []


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_health_and_readiness(client):
    assert client.http.get("/healthz").json() == {"status": "ok"}
    ready = client.http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_a_span_dated_in_the_future_does_not_pin_the_default_release(client):
    year_2100 = 4_102_444_800 * 10**9
    before = time.time_ns()
    _seed(client, version="1.0", when_ns=year_2100, lines=[1])
    _seed(client, version="2.0", lines=[1, 2])
    after = time.time_ns()
    assert client.query("/api/v1/coverage", service="shop")["release"]["version"] == "2.0"
    releases = client.query("/api/v1/releases", service="shop")["releases"]
    assert [r["version"] for r in releases] == ["2.0", "1.0"]
    assert _iso(before - 10**9) <= releases[1]["last_seen"] <= _iso(after)
    # Its coverage is dated when it was received, in an hour bucket of now, not of 2100.
    series = client.query("/api/v1/series", service="shop", version="1.0")["series"]
    hours = {_iso(ns - ns % HOUR_NS) for ns in (before, after)}
    assert len(series) == 1 and series[0]["hour"] in hours


SELECTION_TAKES = "service, version, environment, role, endpoint, since, until"


def _raw(client, route, query):
    """GET ``route?query`` as written (repeated names kept), with the query token."""
    return client.http.get(
        f"{route}?{query}", headers={"authorization": "Bearer query-secret-token"}
    )


def test_an_unknown_parameter_is_400_naming_it_and_the_known_ones(client):
    """A misspelt parameter must not fall back to a default: ``rol=canary`` answered with the
    baseline's figures before, a pipeline reading them as the canary's."""
    now = time.time_ns()
    _seed(client, version="1.0", role="baseline", when_ns=now - HOUR_NS)
    _seed(client, version="1.1", role="canary", when_ns=now)
    response = _raw(client, "/api/v1/coverage", "service=shop&version=1.1&rol=canary")
    assert response.status_code == 400
    assert response.json() == {
        "error": "unknown parameter 'rol' (this endpoint takes: "
        f"{SELECTION_TAKES}, detail, path_prefix); did you mean 'role'?"
    }
    # No close name, no suggestion; every unknown one is named, in the order given.
    response = _raw(client, "/api/v1/file", "service=shop&path=shop/views.py&colour=red&x=1")
    assert response.status_code == 400
    assert response.json() == {
        "error": f"unknown parameters 'colour', 'x' (this endpoint takes: {SELECTION_TAKES}, "
        "path)"
    }
    response = _raw(client, "/api/v1/services", "service=shop")
    assert (response.status_code, response.json()) == (
        400, {"error": "unknown parameter 'service' (this endpoint takes no parameters)"}
    )
    response = _raw(client, "/api/v1/releases", "service=shop&verison=1.1")
    assert response.json() == {
        "error": "unknown parameter 'verison' (this endpoint takes: service)"
    }
    # diff: the a_/b_ forms are known, so a misspelt one is suggested.
    response = _raw(
        client, "/api/v1/diff", "service=shop&a_verison=1.0&b_version=1.1&b_rol=canary"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("unknown parameters 'a_verison', 'b_rol' (this endpoint takes: ")
    assert error.endswith("); did you mean 'a_version' for 'a_verison', 'b_role' for 'b_rol'?")
    # Names are case-sensitive; the check comes before any store work (an unknown service
    # with an unknown parameter is the parameter's 400, not the service's 404).
    response = _raw(client, "/api/v1/series", "service=nope&Role=canary")
    assert (response.status_code, response.json()["error"]) == (
        400,
        f"unknown parameter 'Role' (this endpoint takes: {SELECTION_TAKES}, path); "
        "did you mean 'role'?",
    )


def test_a_repeated_parameter_is_400_naming_it(client):
    """``role=baseline&role=canary`` names two releases; the API does not pick one."""
    _seed(client)
    response = _raw(client, "/api/v1/coverage", "service=shop&role=baseline&role=canary")
    assert (response.status_code, response.json()) == (
        400, {"error": "parameter 'role' is given 2 times: give it once"}
    )
    response = _raw(client, "/api/v1/diff", "service=shop&a_version=1.0&a_version=1.0")
    assert (response.status_code, response.json()) == (
        400, {"error": "parameter 'a_version' is given 2 times: give it once"}
    )


def test_every_documented_parameter_of_each_endpoint_is_accepted(client):
    """Each endpoint with every parameter docs/query-api.md gives it (listed here, not taken
    from the API's own table, so that a parameter left undeclared there fails)."""
    now = time.time_ns()
    _seed(client, version="1.0", role="baseline", when_ns=now - HOUR_NS)
    _seed(client, version="1.1", role="canary", when_ns=now)
    window = {"since": "7d", "until": _iso(now + HOUR_NS)}
    release = {"service": "shop", "version": "1.1", "environment": "prod", "role": "canary",
               "endpoint": "GET /a"}
    sides = {
        f"{side}_{name}": value
        for side, version, role in (("a", "1.0", "baseline"), ("b", "1.1", "canary"))
        for name, value in {**release, **window, "version": version, "role": role}.items()
    }
    documented = {
        "/api/v1/services": {},
        "/api/v1/releases": {"service": "shop"},
        "/api/v1/endpoints": {**release, **window},
        "/api/v1/coverage": {**release, **window, "detail": "1", "path_prefix": "shop/"},
        "/api/v1/file": {**release, **window, "path": "shop/views.py"},
        "/api/v1/series": {**release, **window, "path": "shop/views.py"},
        "/api/v1/diff": {**release, **window, **sides},
        "/api/v1/agent": release,
    }
    assert len(sides) == 14
    for route, params in documented.items():
        response = client.get(route, **params)
        assert response.status_code == 200, (route, response.text)
    diff = client.query("/api/v1/diff", **release, **window, **sides)
    assert (diff["a"]["version"], diff["b"]["version"]) == ("1.0", "1.1")
    # agent takes the window only to refuse it (its counters are all time), with that reason.
    for name, value in window.items():
        response = client.get("/api/v1/agent", **release, **{name: value})
        assert response.status_code == 400
        assert "since/until do not apply to agent metrics" in response.json()["error"]
