"""runcov compare-tests: production coverage against a test suite's coverage.py data file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from coverage import Coverage

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


WHAT = "a coverage.py data file (the SQLite file `coverage run` writes, e.g. .coverage)"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.coverage", b"not coverage data\n", "{f} is not " + WHAT),
    ("coverage.json", b'{"meta": {"version": "7.6"}, "files": {}}',
     "{f} is JSON, not " + WHAT + ": give the data file, not a report made from it"),
    ("empty.coverage", b"", "{f} is empty, not " + WHAT),
    ("store.db", None, "{f} is not " + WHAT + ": no such table: coverage_schema"),
], ids=["text", "json", "empty", "other-sqlite"])
def test_test_data_that_is_not_a_coverage_data_file_is_a_usage_error_naming_it(
    collector: RunningCollector, sample: Sample, tmp_path: Path, name: str,
    content: bytes | None, message: str,
) -> None:
    """Exit 2 naming the file (not an internal error), and the file is left as it was:
    coverage.py would write its tables into an empty file or another SQLite database."""
    collector.store.ingest(support.batch(PROD, sample.root, sample.requests(*PROD_INPUTS)))
    data = tmp_path / "given" / name  # beside, not over, the collector's own store.db
    data.parent.mkdir()
    if content is None:
        with sqlite3.connect(data) as db:
            db.execute("CREATE TABLE t (x)")
        db.close()
    else:
        data.write_bytes(content)
    before = data.read_bytes()
    proc = support.runcov("compare-tests", *collector.args(), "--service", "shop",
                          "--tests", str(data), "--source", str(sample.root))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"runcov: {message.format(f=data)}\n"
    assert data.read_bytes() == before


def test_lines_that_run_only_at_import_are_no_dead_code_candidates(
    collector: RunningCollector, sample: Sample
) -> None:
    """Production requests never run imports, def/class lines or module constants (the agent
    measures requests, not process start): they must not all show up as unused."""
    at_import_data = sample.scratch / ".coverage.import-only"
    if not at_import_data.exists():
        support.coverage_run(sample.root, at_import_data)  # drive.py without a request
    at_import = {p: set(h[0]) for p, h in support.hits(at_import_data, sample.root).items()}
    assert at_import["shop/views.py"] and at_import["shop/pricing.py"]
    requests = sample.requests(*PROD_INPUTS)
    for r in requests:
        r.files = {p: ([n for n in lines if n not in at_import.get(p, set())], [])
                   for p, (lines, _) in r.files.items()}
    collector.store.ingest(support.batch(PROD, sample.root, requests, mode="census"))
    proc = support.runcov(
        "compare-tests", *collector.args(), "--service", "shop", "--tests",
        str(sample.oracle(*TEST_INPUTS)), "--source", str(sample.root), "--format", "json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    prod = {p: lines - at_import.get(p, set()) for p, lines in sample.lines(*PROD_INPUTS).items()}
    tests = sample.lines(*TEST_INPUTS)
    files = {f["path"]: f for f in doc["files"]}
    left_out = 0
    for path, f in files.items():
        statements = set(Coverage(data_file=None).analysis2(str(sample.root / path))[1])
        unused = (tests.get(path, set()) - prod.get(path, set())) & statements
        assert set(f["unused_lines"]) == unused - at_import.get(path, set()), path
        assert f["import_time_lines"] == len(unused & at_import.get(path, set())), path
        left_out += f["import_time_lines"]
    assert doc["totals"]["import_time_lines"] == left_out > 0
    # never_called (lines 41-45): the body the tests ran is a candidate, its def line is not.
    assert {43, 44} <= set(files["shop/pricing.py"]["unused_lines"])
    assert 41 not in files["shop/pricing.py"]["unused_lines"]

    proc = support.runcov(
        "compare-tests", *collector.args(), "--service", "shop", "--tests",
        str(sample.oracle(*TEST_INPUTS)), "--source", str(sample.root),
    )
    assert (f"Unused leaves out {left_out} lines that run only at import time (imports, "
            "def/class lines, decorators, module- and class-level statements), which no "
            "request executes.") in proc.stdout
