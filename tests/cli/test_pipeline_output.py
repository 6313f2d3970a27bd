"""What a CD pipeline reads from report, diff, gate and export: windows, empty results, verdicts.

Each run is the real ``runcov`` command against a real collector fed with coverage.py's
measurements of the sample app.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

BASE = Release("shop", "1.0", "prod", "baseline")
CANARY = Release("shop", "1.1", "prod", "canary")
BASE_INPUTS = ("checkout-fr", "checkout-half", "item-even", "admin")
CANARY_INPUTS = ("checkout-bad", "item-missing", "item-even")
EMPTY = "2030-01-01"  # a window without data: in the future


def populate(collector: RunningCollector, sample: Sample, base_age: float = 0.0) -> None:
    """1.0 baseline (its requests ``base_age`` seconds old) and the 1.1 canary (now)."""
    base = sample.requests(*BASE_INPUTS)
    for r in base:
        r.when -= base_age
    collector.store.ingest(support.batch(BASE, sample.root, base))
    collector.store.ingest(support.batch(CANARY, sample.root, sample.requests(*CANARY_INPUTS)))


def hour_of(seconds: float) -> str:
    """``2026-11-25 10:00 UTC``: the store's hour that ``seconds`` falls in."""
    start = math.floor(seconds / 3600) * 3600
    return datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- diff and gate name their window --------------------------------------------------------


def test_diff_of_a_window_without_coverage_on_either_side_says_so(
    collector: RunningCollector, sample: Sample
) -> None:
    """Two empty sides are not "no coverage differences": exit 2 (a data error, as an export
    of nothing is), naming both releases and the window."""
    populate(collector, sample)
    args = ("diff", *collector.args(), "--service", "shop", "--canary", "1.1", "--since", EMPTY)
    for fmt in ("text", "json"):
        proc = support.runcov(*args, "--format", fmt)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stdout == ("" if fmt == "text" else json.dumps(
            {"error": proc.stderr.strip().removeprefix("runcov: "), "exit_code": 2}) + "\n")
        assert proc.stderr == (
            "runcov: nothing to compare: neither A (shop 1.0 (prod, baseline)) nor B (shop 1.1 "
            f"(prod, canary)) has coverage since {EMPTY}\n"
        )


def test_diff_names_its_window_and_a_side_without_coverage(
    collector: RunningCollector, sample: Sample
) -> None:
    """The window is in the text (a ``Window:`` line) and the JSON (``window``), and a side
    that has no coverage in it is named: everything the other covers is a difference."""
    populate(collector, sample, base_age=3 * 86400)
    args = ("diff", *collector.args(), "--service", "shop", "--canary", "1.1", "--since", "1d")
    before = time.time()
    proc = support.runcov(*args)
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["A: shop 1.0 (prod, baseline)", "B: shop 1.1 (prod, canary)"]
    assert lines[2] in {f"Window: since {hour_of(t - 86400)} (the hour of 1d ago)"
                        for t in (before, after)}
    assert (f"note: A has no coverage {lines[2][len('Window: '):]}: everything B covers shows "
            "as only in B") in lines
    doc = support.as_json(support.runcov(*args, "--format", "json"))
    assert doc["has_coverage"] == {"a": False, "b": True}
    assert doc["window"]["since"] == "1d" and doc["window"]["until"] is None
    assert doc["window"]["start"].endswith(":00:00Z") and doc["window"]["end"] is None

    # With coverage on both sides and no difference, the window is named too.
    same = ("diff", *collector.args(), "--service", "shop", "--a-version", "1.1", "--a-role",
            "canary", "--b-version", "1.1", "--b-role", "canary", "--since", "2020-01-01")
    proc = support.runcov(*same)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2:] == [
        "Window: since 2020-01-01", "", "no coverage differences between A and B since 2020-01-01",
    ]
    # Without a window, nothing is added.
    plain = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "1.1",
                           "--format", "json")
    assert support.as_json(plain)["window"] is None
    assert "Window:" not in support.runcov("diff", *collector.args(), "--service", "shop",
                                           "--canary", "1.1").stdout


def test_gate_verdict_names_its_window(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    args = ("gate", *collector.args(), "--service", "shop", "--version", "1.1", "--role",
            "canary", "--source", str(sample.root), "--paths", "shop/pricing.py")
    proc = support.runcov(*args, "--since", EMPTY)
    assert proc.returncode == 1, proc.stderr
    assert re.fullmatch(
        r"FAIL: canary covered 0 of \d+ selected lines \(0\.0%\) < 80% in shop 1\.1 "
        rf"\(prod, canary\) since {EMPTY}", proc.stdout.splitlines()[-1]
    ), proc.stdout
    # A window without any coverage of the release is named as such, not only a 0 %.
    assert proc.stdout.splitlines()[-2] == (
        f"note: shop 1.1 (prod, canary) since {EMPTY} has no coverage at all: every line "
        "counts as missed (is this the release and window meant?)"
    ), proc.stdout
    doc = support.as_json(support.runcov(*args, "--since", EMPTY, "--format", "json"))
    assert doc["message"].endswith(f"in shop 1.1 (prod, canary) since {EMPTY}")
    assert doc["has_coverage"] is False
    assert doc["window"] == {"since": EMPTY, "until": None, "start": "2030-01-01T00:00:00Z",
                             "end": None, "label": f"since {EMPTY}"}
    proc = support.runcov(*args, "--format", "json")
    assert support.as_json(proc)["window"] is None
    assert support.as_json(proc)["message"].endswith("in shop 1.1 (prod, canary)")
    assert support.as_json(proc)["has_coverage"] is True
    assert "has no coverage" not in support.runcov(*args).stdout


# -- the window's real start: the store's hour ----------------------------------------------


def test_report_headings_name_the_hour_a_relative_window_starts(
    collector: RunningCollector, sample: Sample
) -> None:
    """The store counts whole hours: ``--since 1s`` is the current hour, and says so."""
    populate(collector, sample)
    before = time.time()
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--since", "1s")
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split("\nFiles of ", 1)[1].splitlines()[0]
    assert files in {f"shop 1.0 (prod, baseline), since {hour_of(t)} (the hour of 1s ago)"
                     for t in (before, after)}
    # The current hour's requests are all there, although none is a second old.
    doc = support.as_json(support.runcov("report", *collector.args(), "--service", "shop",
                                         "--since", "1s", "--format", "json"))
    assert doc["totals"]["requests"] == len(BASE_INPUTS)
    assert doc["window"]["since"] == "1s" and doc["window"]["start"].endswith(":00:00Z")

    proc = support.runcov("report", *collector.args(), "--service", "shop",
                          "--since", "2030-01-01T10:30:00Z", "--until", "2030-01-01T12:00Z")
    assert proc.stdout.splitlines()[0] == (
        "Releases (all time; the window from 2030-01-01 10:00 UTC (the hour of "
        "2030-01-01T10:30:00Z) to 2030-01-01T12:00Z applies to the endpoints and files below)"
    )


# -- export of nothing ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["coverage", "lcov", "cobertura", "json"])
def test_an_export_that_would_write_no_file_is_a_usage_error(
    collector: RunningCollector, sample: Sample, tmp_path: Path, fmt: str
) -> None:
    """Every file left out (excluded, not under --source) or no coverage at all: exit 2
    saying why, and no output file that a pipeline would upload as an empty report."""
    populate(collector, sample)
    tmp_path = tmp_path / "export"
    tmp_path.mkdir()
    out = tmp_path / f"out.{fmt}"
    sel = ("export", *collector.args(), "--service", "shop", "--version", "1.1", "--role",
           "canary", "--format", fmt, "-o", str(out))
    report = support.as_json(support.runcov("report", *collector.args(), "--service", "shop",
                                            "--version", "1.1", "--format", "json"))
    paths = [f["path"] for f in report["files"]]
    files = len(paths)
    cases = [
        (["--source", str(sample.root), "--exclude", "*"],
         f"nothing to export: --exclude leaves out all {files} file(s) of shop 1.1 "
         "(prod, canary)"),
        (["--source", str(sample.root), "--since", EMPTY],
         "nothing to export: no file of shop 1.1 (prod, canary) has coverage since 2030-01-01"),
    ]
    if fmt != "json":  # the collector's JSON as it came reads no local file
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        cases.append((
            ["--source", str(elsewhere)],
            f"nothing to export: of the {files} file(s) of shop 1.1 (prod, canary), {files} "
            f"not found under --source {elsewhere} ({', '.join(paths)}): the agents report "
            "paths relative to their source root, which --source must name in this checkout",
        ))
    for extra, message in cases:
        proc = support.runcov(*sel, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert proc.stderr.splitlines()[-1] == f"runcov: {message}", extra
        assert not out.exists(), extra
    assert list(tmp_path.iterdir()) == ([tmp_path / "elsewhere"] if fmt != "json" else [])
    # A partial export still writes what it can, and exits 0.
    proc = support.runcov(*sel, "--source", str(sample.root), "--exclude", "views.py")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 0


# -- report's selection needs a service ------------------------------------------------------


def test_report_selection_options_without_a_service_are_a_usage_error(
    collector: RunningCollector, sample: Sample
) -> None:
    """Without --service, report lists the services: a --version would be ignored."""
    populate(collector, sample)
    for extra, named in ((["--version", "1.1"], "--version needs"),
                         (["--role", "canary"], "--role needs"),
                         (["--environment", "prod"], "--environment needs"),
                         (["--version", "1.1", "--since", "1h"], "--version, --since need")):
        proc = support.runcov("report", *collector.args(), *extra)
        assert proc.returncode == 2, (extra, proc.stdout)
        assert proc.stdout == ""
        assert proc.stderr == (f"runcov: {named} --service: without it, runcov report lists "
                               "the services (give --service NAME)\n")
    proc = support.runcov("report", *collector.args())
    assert proc.returncode == 0 and proc.stdout.splitlines()[2].startswith("shop ")


# -- the verdict's percentage agrees with its comparison -------------------------------------


def test_gate_verdict_never_shows_a_rounded_value_that_contradicts_it(
    collector: RunningCollector, sample: Sample
) -> None:
    """2 of 3 lines are 66.666...%: under a threshold of 66.7 the gate fails, and shows
    66.67%, not ``(66.7%) < 66.7%``. The comparison stays the exact one."""
    populate(collector, sample)
    path = "shop/pricing.py"
    executable = sorted(support.static_of(sample.root, path).lines)
    covered = sample.lines(*CANARY_INPUTS)[path]
    spans = [(executable[i], executable[i + 2]) for i in range(len(executable) - 2)
             if len(set(executable[i:i + 3]) & covered) == 2]
    assert spans, "the sample app has no 3 consecutive statements with 2 covered"
    start, end = spans[0]
    args = ("gate", *collector.args(), "--service", "shop", "--version", "1.1", "--role",
            "canary", "--source", str(sample.root), "--paths", f"{path}:{start}-{end}")
    where = "in shop 1.1 (prod, canary)"
    proc = support.runcov(*args, "--threshold", "66.7")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f"FAIL: canary covered 2 of 3 selected lines (66.67%) < 66.7% {where}"
    )
    proc = support.runcov(*args, "--threshold", "66.6667", "--format", "json")
    assert proc.returncode == 1
    doc = support.as_json(proc)
    assert doc["message"] == (
        f"canary covered 2 of 3 selected lines (66.66667%) < 66.6667% {where}"
    )
    assert doc["percent"] == 66.66667 and doc["passed"] is False
    # One decimal where it does not contradict the verdict.
    proc = support.runcov(*args, "--threshold", "66.66", "--format", "json")
    assert proc.returncode == 0
    assert support.as_json(proc)["message"] == (
        f"canary covered 2 of 3 selected lines (66.7%) >= 66.66% {where}"
    )
    assert support.as_json(proc)["percent"] == 66.7


# -- an --exclude glob that matches nothing ---------------------------------------------------


def test_an_exclude_glob_that_matches_no_file_is_a_warning(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """A typo in --exclude would leave in the file it was meant to leave out: each command
    names the glob on stderr; a glob that matches says nothing."""
    populate(collector, sample)
    sel = ("--service", "shop", "--version", "1.1", "--role", "canary")
    typo, good = "shop/pricng.py", "shop/pricing.py"
    release = "shop 1.1 (prod, canary)"

    def run(*args: str) -> str:
        proc = support.runcov(*args)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stderr

    warning = f"runcov: warning: --exclude {typo!r} matches none of the files of {release}"
    stderr = run("report", *collector.args(), *sel, "--exclude", typo, "--exclude", good)
    assert stderr == warning + "\n"
    assert run("report", *collector.args(), *sel, "--exclude", good) == ""
    doc = support.as_json(support.runcov("report", *collector.args(), *sel, "--exclude", typo,
                                         "--format", "json"))
    assert doc["exclude_unmatched"] == [typo]

    out = tmp_path / "prod.coverage"
    export = ("export", *collector.args(), *sel, "-o", str(out), "--source", str(sample.root))
    stderr = run(*export, "--exclude", typo)
    assert stderr.splitlines()[0] == warning
    assert "warning" not in run(*export, "--exclude", good)

    tests = sample.oracle(*CANARY_INPUTS)
    compare = ("compare-tests", *collector.args(), *sel, "--tests", str(tests), "--source",
               str(sample.root))
    assert run(*compare, "--exclude", typo) == (
        f"runcov: warning: --exclude {typo!r} matches none of the files of {release} or of "
        f"{tests}\n"
    )
    assert run(*compare, "--exclude", good) == ""

    gate = ("gate", *collector.args(), *sel, "--source", str(sample.root), "--threshold", "0",
            "--paths", "shop/views.py")
    assert run(*gate, "--exclude", typo) == (
        f"runcov: warning: --exclude {typo!r} matches no file (neither a changed or named file, "
        f"nor one of {release}, nor one git tracks under --source)\n"
    )
    assert run(*gate, "--exclude", good) == ""


def test_gate_exclude_globs_of_files_the_change_did_not_touch_are_no_typo(
    repo: Path, collector: RunningCollector, sample: Sample
) -> None:
    """``--exclude 'tests/*'`` on every canary gate matches the checkout's tests, changed or
    not: only a glob matching no file git tracks (nor any of the release's) is a warning."""
    (repo / "tests").mkdir()
    (repo / "tests" / "test_pricing.py").write_text("def test_nothing() -> None:\n    pass\n")
    support.git(repo, "add", "tests")
    support.git(repo, "commit", "-q", "-m", "tests")
    support.git(repo, "tag", "v1.2")
    collector.store.ingest(support.batch(CANARY, repo, support.requests_from(
        repo, support.measure_inputs(repo, repo.parent, CANARY_INPUTS))))
    gate = ("gate", *collector.args(), "--service", "shop", "--version", "1.1", "--role",
            "canary", "--source", str(repo), "--threshold", "0", "--changed-since", "v1.2")
    proc = support.runcov(*gate, "--exclude", "tests/*")
    assert proc.returncode == 0, proc.stderr
    assert "--exclude" not in proc.stderr
    proc = support.runcov(*gate, "--exclude", "test/*", "--format", "json")
    assert "runcov: warning: --exclude 'test/*' matches no file" in proc.stderr
    assert support.as_json(proc)["exclude_unmatched"] == ["test/*"]


# -- a gate whose release was picked by default ----------------------------------------------


def test_changed_lines_gate_refuses_a_defaulted_release_the_checkout_is_not(
    repo: Path, collector: RunningCollector, tmp_path: Path
) -> None:
    """In a 1.1 checkout, ``gate --changed-since v1.0`` without --version picks the baseline,
    1.0, which ran the old code: its coverage read by 1.1's line numbers would decide the
    gate for the wrong code. Exit 2, naming the release picked, why, and what to give."""
    old = support.copy_app(tmp_path / "v1.0")  # the sample app as tagged v1.0
    data = tmp_path / "data"
    data.mkdir()
    per_input = support.measure_inputs(old, data, ("checkout-half", "item-even"))
    collector.store.ingest(support.batch(BASE, old, support.requests_from(old, per_input)))
    gate = ("gate", *collector.args(), "--service", "shop", "--source", str(repo),
            "--changed-since", "v1.0", "--threshold", "0")
    for extra in ([], ["--role", "baseline"], ["--format", "json"]):
        proc = support.runcov(*gate, *extra)
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert proc.stdout == ("" if "--format" not in extra else json.dumps(
            {"error": proc.stderr.strip().removeprefix("runcov: "), "exit_code": 2}) + "\n")
        how = ("the most recently seen baseline release" if extra[:1] == ["--role"]
               else "the most recently seen release, baseline when there is one")
        assert proc.stderr == (
            "runcov: --changed-since without --version gated shop 1.0 (prod, baseline) "
            f"({how}), but 2 local file(s) differ from the version shop 1.0 (prod, baseline) "
            "ran (line numbers may not match): shop/pricing.py, shop/views.py; this checkout "
            "is probably another release: name the one to gate with --version (and --role, "
            "e.g. --role canary)\n"
        )
    # Named explicitly, it is gated, with the warning: the choice was the user's.
    proc = support.runcov(*gate, "--version", "1.0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("runcov: warning: 2 local file(s) differ from the version "
                                  "shop 1.0 (prod, baseline) ran")
    assert proc.stdout.splitlines()[-1].endswith("in shop 1.0 (prod, baseline)")
    # --paths names its files itself: a warning, as before (see test_gate.py).
    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--source", str(repo),
                          "--paths", "shop/pricing.py", "--threshold", "0")
    assert proc.returncode == 0 and proc.stderr.startswith("runcov: warning: 1 local file(s)")


def test_windowed_json_outputs_are_valid_json(collector: RunningCollector,
                                              sample: Sample) -> None:
    """The window objects are plain JSON (ISO-8601 strings), in report, diff and gate alike."""
    populate(collector, sample)
    doc = support.as_json(support.runcov("report", *collector.args(), "--service", "shop",
                                         "--since", "7d", "--until", "1h", "--format", "json"))
    window = doc["window"]
    assert json.loads(json.dumps(window)) == window
    assert window["since"] == "7d" and window["until"] == "1h"
    start = datetime.fromisoformat(window["start"].replace("Z", "+00:00")).timestamp()
    end = datetime.fromisoformat(window["end"].replace("Z", "+00:00")).timestamp()
    assert start % 3600 == 0 and end % 3600 == 0
    assert 7 * 86400 - 3600 <= end - start <= 7 * 86400 + 3600
    assert window["label"].startswith("from ") and "(the hour of 7d ago) to " in window["label"]
    assert window["label"].endswith("(the end of the hour of 1h ago)")


# -- Cover: statements only in runcov report, statements and branches in coverage report ------


def test_coverage_reports_total_follows_from_runcov_reports_row(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """docs/cli.md: the counts agree, and coverage.py's total is
    (Stmts - Miss + Branch - BrMiss) / (Stmts + Branch) of runcov report's TOTAL row, whose
    Cover is statements only."""
    populate(collector, sample)
    sel = ("--service", "shop", "--version", "1.0", "--exclude", "shop/__init__.py")
    doc = support.as_json(support.runcov("report", *collector.args(), *sel, "--format", "json"))
    t = doc["totals"]
    out = tmp_path / "prod.coverage"
    proc = support.runcov("export", *collector.args(), *sel, "-o", str(out),
                          "--source", str(sample.root))
    assert proc.returncode == 0, proc.stderr
    support.coverage_cli(sample.root, "json", f"--data-file={out}", "-o",
                         str(tmp_path / "c.json"))
    truth = json.loads((tmp_path / "c.json").read_text())["totals"]
    stmts, miss = t["lines_total"], t["lines_total"] - t["lines_covered"]
    branch, brmiss = t["branches_total"], t["branches_total"] - t["branches_covered"]
    assert (stmts, miss, branch, brmiss) == (
        truth["num_statements"], truth["missing_lines"], truth["num_branches"],
        truth["missing_branches"],
    )
    assert t["line_percent"] == round(100.0 * (stmts - miss) / stmts, 1)
    assert truth["percent_covered"] == pytest.approx(
        100.0 * (stmts - miss + branch - brmiss) / (stmts + branch)
    )
    assert round(truth["percent_covered"], 1) != t["line_percent"]  # two different figures
