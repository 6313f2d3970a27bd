"""runcov report: releases, endpoints and files, as tables and JSON, against a real collector."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

BASE = Release("shop", "1.0", "prod", "baseline")
CANARY = Release("shop", "1.1", "prod", "canary")
BASE_INPUTS = ("checkout-fr", "checkout-half", "item-even", "admin")
CANARY_INPUTS = ("checkout-bad", "item-missing")


def populate(collector: RunningCollector, sample: Sample) -> None:
    collector.store.ingest(support.batch(BASE, sample.root, sample.requests(*BASE_INPUTS)))
    collector.store.ingest(support.batch(CANARY, sample.root, sample.requests(*CANARY_INPUTS)))


def api(collector: RunningCollector, path: str) -> dict:
    request = urllib.request.Request(
        collector.url + path, headers={"Authorization": f"Bearer {collector.token}"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def test_json_report_counts_equal_coverage_py(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    populate(collector, sample)
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--version", "1.0",
                          "--role", "baseline", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["release"] == BASE.as_dict()
    assert [e["endpoint"] for e in doc["endpoints"]] == [
        "GET /admin/report", "GET /items/{item_id}", "POST /checkout"
    ]
    assert {e["endpoint"]: e["requests"] for e in doc["endpoints"]} == {
        "GET /admin/report": 1, "GET /items/{item_id}": 1, "POST /checkout": 2
    }
    assert [(r["version"], r["role"]) for r in doc["releases"]] == [
        ("1.1", "canary"), ("1.0", "baseline")
    ] or {(r["version"], r["role"]) for r in doc["releases"]} == {
        ("1.1", "canary"), ("1.0", "baseline")
    }

    # coverage.py's own numbers for the same executions are the ground truth.
    out = tmp_path / "truth.json"
    support.coverage_cli(sample.root, "json", f"--data-file={sample.oracle(*BASE_INPUTS)}",
                         "-o", str(out))
    truth = json.loads(out.read_text())["files"]
    files = {f["path"]: f for f in doc["files"]}
    assert sorted(files) == sorted(truth) == [f["path"] for f in doc["files"]]
    for path, t in truth.items():
        s = t["summary"]
        f = files[path]
        assert (f["lines_total"], f["lines_covered"]) == (s["num_statements"], s["covered_lines"])
        assert (f["branches_total"], f["branches_covered"]) == (
            s["num_branches"], s["covered_branches"]
        )
    assert doc["totals"]["requests"] == len(BASE_INPUTS)


def test_text_report_tables(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--role", "canary")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Endpoints of shop 1.1 (prod, canary)" in text
    files_part = text.split("Files of shop 1.1 (prod, canary)\n", 1)[1]
    rows = files_part.splitlines()
    header, rule = rows[0], rows[1]
    assert header.split() == ["File", "Stmts", "Miss", "Branch", "BrMiss", "Cover", "BrCover",
                              "Requests"]
    # Aligned: every row is as wide as the rule, numbers right-aligned under their headers.
    body = [r for r in rows[2:] if r and not r.startswith("-")]
    assert all(len(r) == len(rule) for r in body[:-1])
    paths = [r.split()[0] for r in body[:-1]]
    assert paths == sorted(paths) == ["shop/__init__.py", "shop/pricing.py", "shop/views.py"]
    assert body[-1].startswith("TOTAL (3 files)")

    cov = api(collector, "/api/v1/coverage?service=shop&role=canary")
    for row, f in zip(body[:-1], cov["files"]):
        cells = row.split()
        assert cells[0] == f["path"]
        assert cells[1] == str(f["lines_total"])
        assert cells[2] == str(f["lines_total"] - f["lines_covered"])
        pct = f["line_percent"]
        assert cells[5] == ("-" if pct is None else f"{pct:.1f}%")
    total = body[-1].split()
    assert total[-3] == f"{cov['totals']['line_percent']:.1f}%"
    assert total[-1] == str(len(CANARY_INPUTS))


def test_services_and_sorting(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("report", *collector.args())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["Service", "Releases", "Last", "seen"]
    assert proc.stdout.splitlines()[2].split()[:2] == ["shop", "2"]

    proc = support.runcov("report", *collector.args(), "--service", "shop", "--version", "1.0",
                          "--sort", "missed", "--format", "json")
    files = support.as_json(proc)["files"]
    missed = [f["lines_total"] - f["lines_covered"] for f in files]
    assert missed == sorted(missed, reverse=True) and missed[0] > 0

    proc = support.runcov("report", *collector.args(), "--service", "shop", "--version", "1.0",
                          "--skip-covered", "--format", "json")
    assert "shop/__init__.py" not in [f["path"] for f in support.as_json(proc)["files"]]


def test_progress_on_stderr(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--progress")
    assert proc.returncode == 0
    assert "downloading:" in proc.stderr and "KiB" in proc.stderr
    quiet = support.runcov("report", *collector.args(), "--service", "shop")
    assert quiet.stderr == ""


def test_errors_map_to_exit_codes(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("report", "--collector", collector.url, "--service", "shop")
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr
    assert "; the query token is --token or RUNCOV_TOKEN (none was given)" in proc.stderr
    proc = support.runcov("report", "--collector", collector.url, "--token", "wrong",
                          "--service", "shop")
    assert proc.returncode == 2
    assert proc.stderr.rstrip().endswith("(HTTP 401); the query token is --token or RUNCOV_TOKEN")
    # With --format json a failure is a JSON document too (a pipeline parsing stdout).
    proc = support.runcov("report", *collector.args(), "--service", "nope", "--format", "json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "HTTP 404" in doc["error"]
    assert proc.stderr == f"runcov: {doc['error']}\n"
    proc = support.runcov("report", *collector.args(), "--service", "nope")
    assert proc.returncode == 2 and "HTTP 404" in proc.stderr
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--since", "soon")
    assert proc.returncode == 2 and "HTTP 400" in proc.stderr
    proc = support.runcov("report", "--collector", "http://127.0.0.1:9", "--service", "shop")
    assert proc.returncode == 3 and "cannot reach the collector" in proc.stderr
    assert proc.stdout == ""  # (text output: the message is on stderr alone)
    proc = support.runcov("gate", "--collector", "http://127.0.0.1:9", "--service", "shop",
                          "--paths", "shop/views.py", "--format", "json")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["exit_code"] == 3
    # Environment variables stand in for the options.
    proc = support.runcov("report", "--service", "shop", "--format", "json",
                          env={"RUNCOV_COLLECTOR_URL": collector.url,
                               "RUNCOV_TOKEN": collector.token})
    assert proc.returncode == 0 and support.as_json(proc)["release"]["service"] == "shop"


def test_an_endpoint_the_release_never_saw_is_a_usage_error(
    collector: RunningCollector, sample: Sample, tmp_path: Path
) -> None:
    """A typo in --endpoint must not read as 0 % coverage (or a failed gate)."""
    populate(collector, sample)
    known = "known endpoints: GET /admin/report, GET /items/{item_id}, POST /checkout"
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--endpoint",
                          "GET /nope")
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr == (
        "runcov: unknown endpoint 'GET /nope': shop 1.0 (prod, baseline) never saw it; "
        f"{known}\n"
    )
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--endpoint",
                          "GET /item/{item_id}")
    assert proc.returncode == 2
    assert "(did you mean 'GET /items/{item_id}'?)" in proc.stderr
    # The canary never served the admin report; the baseline did.
    canary = ["--service", "shop", "--version", "1.1", "--role", "canary"]
    proc = support.runcov("report", *collector.args(), *canary, "--endpoint", "GET /admin/report")
    assert proc.returncode == 2
    assert "'GET /admin/report': shop 1.1 (prod, canary) never saw it" in proc.stderr
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--endpoint",
                          "GET /admin/report", "--format", "json")
    assert proc.returncode == 0 and support.as_json(proc)["totals"]["lines_covered"] > 0

    typo = ["--service", "shop", "--endpoint", "GET /nope", "--source", str(sample.root)]
    for command in (
        ["export", "-o", str(tmp_path / "out.lcov"), "--format", "lcov"],
        ["gate", "--paths", "shop/views.py"],
        ["compare-tests", "--tests", str(sample.oracle("admin"))],
    ):
        proc = support.runcov(*command, *collector.args(), *typo)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "unknown endpoint 'GET /nope'" in proc.stderr
    assert not (tmp_path / "out.lcov").exists()

    # diff: an endpoint seen by either release is fine (A only here), by neither is not.
    ab = ["--service", "shop", "--a-version", "1.0", "--b-version", "1.1", "--b-role", "canary"]
    proc = support.runcov("diff", *collector.args(), *ab, "--endpoint", "GET /admin/report")
    assert proc.returncode == 0, proc.stderr
    proc = support.runcov("diff", *collector.args(), *ab, "--endpoint", "GET /nope")
    assert proc.returncode == 2
    assert ("'GET /nope': shop 1.0 (prod, baseline) and shop 1.1 (prod, canary) never saw it"
            in proc.stderr)


def test_census_coverage_shows_branches_as_not_measured(
    collector: RunningCollector, sample: Sample
) -> None:
    """Census records first hits of lines, no arcs: the tables say so (n/a), rather than
    counting every branch as missed."""
    census = Release("shop", "2.0", "prod", "baseline")
    collector.store.ingest(
        support.batch(census, sample.root, sample.requests(*BASE_INPUTS), mode="census")
    )
    proc = support.runcov("report", *collector.args(), "--service", "shop", "--version", "2.0")
    assert proc.returncode == 0, proc.stderr
    releases, rest = proc.stdout.split("\nEndpoints of", 1)
    endpoints, files = rest.split("\nFiles of", 1)
    assert "None" not in proc.stdout
    [row] = [r for r in releases.splitlines() if r.startswith("2.0")]
    assert row.split()[6:8] == ["n/a", "n/a"]  # arcs, branch
    assert all(r.split()[-3] == "n/a" for r in endpoints.splitlines()[3:] if r.strip())
    body = [r for r in files.splitlines()[3:] if r and not r.startswith("-")]
    assert body and all(r.split()[4] == "n/a" and r.split()[6] == "n/a" for r in body[:-1])
    total = body[-1].split()
    assert total[-4] == "n/a" and total[-2] == "n/a"  # BrMiss, BrCover of the TOTAL row
    # The lines are counted as usual, and the JSON form keeps the nulls.
    doc = support.as_json(support.runcov(
        "report", *collector.args(), "--service", "shop", "--version", "2.0", "--format", "json"
    ))
    assert doc["totals"]["lines_covered"] > 0 and doc["totals"]["branch_percent"] is None


def test_a_window_says_what_it_applies_to(collector: RunningCollector, sample: Sample) -> None:
    """--since narrows the selected release's endpoints and files, never the releases table
    (all-time figures): each heading says which it shows, and the JSON names the window."""
    populate(collector, sample)
    sel = ["--service", "shop", "--version", "1.0", "--since", "2030-01-01"]
    proc = support.runcov("report", *collector.args(), *sel)
    assert proc.returncode == 0, proc.stderr
    releases, rest = proc.stdout.split("\nEndpoints of", 1)
    assert releases.splitlines()[0] == (
        "Releases (all time; the window since 2030-01-01 applies to the endpoints and files "
        "below)"
    )
    # The releases keep their all-time requests; the window's files have none.
    [row] = [r for r in releases.splitlines() if r.startswith("1.0")]
    assert row.split()[3] == str(len(BASE_INPUTS))
    assert rest.splitlines()[0] == " shop 1.0 (prod, baseline), since 2030-01-01"
    files = rest.split("\nFiles of", 1)[1]
    assert files.splitlines()[0] == " shop 1.0 (prod, baseline), since 2030-01-01"

    doc = support.as_json(support.runcov("report", *collector.args(), *sel, "--format", "json"))
    assert doc["window"] == {"since": "2030-01-01", "until": None,
                             "start": "2030-01-01T00:00:00Z", "end": None,
                             "label": "since 2030-01-01",
                             "applies_to": ["endpoints", "files", "totals"]}
    assert doc["totals"]["lines_covered"] == 0
    assert {r["version"]: r["requests"] for r in doc["releases"]}["1.0"] == len(BASE_INPUTS)

    proc = support.runcov("report", *collector.args(), "--service", "shop", "--since", "7d",
                          "--until", "1h")
    # Relative bounds are named by the store's hours they fall in (one-hour resolution).
    assert re.match(r"Releases \(all time; the window from \S+ \S+ UTC \(the hour of 7d ago\) "
                    r"to \S+ \S+ UTC \(the end of the hour of 1h ago\) applies to the "
                    r"endpoints and files below\)\n", proc.stdout), proc.stdout
    # Without a window, nothing changes.
    plain = support.runcov("report", *collector.args(), "--service", "shop")
    assert plain.stdout.startswith("Releases\n")
    assert "Files of shop 1.0 (prod, baseline)\n" in plain.stdout
    doc = support.as_json(support.runcov("report", *collector.args(), "--service", "shop",
                                         "--format", "json"))
    assert doc["window"] is None and doc["path_prefix"] is None


def test_requests_next_to_a_path_filtered_table_are_labelled_the_releases(
    collector: RunningCollector, sample: Sample
) -> None:
    """The collector's totals count the release's requests whatever --path-prefix keeps (it
    answers requests 367 for files 0): the table says so rather than let them read as the
    requests of the files shown."""
    populate(collector, sample)
    sel = ["--service", "shop", "--version", "1.0"]
    proc = support.runcov("report", *collector.args(), *sel, "--path-prefix", "shop/v")
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split("\nFiles of ", 1)[1].splitlines()
    assert files[0] == "shop 1.0 (prod, baseline) under 'shop/v'"
    assert [r.split()[0] for r in files[3:-3]] == ["shop/views.py"]
    assert files[-2].split()[-1] == str(len(BASE_INPUTS))  # the TOTAL row's Requests
    assert files[-1] == ("The TOTAL row's Requests are all the sampled requests of shop 1.0 "
                         "(prod, baseline), not only those that ran files under 'shop/v'.")
    doc = support.as_json(support.runcov("report", *collector.args(), *sel, "--path-prefix",
                                         "nope/", "--format", "json"))
    assert doc["path_prefix"] == "nope/"
    assert (doc["totals"]["files"], doc["totals"]["requests"]) == (0, len(BASE_INPUTS))


def test_the_total_row_counts_files_in_words_that_agree() -> None:
    from runcov.reports.table import total_label

    assert total_label(1) == "TOTAL (1 file)"
    assert [total_label(n) for n in (0, 2)] == ["TOTAL (0 files)", "TOTAL (2 files)"]


def test_a_report_narrowed_to_an_endpoint_names_it(
    collector: RunningCollector, sample: Sample
) -> None:
    """With --endpoint the endpoints and files are that endpoint's alone: their headings and
    the JSON say so, as they say a window or --exclude."""
    populate(collector, sample)
    base = ["--service", "shop", "--version", "1.0", "--role", "baseline"]
    proc = support.runcov("report", *collector.args(), *base, "--endpoint", "POST /checkout")
    assert proc.returncode == 0, proc.stderr
    headings = [
        line for line in proc.stdout.splitlines() if line.startswith(("Endpoints", "Files"))
    ]
    assert headings == [
        "Endpoints of shop 1.0 (prod, baseline), endpoint POST /checkout",
        "Files of shop 1.0 (prod, baseline), endpoint POST /checkout",
    ]
    doc = support.as_json(support.runcov("report", *collector.args(), *base, "--endpoint",
                                         "POST /checkout", "--format", "json"))
    assert doc["endpoint"] == "POST /checkout"
    whole = support.as_json(support.runcov("report", *collector.args(), *base, "--format", "json"))
    assert whole["endpoint"] is None
    assert doc["totals"]["lines_covered"] < whole["totals"]["lines_covered"]
