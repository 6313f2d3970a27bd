"""runcov diff: newly and no longer covered lines and arcs between two releases."""

from __future__ import annotations

import time
from pathlib import Path

from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

A_INPUTS = ("checkout-fr", "item-even", "admin")
B_INPUTS = ("checkout-half", "checkout-bad", "item-even")


def populate(collector: RunningCollector, sample: Sample, b_role: str = "canary") -> None:
    a = Release("shop", "2.0", "prod", "baseline")
    b = Release("shop", "2.0", "prod", b_role)
    collector.store.ingest(support.batch(a, sample.root, sample.requests(*A_INPUTS)))
    collector.store.ingest(support.batch(b, sample.root, sample.requests(*B_INPUTS)))


def expected(sample: Sample) -> dict[str, dict[str, set]]:
    la, lb = sample.lines(*A_INPUTS), sample.lines(*B_INPUTS)
    aa, ab = sample.arcs(*A_INPUTS), sample.arcs(*B_INPUTS)
    out = {}
    for path in sorted(set(la) | set(lb)):
        entry = {
            "newly_covered_lines": lb.get(path, set()) - la.get(path, set()),
            "no_longer_covered_lines": la.get(path, set()) - lb.get(path, set()),
            "newly_covered_arcs": ab.get(path, set()) - aa.get(path, set()),
            "no_longer_covered_arcs": aa.get(path, set()) - ab.get(path, set()),
        }
        if any(entry.values()):
            out[path] = entry
    return out


def test_json_diff_equals_coverage_py_set_differences(
    collector: RunningCollector, sample: Sample
) -> None:
    populate(collector, sample)
    proc = support.runcov(
        "diff", *collector.args(), "--service", "shop", "--environment", "prod",
        "--a-version", "2.0", "--a-role", "baseline", "--b-version", "2.0", "--b-role", "canary",
        "--format", "json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["a"]["role"] == "baseline" and doc["b"]["role"] == "canary"
    want = expected(sample)
    assert [f["path"] for f in doc["files"]] == sorted(want)
    for f in doc["files"]:
        for key in ("newly_covered_lines", "no_longer_covered_lines"):
            assert set(f[key]) == want[f["path"]][key], (f["path"], key)
        for key in ("newly_covered_arcs", "no_longer_covered_arcs"):
            assert {tuple(a) for a in f[key]} == want[f["path"]][key], (f["path"], key)
    only = {e["endpoint"]: (e["only_in_a"], e["only_in_b"]) for e in doc["endpoints"]}
    assert only["GET /admin/report"] == (True, False)
    assert only.get("POST /checkout", (False, False)) == (False, False)
    assert doc["summary"]["endpoints_only_in_a"] == 1
    assert doc["summary"]["newly_covered_lines"] == sum(
        len(v["newly_covered_lines"]) for v in want.values()
    )


def test_canary_shortcut_and_table(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "2.0")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("A: shop 2.0 (prod, baseline)\nB: shop 2.0 (prod, canary)\n")
    want = expected(sample)
    views = want["shop/views.py"]
    row = next(line for line in text.splitlines() if line.startswith("shop/views.py "))
    assert row.split() == [
        "shop/views.py", f"+{len(views['newly_covered_lines'])}",
        f"-{len(views['no_longer_covered_lines'])}", f"+{len(views['newly_covered_arcs'])}",
        f"-{len(views['no_longer_covered_arcs'])}",
    ]
    assert "  only in A: GET /admin/report" in text
    # Line lists in coverage.py's range notation: Admin.report ran only in A.
    assert "  only in A, lines: 34-35, 37" in text
    assert "  only in A, arcs : entry->34, 34->35, 35->37, 37->exit" in text


def test_usage_errors(collector: RunningCollector, sample: Sample) -> None:
    populate(collector, sample)
    proc = support.runcov("diff", *collector.args(), "--service", "shop")
    assert proc.returncode == 2 and "--canary VERSION" in proc.stderr
    proc = support.runcov("diff", *collector.args(), "--canary", "2.0")
    assert proc.returncode == 2 and "--service is required" in proc.stderr
    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--a-role", "bogus",
                          "--b-role", "canary")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_canary_of_a_new_commit_against_the_previous_baseline(
    repo: Path, collector: RunningCollector, tmp_path: Path
) -> None:
    """Baseline 1.0 runs the tagged commit, the canary 1.1 runs HEAD (a real git history)."""
    old = support.copy_app(tmp_path / "v1.0")  # the sample app as tagged v1.0
    assert (old / "shop" / "pricing.py").read_text() == support.git(
        repo, "show", "v1.0:shop/pricing.py"
    )
    data = tmp_path / "data"
    (data / "new").mkdir(parents=True)
    inputs = ("checkout-half", "item-even")
    base = support.measure_inputs(old, data, inputs)
    new = support.measure_inputs(repo, data / "new", inputs)
    collector.store.ingest(support.batch(Release("shop", "1.0", "prod", "baseline"), old,
                                         support.requests_from(old, base)))
    collector.store.ingest(support.batch(Release("shop", "1.1", "prod", "canary"), repo,
                                         support.requests_from(repo, new)))

    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "1.1",
                          "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    # No baseline of 1.1 exists, so A is the most recent baseline: 1.0.
    assert (doc["a"]["version"], doc["a"]["role"]) == ("1.0", "baseline")
    assert (doc["b"]["version"], doc["b"]["role"]) == ("1.1", "canary")
    a_lines = {p: set(h[0]) for p, h in support.hits(
        support.combine(old, data / ".coverage.base", base.values()), old).items()}
    b_lines = {p: set(h[0]) for p, h in support.hits(
        support.combine(repo, data / ".coverage.new", new.values()), repo).items()}
    files = {f["path"]: f for f in doc["files"]}
    pricing = files["shop/pricing.py"]
    # HALF now takes two lines in 1.1 (13-14), so line numbers below shift by one.
    assert set(pricing["newly_covered_lines"]) == b_lines["shop/pricing.py"] - a_lines[
        "shop/pricing.py"]
    assert set(pricing["no_longer_covered_lines"]) == a_lines["shop/pricing.py"] - b_lines[
        "shop/pricing.py"]
    assert 14 in pricing["newly_covered_lines"]

    missing = support.runcov("diff", *collector.args(), "--service", "shop", "--a-version",
                             "0.9", "--a-role", "baseline", "--b-version", "1.1",
                             "--b-role", "canary")
    assert missing.returncode == 2
    assert missing.stderr == ("runcov: release A not found: no release matches service=shop, "
                              "version=0.9, role=baseline\n")


def test_every_missing_side_is_named(collector: RunningCollector, sample: Sample) -> None:
    """Neither the canary nor a baseline exists in staging: the message names both, and where
    that canary was seen."""
    populate(collector, sample)  # baseline and canary 2.0, in prod
    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "2.0",
                          "--environment", "staging")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        "runcov: releases A and B not found: "
        "A: no release matches service=shop, environment=staging, role=baseline; "
        "B: no release matches service=shop, version=2.0, environment=staging, role=canary "
        "(the canary of 2.0 was seen in environment prod)\n"
    )
    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--a-version", "2.0",
                          "--a-role", "baseline", "--b-version", "2.1", "--b-role", "canary",
                          "--endpoint", "POST /checkout")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == ("runcov: release B not found: no release matches service=shop, "
                           "version=2.1, role=canary\n")


def test_canary_baseline_comes_from_the_canary_environment(
    collector: RunningCollector, sample: Sample
) -> None:
    """Without --environment, a prod canary is compared with prod's baseline, not staging's."""
    prod_requests = sample.requests(*A_INPUTS)
    staging_requests = sample.requests(*B_INPUTS)
    for r in staging_requests:
        r.when = time.time() + 5  # staging's baseline is the newest release of the service
    for release, requests in [
        (Release("shop", "1.0", "prod", "baseline"), prod_requests),
        (Release("shop", "1.1", "prod", "canary"), sample.requests(*B_INPUTS)),
        (Release("shop", "1.0", "staging", "baseline"), staging_requests),
    ]:
        collector.store.ingest(support.batch(release, sample.root, requests))
    newest = support.as_json(support.runcov("report", *collector.args(), "--service", "shop",
                                            "--format", "json"))["releases"][0]
    assert (newest["environment"], newest["role"]) == ("staging", "baseline")

    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "1.1",
                          "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["a"] == {"service": "shop", "version": "1.0", "environment": "prod",
                        "role": "baseline"}
    assert doc["b"] == {"service": "shop", "version": "1.1", "environment": "prod",
                        "role": "canary"}
    # prod's baseline ran A_INPUTS (admin included); staging's ran the canary's inputs.
    assert doc["summary"]["endpoints_only_in_a"] == 1

    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "9.9")
    assert proc.returncode == 2
    assert "service 'shop' has no canary release of version '9.9'" in proc.stderr


def test_a_canary_without_environment_is_compared_with_the_baseline_without_one(
    collector: RunningCollector, sample: Sample
) -> None:
    """A service that sets no environment has releases whose environment is empty: its canary
    is compared with the baseline whose environment is empty too, not with the newest baseline
    of any environment."""
    staging_requests = sample.requests(*B_INPUTS)
    for r in staging_requests:
        r.when = time.time() + 5  # staging's baseline is the newest release of the service
    for release, requests in [
        (Release("shop", "1.0", "", "baseline"), sample.requests(*A_INPUTS)),
        (Release("shop", "1.1", "", "canary"), sample.requests(*B_INPUTS)),
        (Release("shop", "1.0", "staging", "baseline"), staging_requests),
    ]:
        collector.store.ingest(support.batch(release, sample.root, requests))
    proc = support.runcov("diff", *collector.args(), "--service", "shop", "--canary", "1.1",
                          "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["a"] == {"service": "shop", "version": "1.0", "environment": "",
                        "role": "baseline"}
    assert doc["b"]["environment"] == ""
    assert doc["summary"]["endpoints_only_in_a"] == 1


def test_arcs_of_lines_measured_by_census_are_not_differences(
    collector: RunningCollector, sample: Sample
) -> None:
    """A measured by census (lines, no arcs), B exactly, on the same inputs: no difference at
    all, the arcs B covers counted as not compared (A ran their lines, how is unknown). Then B
    on other inputs: an arc into a line A never ran is newly covered whatever measured A, and
    the lines differ as coverage.py's do."""
    census = Release("shop", "3.0", "prod", "baseline")
    exact = Release("shop", "3.0", "prod", "canary")
    collector.store.ingest(
        support.batch(census, sample.root, sample.requests(*A_INPUTS), mode="census")
    )
    collector.store.ingest(support.batch(exact, sample.root, sample.requests(*A_INPUTS)))
    args = ("diff", *collector.args(), "--service", "shop", "--environment", "prod",
            "--a-version", "3.0", "--a-role", "baseline", "--b-version", "3.0",
            "--b-role", "canary")
    proc = support.runcov(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["files"] == []
    arcs = sample.arcs(*A_INPUTS)
    assert doc["summary"]["arcs_not_compared"] == sum(len(v) for v in arcs.values())
    text = support.runcov(*args)
    assert text.returncode == 0, text.stderr
    assert f"note: {sum(len(v) for v in arcs.values())} arc(s) covered on one side are not " \
        "compared" in text.stdout
    assert "no coverage differences between A and B" in text.stdout

    other = Release("shop", "3.1", "prod", "canary")
    collector.store.ingest(support.batch(other, sample.root, sample.requests(*B_INPUTS)))
    doc = support.as_json(support.runcov(
        "diff", *collector.args(), "--service", "shop", "--environment", "prod",
        "--a-version", "3.0", "--a-role", "baseline", "--b-version", "3.1",
        "--b-role", "canary", "--format", "json",
    ))
    la, lb, ab = sample.lines(*A_INPUTS), sample.lines(*B_INPUTS), sample.arcs(*B_INPUTS)
    by_path = {f["path"]: f for f in doc["files"]}
    for path in set(la) | set(lb):
        got = by_path.get(path, {})
        assert set(got.get("newly_covered_lines", [])) == lb.get(path, set()) - la.get(path, set())
        assert set(got.get("no_longer_covered_lines", [])) == (
            la.get(path, set()) - lb.get(path, set())
        )
        # What B covers from or into lines A never ran is new; A's census arcs are never gone.
        ran = la.get(path, set())
        new = {a for a in ab.get(path, set()) if (a[1] > 0 and a[1] not in ran)
               or (a[0] > 0 and a[0] not in ran)}
        assert {tuple(a) for a in got.get("newly_covered_arcs", [])} == new, path
        assert got.get("no_longer_covered_arcs", []) == []
