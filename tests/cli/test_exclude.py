"""``--exclude`` on runcov report and export, against coverage.py's own numbers.

coverage.py is the oracle: the report's totals, and every exported file (coverage.py data,
LCOV, Cobertura, JSON), must be what coverage.py reports for the same executions with the
same files omitted (``coverage ... --omit``).
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from runcov.cli import build_parser
from runcov.reports import report
from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

BASE = Release("shop", "1.0", "prod", "baseline")
CANARY = Release("shop", "1.1", "prod", "canary")
BASE_INPUTS = ("checkout-fr", "checkout-half", "item-even", "admin")
CANARY_INPUTS = ("checkout-bad", "item-missing")
ALL_INPUTS = tuple(support.INPUTS)

# What runcov's --exclude leaves out, and coverage.py's --omit for the same file (coverage.py
# matches its patterns against absolute paths).
VIEWS = "shop/views.py"
OMIT_VIEWS = "*/shop/views.py"


def populate(collector: RunningCollector, sample: Sample) -> None:
    collector.store.ingest(support.batch(BASE, sample.root, sample.requests(*BASE_INPUTS)))
    collector.store.ingest(support.batch(CANARY, sample.root, sample.requests(*CANARY_INPUTS)))


def coverage_json(sample: Sample, names: tuple[str, ...], omit: str, out: Path) -> dict[str, Any]:
    """``coverage json --omit`` of these inputs' combined measurement."""
    support.coverage_cli(sample.root, "json", f"--data-file={sample.oracle(*names)}",
                         f"--omit={omit}", "-o", str(out))
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def arcs_covered(sample: Sample, names: tuple[str, ...], excluded: str) -> int:
    """Executed arcs that coverage.py's parser counts as possible, outside ``excluded``."""
    executed = sample.arcs(*names)
    return sum(
        len(set(support.static_of(sample.root, path).arcs) & arcs)
        for path, arcs in executed.items() if path != excluded and arcs
    )


def percent(covered: int, total: int) -> float | None:
    return None if total == 0 else round(100.0 * covered / total, 1)


def assert_totals_are_coverage_pys(totals: dict[str, Any], truth: dict[str, Any]) -> None:
    t = truth["totals"]
    assert totals["files"] == len(truth["files"])
    assert (totals["lines_total"], totals["lines_covered"]) == (
        t["num_statements"], t["covered_lines"]
    )
    assert (totals["branches_total"], totals["branches_covered"]) == (
        t["num_branches"], t["covered_branches"]
    )
    assert totals["line_percent"] == percent(t["covered_lines"], t["num_statements"])
    assert totals["branch_percent"] == percent(t["covered_branches"], t["num_branches"])


def report_json(collector: RunningCollector, *args: str) -> dict[str, Any]:
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--format", "json",
                          *args)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = support.as_json(proc)
    return doc


def test_report_totals_without_the_excluded_files_are_coverage_pys(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """The files table, its totals, the endpoints' and the releases' figures all leave the
    excluded file out, and equal coverage.py's for the same requests with it omitted."""
    populate(collector, sample)
    whole = report_json(collector, "--version", "1.0")
    doc = report_json(collector, "--version", "1.0", "--exclude", "views.py")
    truth = coverage_json(sample, BASE_INPUTS, OMIT_VIEWS, tmp_path / "base.json")
    assert sorted(truth["files"]) == ["shop/__init__.py", "shop/pricing.py"]
    assert [f["path"] for f in doc["files"]] == sorted(truth["files"])
    assert_totals_are_coverage_pys(doc["totals"], truth)
    # The collector's own totals counted views.py: they are recounted, not passed through.
    assert doc["totals"]["lines_total"] < whole["totals"]["lines_total"]
    assert doc["totals"]["branches_total"] < whole["totals"]["branches_total"]
    assert doc["totals"]["arcs_covered"] == arcs_covered(sample, BASE_INPUTS, VIEWS)
    # Requests count traces, whichever files they ran: the release's, as without --exclude.
    assert doc["totals"]["requests"] == whole["totals"]["requests"] == len(BASE_INPUTS)
    assert doc["exclude"] == ["views.py"] and doc["excluded_files"] == [VIEWS]
    assert whole["exclude"] is None and whole["excluded_files"] == []

    # Each endpoint's lines and arcs are its own requests' in the remaining files.
    by_endpoint: dict[str, tuple[str, ...]] = {}
    for name in BASE_INPUTS:
        by_endpoint[support.INPUTS[name]] = (*by_endpoint.get(support.INPUTS[name], ()), name)
    endpoints = {e["endpoint"]: e for e in doc["endpoints"]}
    assert sorted(endpoints) == sorted(by_endpoint)
    for endpoint, names in by_endpoint.items():
        t = coverage_json(sample, names, OMIT_VIEWS, tmp_path / "endpoint.json")["totals"]
        assert endpoints[endpoint]["lines_covered"] == t["covered_lines"], endpoint
        assert endpoints[endpoint]["arcs_covered"] == arcs_covered(sample, names, VIEWS)
        assert endpoints[endpoint]["requests"] == len(names)

    # The releases table (all time) likewise, each release for its own requests.
    releases = {r["version"]: r for r in doc["releases"]}
    for version, names in (("1.0", BASE_INPUTS), ("1.1", CANARY_INPUTS)):
        t = coverage_json(sample, names, OMIT_VIEWS, tmp_path / "release.json")["totals"]
        r = releases[version]
        assert (r["lines_total"], r["lines_covered"]) == (t["num_statements"],
                                                          t["covered_lines"]), version
        assert r["line_percent"] == percent(t["covered_lines"], t["num_statements"])
        assert r["branch_percent"] == percent(t["covered_branches"], t["num_branches"])
        assert r["arcs_covered"] == arcs_covered(sample, names, VIEWS)
        assert r["requests"] == len(names)


def test_text_report_total_row_without_the_excluded_files(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    populate(collector, sample)
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--version", "1.0",
                          "--exclude", "shop/v*", "--exclude", "nothing/*")
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split("\nFiles of ", 1)[1].splitlines()
    assert files[0] == ("shop 1.0 (prod, baseline), without files matching --exclude "
                        "'shop/v*', 'nothing/*'")
    body = [r for r in files[3:] if r and not r.startswith("-")]
    assert [r.split()[0] for r in body[:-2]] == ["shop/__init__.py", "shop/pricing.py"]
    t = coverage_json(sample, BASE_INPUTS, OMIT_VIEWS, tmp_path / "truth.json")["totals"]
    total = body[-2].split()
    assert body[-2].startswith("TOTAL (2 files)")
    assert total[3:9] == [
        str(t["num_statements"]), str(t["num_statements"] - t["covered_lines"]),
        str(t["num_branches"]), str(t["num_branches"] - t["covered_branches"]),
        f"{percent(t['covered_lines'], t['num_statements']):.1f}%",
        f"{percent(t['covered_branches'], t['num_branches']):.1f}%",
    ]
    assert total[-1] == str(len(BASE_INPUTS))
    assert body[-1] == ("The TOTAL row's Requests are all the sampled requests of shop 1.0 "
                        "(prod, baseline), not only those that ran the files shown.")
    # The releases table counts without the excluded file too.
    releases = proc.stdout.split("\nEndpoints of", 1)[0]
    [row] = [r for r in releases.splitlines() if r.startswith("1.0")]
    assert row.split()[4] == f"{t['covered_lines']}/{t['num_statements']}"


def test_report_absolute_glob_matches_the_file_under_source(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """An absolute glob matches the local file's absolute path under --source, as the agent's
    exclude and gate's --exclude do; elsewhere it matches nothing."""
    populate(collector, sample)
    absolute = str((sample.root / VIEWS).resolve())
    doc = report_json(collector, "--version", "1.0", "--exclude", absolute,
                      "--source", str(sample.root))
    assert VIEWS not in [f["path"] for f in doc["files"]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    doc = report_json(collector, "--version", "1.0", "--exclude", absolute,
                      "--source", str(elsewhere))
    assert VIEWS in [f["path"] for f in doc["files"]]


def test_report_census_branch_figures_stay_unknown(
    collector: RunningCollector, sample: Sample
) -> None:
    """Census coverage has no arcs: the recounted totals keep the collector's nulls."""
    census = Release("shop", "2.0", "prod", "baseline")
    collector.store.ingest(
        support.batch(census, sample.root, sample.requests(*BASE_INPUTS), mode="census")
    )
    doc = report_json(collector, "--version", "2.0", "--exclude", "views.py")
    assert doc["totals"]["lines_covered"] > 0
    assert doc["totals"]["branches_covered"] is None and doc["totals"]["branch_percent"] is None
    assert doc["totals"]["arcs_covered"] is None
    assert all(e["arcs_covered"] is None for e in doc["endpoints"])
    [row] = [r for r in doc["releases"] if r["version"] == "2.0"]
    assert row["arcs_covered"] is None and row["branch_percent"] is None


def test_recount_totals_follows_the_collectors_census_rule() -> None:
    """Null arcs and branches when the files ran lines and no arcs; numbers (0) when they ran
    nothing, or when any of them was measured exactly; line percent over known denominators."""
    census = {"path": "a.py", "lines_covered": 3, "lines_total": 10, "arcs_covered": None,
              "arcs_total": 12, "branches_covered": None, "branches_total": 4}
    idle = {"path": "b.py", "lines_covered": 0, "lines_total": 5, "arcs_covered": 0,
            "arcs_total": 6, "branches_covered": 0, "branches_total": 2}
    exact = {"path": "c.py", "lines_covered": 2, "lines_total": 4, "arcs_covered": 3,
             "arcs_total": 5, "branches_covered": 1, "branches_total": 2}
    unknown = {"path": "d.py", "lines_covered": 7, "lines_total": 0, "arcs_covered": 8,
               "arcs_total": 0, "branches_covered": 0, "branches_total": 0}
    t = report.recount_totals([census, idle], 9)
    assert (t["files"], t["lines_covered"], t["lines_total"], t["line_percent"]) == (
        2, 3, 15, 20.0
    )
    assert t["arcs_covered"] is None and t["branches_covered"] is None
    assert t["branch_percent"] is None and t["requests"] == 9
    t = report.recount_totals([idle], 9)
    assert (t["arcs_covered"], t["branches_covered"], t["branch_percent"]) == (0, 0, 0.0)
    t = report.recount_totals([census, exact], 9)
    assert (t["arcs_covered"], t["branches_covered"], t["branches_total"]) == (3, 1, 6)
    assert t["branch_percent"] == 16.7
    # A file without denominators adds its covered lines, but not to the percentage.
    t = report.recount_totals([exact, unknown], 9)
    assert (t["lines_covered"], t["lines_total"], t["line_percent"]) == (9, 4, 50.0)
    assert report.recount_totals([], 0)["line_percent"] is None


def export(collector: RunningCollector, sample: Sample, fmt: str, out: Path,
           *extra: str) -> str:
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--version", "1.0", "--format", fmt,
        "-o", str(out), "--source", str(sample.root), *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.fixture
def released(collector: RunningCollector, sample: Sample) -> None:
    """Every input of the sample app as release 1.0."""
    collector.store.ingest(support.batch(BASE, sample.root, sample.requests(*ALL_INPUTS)))


@pytest.mark.usefixtures("released")
def test_exported_coverage_data_is_coverage_pys_with_the_files_omitted(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    out = tmp_path / "prod.coverage"
    stderr = export(collector, sample, "coverage", out, "--exclude", "views.py")
    assert stderr.splitlines()[-1] == (
        f"wrote {out} (coverage, 2 files; 1 left out by --exclude)"
    )
    oracle = sample.oracle(*ALL_INPUTS)
    data = CoverageData(basename=str(out))
    data.read()
    assert sorted(Path(f).name for f in data.measured_files()) == ["__init__.py", "pricing.py"]
    expected = support.coverage_cli(sample.root, "report", "-m", f"--data-file={oracle}",
                                    f"--omit={OMIT_VIEWS}")
    assert "views.py" not in expected and "pricing.py" in expected
    assert support.coverage_cli(sample.root, "report", "-m", f"--data-file={out}") == expected

    # Per endpoint (coverage.py contexts), the excluded file is left out as well.
    ctx = tmp_path / "contexts.coverage"
    export(collector, sample, "coverage", ctx, "--exclude", "views.py", "--contexts", "endpoint")
    data = CoverageData(basename=str(ctx))
    data.read()
    assert sorted(Path(f).name for f in data.measured_files()) == ["__init__.py", "pricing.py"]
    assert support.coverage_cli(sample.root, "report", "-m", f"--data-file={ctx}") == expected


def _lcov(text: str) -> dict[str, dict[str, Any]]:
    """Per file name: DA (line, hits), branches per line (taken, in order), LF/LH/BRF/BRH."""
    records: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "SF":
            current = records.setdefault(Path(value).name, {"DA": [], "BR": {}})
        elif key == "DA":
            current["DA"].append(tuple(value.split(",")[:2]))
        elif key == "BRDA":
            lineno, _, rest = value.split(",", 2)
            current["BR"].setdefault(lineno, []).append(rest.rpartition(",")[2])
        elif key in ("LF", "LH", "BRF", "BRH"):
            current[key] = int(value)
    return records


@pytest.mark.usefixtures("released")
def test_exported_lcov_and_cobertura_are_coverage_pys_with_the_files_omitted(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    oracle = sample.oracle(*ALL_INPUTS)
    lcov = tmp_path / "prod.lcov"
    export(collector, sample, "lcov", lcov, "--exclude", "shop/views.py")
    want = tmp_path / "oracle.lcov"
    support.coverage_cli(sample.root, "lcov", f"--data-file={oracle}", f"--omit={OMIT_VIEWS}",
                         "-o", str(want))
    got, expected = _lcov(lcov.read_text()), _lcov(want.read_text())
    assert sorted(got) == sorted(expected) == ["__init__.py", "pricing.py"]
    assert got == expected

    xml = tmp_path / "prod.xml"
    export(collector, sample, "cobertura", xml, "--exclude", "shop/views.py")
    want = tmp_path / "oracle.xml"
    support.coverage_cli(sample.root, "xml", f"--data-file={oracle}", f"--omit={OMIT_VIEWS}",
                         "-o", str(want))

    def classes(path: Path) -> dict[str, set[tuple[str, str, str]]]:
        return {
            cls.get("filename", ""): {
                (ln.get("number", ""), ln.get("hits", ""), ln.get("condition-coverage", ""))
                for ln in cls.iter("line")
            }
            for cls in ET.parse(path).iter("class")
        }

    assert sorted(classes(xml)) == ["shop/__init__.py", "shop/pricing.py"]
    assert classes(xml) == classes(want)
    ours, theirs = ET.parse(xml).getroot(), ET.parse(want).getroot()
    for attr in ("line-rate", "branch-rate", "lines-covered", "lines-valid",
                 "branches-covered", "branches-valid"):
        assert ours.get(attr) == theirs.get(attr), attr


@pytest.mark.usefixtures("released")
def test_exported_json_leaves_the_files_out_and_recounts_its_totals(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    out = tmp_path / "prod.json"
    export(collector, sample, "json", out, "--omit", "views.py")
    doc = json.loads(out.read_text())
    truth = coverage_json(sample, ALL_INPUTS, OMIT_VIEWS, tmp_path / "truth.json")
    assert [f["path"] for f in doc["files"]] == sorted(truth["files"])
    assert_totals_are_coverage_pys(doc["totals"], truth)
    assert doc["totals"]["requests"] == len(ALL_INPUTS)


def test_source_and_exclude_mean_the_same_on_every_command() -> None:
    """One declaration: gate, compare-tests, report and export take --source (repeatable,
    default none: the current directory) and --exclude GLOB (repeatable, alias --omit)."""
    parser = build_parser()
    required = {"gate": ["--service", "s", "--paths", "f.py"], "compare-tests": [],
                "report": [], "export": []}
    for command, extra in required.items():
        args = parser.parse_args([command, *extra])
        assert (args.source, args.exclude) == (None, []), command
        args = parser.parse_args([command, *extra, "--source", "a", "--source", "b",
                                  "--exclude", "x/*", "--omit", "y.py"])
        assert (args.source, args.exclude) == (["a", "b"], ["x/*", "y.py"]), command
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in required:
        text = sub.choices[command].format_help()
        assert "--exclude GLOB, --omit GLOB" in text and "--source DIR" in text, command
