"""Endpoint selectors: parsing, matching, specificity and endpoint names."""

from __future__ import annotations

import pytest

from runcov.errors import ConfigError
from runcov.selectors import EndpointMatcher, Rule, endpoint_name, parse_selector


def test_star_matches_everything_with_defaults() -> None:
    matcher = EndpointMatcher(["*"], 0.02, "exact")
    assert matcher.match("GET", "/items/{item_id}") == Rule("* *", 0.02, "exact")
    assert matcher.match(None, None) == Rule("* *", 0.02, "exact")
    assert matcher.may_match("DELETE")


def test_rate_and_mode_suffixes_in_any_order() -> None:
    sel = parse_selector("POST /checkout@0.5#census")
    assert (sel.method, sel.route, sel.rate, sel.mode) == ("POST", "/checkout", 0.5, "census")
    sel = parse_selector("GET /health#census@1")
    assert (sel.method, sel.route, sel.rate, sel.mode) == ("GET", "/health", 1.0, "census")
    sel = parse_selector("/only/route")
    assert (sel.method, sel.route, sel.rate, sel.mode) == (None, "/only/route", None, None)
    sel = parse_selector("delete")
    assert (sel.method, sel.route) == ("DELETE", "*")


def test_per_selector_rate_and_mode_override_defaults() -> None:
    matcher = EndpointMatcher(["POST /checkout@0.5", "GET /health#census", "*"], 0.01, "exact")
    assert matcher.match("POST", "/checkout") == Rule("POST /checkout", 0.5, "exact")
    assert matcher.match("GET", "/health") == Rule("GET /health", 0.01, "census")
    assert matcher.match("GET", "/checkout") == Rule("* *", 0.01, "exact")


def test_glob_crosses_slashes_and_method_is_case_insensitive() -> None:
    matcher = EndpointMatcher(["GET /items/*"])
    assert matcher.match("get", "/items/{item_id}") is not None
    assert matcher.match("GET", "/items/{item_id}/reviews") is not None
    assert matcher.match("GET", "/items") is None
    assert matcher.match("POST", "/items/{item_id}") is None
    assert matcher.match(None, "/items/x") is None


def test_most_specific_selector_wins_regardless_of_order() -> None:
    matcher = EndpointMatcher(
        ["*@0.1", "* /api/*@0.2", "GET /api/*@0.3", "* /api/orders/*@0.4", "GET /api/orders/{id}@1"]
    )
    assert matcher.match("GET", "/api/orders/{id}").rate == 1.0  # no wildcard
    assert matcher.match("POST", "/api/orders/{id}").rate == 0.4  # longer literal
    assert matcher.match("GET", "/api/users").rate == 0.3  # same literal, named method
    assert matcher.match("POST", "/api/users").rate == 0.2
    assert matcher.match("POST", "/other").rate == 0.1


def test_ties_go_to_the_first_listed() -> None:
    matcher = EndpointMatcher(["* /a/*@0.5", "* /*/b@0.7"])
    assert matcher.match("GET", "/a/b").rate == 0.5
    matcher = EndpointMatcher(["* /*/b@0.7", "* /a/*@0.5"])
    assert matcher.match("GET", "/a/b").rate == 0.7


def test_unknown_route_only_matches_any_route_selectors() -> None:
    matcher = EndpointMatcher(["GET /items/*", "POST"])
    assert matcher.match("GET", None) is None
    assert matcher.match("POST", None) == Rule("POST *", 0.01, "exact")
    assert matcher.may_match("GET")
    assert matcher.may_match("post")
    assert not matcher.may_match("DELETE")
    assert not matcher.may_match(None)
    assert matcher.max_rate("GET") == 0.01
    assert matcher.max_rate("DELETE") == 0.0


def test_job_and_consumer_endpoints() -> None:
    matcher = EndpointMatcher(["job billing.*@1", "consumer *#census"], 0.01, "exact")
    assert matcher.match("job", "billing.run") == Rule("JOB billing.*", 1.0, "exact")
    assert matcher.match(None, "job billing.run") == Rule("JOB billing.*", 1.0, "exact")
    assert matcher.match("job", "reports.run") is None
    assert matcher.match("consumer", "orders process").mode == "census"
    assert matcher.match("GET", "/billing.x") is None


def test_websocket_endpoints() -> None:
    """A websocket connection is the request ``WEBSOCKET <route>``: selectors naming that
    method (in any case) or no method select it; those of an HTTP method do not."""
    sel = parse_selector("websocket /ws/*@0.5")
    assert (sel.method, sel.route, sel.rate) == ("WEBSOCKET", "/ws/*", 0.5)
    assert sel.text == "WEBSOCKET /ws/*"
    room = ("WEBSOCKET", "/ws/{room}")
    rule = Rule("WEBSOCKET /ws/*", 1.0, "exact")
    assert EndpointMatcher(["WEBSOCKET /ws/*@1"]).match(*room) == rule
    assert EndpointMatcher(["WEBSOCKET /ws/*"]).match(None, "WEBSOCKET /ws/{room}") is not None
    for selector in ("/ws/*", "* /ws/*", "WEBSOCKET", "*"):
        assert EndpointMatcher([selector]).match(*room) is not None, selector
    for selector in ("GET /ws/*", "GET", "WEBSOCKET /api/*"):
        assert EndpointMatcher([selector]).match(*room) is None, selector
    assert EndpointMatcher(["WEBSOCKET /ws/*"]).match("GET", "/ws/{room}") is None
    # A websocket whose route is not known (yet): decided on the method.
    matcher = EndpointMatcher(["WEBSOCKET /ws/*@0.3", "GET /items/*@0.9"])
    assert matcher.may_match("WEBSOCKET")
    assert matcher.max_rate("WEBSOCKET") == 0.3
    assert EndpointMatcher(["WEBSOCKET"]).match("WEBSOCKET", None) is not None


def test_endpoint_names() -> None:
    assert endpoint_name("get", "/items/{item_id}") == "GET /items/{item_id}"
    assert endpoint_name("job", "billing.run") == "job billing.run"
    assert endpoint_name("CONSUMER", "orders process") == "consumer orders process"
    assert endpoint_name("GET", None) == "GET"
    assert endpoint_name("WEBSOCKET", "/ws/{room}") == "WEBSOCKET /ws/{room}"
    assert endpoint_name("WEBSOCKET", None) == "WEBSOCKET"
    assert endpoint_name(None, "/x") == "/x"


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "GET /x@", "GET /x@abc", "GET /x@-1", "GET /x#fast", "GET /a@0.1@0.2",
     "GE:T /x", "GET /a b", "GET /a@0.5 /b"],
)
def test_invalid_selectors_raise_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="endpoints="):
        EndpointMatcher([bad])


def test_invalid_default_mode() -> None:
    with pytest.raises(ConfigError, match="mode='x'"):
        EndpointMatcher(["*"], 0.1, "x")
