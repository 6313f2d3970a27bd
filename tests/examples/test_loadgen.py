"""The service benchmark's load generator drives a real example server and times every request."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.examples import support

_spec = importlib.util.spec_from_file_location("loadgen", support.REPO / "benchmarks" /
                                               "loadgen.py")
assert _spec is not None and _spec.loader is not None
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)


@pytest.mark.parametrize(("q", "expected"), [(0.0, 1), (0.5, 5), (0.9, 9), (0.99, 10), (1.0, 10)])
def test_percentile_is_nearest_rank(q: float, expected: int) -> None:
    assert loadgen.percentile(list(range(1, 11)), q) == expected


def test_loadgen_measures_a_served_shop(tmp_path: Path) -> None:
    collector, url = support.start_collector(tmp_path)
    try:
        app, app_url = support.start_app("shop_flask", url, tmp_path)
        try:
            result = loadgen.run("127.0.0.1", int(app_url.rsplit(":", 1)[1]), threads=2,
                                 warmup=0.2, duration=1.0)
        finally:
            app.stop()
    finally:
        collector.stop()
    assert result["errors"] == 0
    assert result["requests"] == sum(result["statuses"].values()) > 10
    assert {"200", "201", "422"} <= set(result["statuses"])
    assert result["throughput"] == pytest.approx(result["requests"] / result["seconds"], rel=1e-3)
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
