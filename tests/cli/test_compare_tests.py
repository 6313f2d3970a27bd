"""runcov compare-tests: production coverage against a test suite's coverage.py data file."""

from __future__ import annotations

from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

PROD = Release("shop", "3.0", "prod", "baseline")
PROD_INPUTS = ("checkout-half", "checkout-bad", "item-even", "admin")
TEST_INPUTS = ("checkout-fr", "item-even", "item-missing", "never-called")


def run(collector: RunningCollector, sample: Sample, *extra: str):
    collector.store.ingest(support.batch(PROD, sample.root, sample.requests(*PROD_INPUTS)))
    return support.runcov(
        "compare-tests", *collector.args(), "--service", "shop", "--tests",
        str(sample.oracle(*TEST_INPUTS)), "--source", str(sample.root), *extra,
    )


def test_risk_and_dead_code_per_file_equal_set_differences(
    collector: RunningCollector, sample: Sample
) -> None:
    proc = run(collector, sample, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    prod, tests = sample.lines(*PROD_INPUTS), sample.lines(*TEST_INPUTS)
    files = {f["path"]: f for f in doc["files"]}
    assert set(files) == set(prod) | set(tests)
    for path, f in files.items():
        assert set(f["untested_lines"]) == prod.get(path, set()) - tests.get(path, set())
        assert set(f["unused_lines"]) == tests.get(path, set()) - prod.get(path, set())
    assert doc["totals"]["untested_lines"] == sum(len(f["untested_lines"]) for f in files.values())

    # Branches: with HALF only in production, 12->13 is untested; 10->11 (no code) only tested.
    pricing = files["shop/pricing.py"]
    assert [12, 13] in pricing["untested_arcs"]
    assert [10, 11] in pricing["unused_arcs"]
    # Every reported arc leaves a branch line (coverage.py's "2+ possible exits").
    for arc in pricing["untested_arcs"] + pricing["unused_arcs"]:
        assert arc[0] in (10, 12, 14, 23, 31, 32, 34, 43)

    verdicts = {fn["name"]: fn["verdict"] for fn in pricing["functions"]}
    assert verdicts["never_called"] == "unused in production"
    assert verdicts["bulk_price"] == "both"
    views = {fn["name"]: fn["verdict"] for fn in files["shop/views.py"]["functions"]}
    assert views["Admin.report"] == "untested"


def test_table(collector: RunningCollector, sample: Sample) -> None:
    proc = run(collector, sample, "--omit", "shop/__init__.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["File", "Prod", "Tests", "Untested", "Unused", "UntestedBr",
                                "UnusedBr"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["shop/pricing.py", "shop/views.py"]
    assert "  unused in production: never_called (lines 41-45)" in proc.stdout
    assert "  untested: Admin.report (lines 32-37)" in proc.stdout
    assert "shop/__init__.py" not in proc.stdout


def test_missing_test_data_is_a_usage_error(collector: RunningCollector, sample: Sample) -> None:
    proc = support.runcov("compare-tests", *collector.args(), "--service", "shop",
                          "--tests", str(sample.scratch / "nope"))
    assert proc.returncode == 2 and "no coverage data file" in proc.stderr
