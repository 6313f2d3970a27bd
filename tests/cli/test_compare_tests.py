"""runcov compare-tests: production coverage against a test suite's coverage.py data file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
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


def executed_branches(sample: Sample, tmp_path: Path, *inputs: str) -> dict[str, set[tuple]]:
    """coverage.py's own executed branch exits per file for these inputs (its JSON report)."""
    out = tmp_path / "truth.json"
    support.coverage_cli(sample.root, "json", f"--data-file={sample.oracle(*inputs)}",
                         "-o", str(out))
    files = json.loads(out.read_text())["files"]
    return {path: {tuple(a) for a in f.get("executed_branches", [])} for path, f in files.items()}


def data_of_tests_that_only_import(sample: Sample, tmp_path: Path, branch: bool) -> Path:
    """A test suite's data in which only ``shop/__init__.py`` ran: coverage.py lists the other
    modules of ``--source=shop`` as measured files without a line (never executed)."""
    script = tmp_path / "import_shop.py"
    script.write_text("import shop\n")
    data = tmp_path / (".coverage.import-only." + ("branch" if branch else "lines"))
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", *(["--branch"] if branch else []),
         "--source=shop", f"--data-file={data}", str(script)],
        cwd=sample.root, env={**support.clean_env(), "PYTHONPATH": str(sample.root)},
        check=True, capture_output=True,
    )
    measured = support.hits(data, sample.root)
    assert {"shop/pricing.py", "shop/views.py"} <= set(measured)
    assert not measured["shop/pricing.py"][0] and not measured["shop/views.py"][0]
    return data


def test_every_production_branch_of_a_file_the_tests_never_ran_is_untested(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """A file the tests never executed has no arcs in their branch data: that is every
    branch production took left untested, not "nothing to compare" (0)."""
    collector.store.ingest(support.batch(PROD, sample.root, sample.requests(*PROD_INPUTS)))
    data = data_of_tests_that_only_import(sample, tmp_path, branch=True)
    args = ("compare-tests", *collector.args(), "--service", "shop", "--tests", str(data),
            "--source", str(sample.root))
    proc = support.runcov(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    taken = executed_branches(sample, tmp_path, *PROD_INPUTS)
    files = {f["path"]: f for f in doc["files"]}
    for path in ("shop/pricing.py", "shop/views.py"):
        assert taken[path], path
        assert {tuple(a) for a in files[path]["untested_arcs"]} == taken[path], path
        assert files[path]["unused_arcs"] == []
    assert doc["totals"]["untested_arcs"] == sum(len(v) for v in taken.values())
    assert doc["branch_data"] == {"tests": True, "production": True}

    proc = support.runcov(*args)
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in proc.stdout.splitlines() if r.startswith("shop/pricing.py "))
    assert row.split()[5:] == [str(len(taken["shop/pricing.py"])), "0"]
    assert "n/a" not in proc.stdout


def test_tests_measured_without_branch_data_say_branches_are_not_compared(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """Line data (``coverage run`` without --branch) cannot tell which branches the tests
    took: the branch figures of the files they ran read n/a (null), and the output says why,
    rather than 0 untested branches everywhere."""
    collector.store.ingest(support.batch(PROD, sample.root, sample.requests(*PROD_INPUTS)))
    data = tmp_path / ".coverage.lines"
    support.coverage_run(sample.root, data, *TEST_INPUTS, branch=False)
    args = ("compare-tests", *collector.args(), "--service", "shop", "--tests", str(data),
            "--source", str(sample.root))
    doc = support.as_json(support.runcov(*args, "--format", "json"))
    assert doc["branch_data"] == {"tests": False, "production": True}
    ran = {p for p, (lines, _) in support.hits(data, sample.root).items() if lines}
    assert {"shop/pricing.py", "shop/views.py"} <= ran
    assert doc["branches_not_compared"] == {"tests": sorted(ran), "production": []}
    for f in doc["files"]:
        assert f["untested_arcs"] is None and f["unused_arcs"] is None, f["path"]
    assert doc["totals"]["untested_arcs"] is None and doc["totals"]["unused_arcs"] is None
    # The lines are compared as usual.
    prod, tests = sample.lines(*PROD_INPUTS), sample.lines(*TEST_INPUTS)
    files = {f["path"]: f for f in doc["files"]}
    assert set(files["shop/pricing.py"]["untested_lines"]) == (
        prod["shop/pricing.py"] - tests["shop/pricing.py"]
    )

    proc = support.runcov(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    body = lines[2:lines.index(next(r for r in lines if r.startswith("TOTAL"))) + 1]
    assert all(r.split()[-2:] == ["n/a", "n/a"] for r in body if not r.startswith("-")), body
    assert (f"UntestedBr and UnusedBr are n/a for the {len(ran)} file(s) the tests ran: {data} "
            "has no branch data (it was measured without --branch)") in proc.stdout

    # A file those tests never ran took none of its branches: that much is known.
    data = data_of_tests_that_only_import(sample, tmp_path, branch=False)
    doc = support.as_json(support.runcov(
        "compare-tests", *collector.args(), "--service", "shop", "--tests", str(data),
        "--source", str(sample.root), "--format", "json",
    ))
    files = {f["path"]: f for f in doc["files"]}
    taken = executed_branches(sample, tmp_path, *PROD_INPUTS)
    assert {tuple(a) for a in files["shop/pricing.py"]["untested_arcs"]} == taken[
        "shop/pricing.py"
    ]


def test_exclude_matches_as_the_agents_exclude_and_omit_stays_its_alias(
    collector: RunningCollector, sample: Sample
) -> None:
    """--exclude globs mean what the agent's ``exclude`` means: a glob without "/" matches
    the file name at any depth; --omit, its former name, does the same."""
    for option in ("--exclude", "--omit"):
        proc = run(collector, sample, option, "__init__.py", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        paths = [f["path"] for f in support.as_json(proc)["files"]]
        assert paths == ["shop/pricing.py", "shop/views.py"], option
    proc = run(collector, sample, "--exclude", "shop/v*", "--exclude", "*/pricing.py",
               "--format", "json")
    assert [f["path"] for f in support.as_json(proc)["files"]] == ["shop/__init__.py"]
    proc = run(collector, sample, "--exclude", str(sample.root.resolve() / "shop" / "p*"),
               "--format", "json")
    assert [f["path"] for f in support.as_json(proc)["files"]] == [
        "shop/__init__.py", "shop/views.py"
    ]
