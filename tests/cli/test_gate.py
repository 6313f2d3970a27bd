"""runcov gate: production coverage of changed lines (git) and of named paths, as exit codes."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path

import pytest
from coverage import Coverage

from runcov.reports.gate import GateError, PathSpec, parse_unified_diff
from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector

CANARY = Release("shop", "1.1", "prod", "canary")
CANARY_INPUTS = ("checkout-half", "item-even")

@pytest.fixture
def canary(repo: Path, collector: RunningCollector, tmp_path: Path) -> dict[str, set[int]]:
    """Release 1.1 measured on the canary inputs and fed to the collector; its lines."""
    data = tmp_path / "data"
    data.mkdir()
    per_input = support.measure_inputs(repo, data, CANARY_INPUTS)
    requests = support.requests_from(repo, per_input)
    collector.store.ingest(support.batch(CANARY, repo, requests))
    combined = support.combine(repo, data / ".coverage.all", per_input.values())
    return {p: set(lines) for p, (lines, _) in support.hits(combined, repo).items()}


def changed_statements(repo: Path) -> dict[str, set[int]]:
    """Ground truth: lines added or changed since v1.0 (difflib) that coverage.py executes."""
    cov = Coverage(data_file=None)
    out = {}
    for rel in [*support.EDITS, support.NEW_FILE[0]]:
        old = support.git(repo, "show", f"v1.0:{rel}").splitlines() if rel in support.EDITS else []
        new = (repo / rel).read_text().splitlines()
        changed = set()
        for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, old, new).get_opcodes():
            if tag in ("replace", "insert"):
                changed.update(range(j1 + 1, j2 + 1))
        statements = set(cov.analysis2(str(repo / rel))[1])
        out[rel] = changed & statements
    return out


def gate(
    collector: RunningCollector, repo: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return support.runcov("gate", *collector.args(), "--service", "shop", "--version", "1.1",
                          "--role", "canary", "--source", str(repo), *args)


def test_changed_lines_gate_fails_with_the_numbers(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    truth = changed_statements(repo)
    total = sum(len(v) for v in truth.values())
    covered = sum(len(v & canary.get(p, set())) for p, v in truth.items())
    assert 0 < covered < total

    proc = gate(collector, repo, "--changed-since", "v1.0", "--threshold", "80")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    pct = 100.0 * covered / total
    verdict = f"canary covered {covered} of {total} changed lines ({pct:.1f}%) < 80%"
    assert proc.stdout.splitlines()[-1] == "FAIL: " + verdict

    proc = gate(collector, repo, "--changed-since", "v1.0", "--threshold", f"{pct - 1:.1f}",
                "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["passed"] is True and (doc["covered"], doc["lines"]) == (covered, total)
    by_file = {f["path"]: f for f in doc["files"]}
    for path, lines in truth.items():
        assert set(by_file[path]["missed_lines"]) == lines - canary.get(path, set())
    # The new module counts, entirely missed, by the local file's coverage.py analysis.
    assert not canary.get("shop/coupons.py")
    assert by_file["shop/coupons.py"]["covered"] == 0
    assert by_file["shop/coupons.py"]["lines"] == len(truth["shop/coupons.py"]) == 2
    assert by_file["shop/coupons.py"]["note"] == "never executed in production"


def test_no_changes_passes(repo: Path, canary: dict[str, set[int]],
                           collector: RunningCollector) -> None:
    proc = gate(collector, repo, "--changed-since", "HEAD")
    assert proc.returncode == 0
    assert "no executable changed lines to measure: gate passed" in proc.stdout


def test_uncommitted_edits_count_as_changes(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    views = repo / "shop" / "views.py"
    text = views.read_text().replace('        return {"status": 404}\n',
                                     '        return {"status": 404, "why": "negative"}\n')
    views.write_text(text)
    line = text.splitlines().index('        return {"status": 404, "why": "negative"}') + 1
    assert line not in canary["shop/views.py"]
    proc = gate(collector, repo, "--changed-since", "HEAD", "--format", "json")
    doc = support.as_json(proc)
    assert proc.returncode == 1
    assert doc["files"] == [{"path": "shop/views.py", "lines": 1, "covered": 0, "percent": 0.0,
                             "missed_lines": [line], "note": ""}]
    assert doc["message"] == "canary covered 0 of 1 changed lines (0.0%) < 80%"


def test_paths_gate(repo: Path, canary: dict[str, set[int]], collector: RunningCollector) -> None:
    cov = Coverage(data_file=None)
    pricing = repo / "shop" / "pricing.py"
    statements = set(cov.analysis2(str(pricing))[1])
    lines = pricing.read_text().splitlines()
    start = lines.index("def discount(total: float, code: str | None) -> float:") + 1
    end = lines.index("def with_tax(total: float, country: str) -> float:") - 2
    # The function's body: its statements after the def line (which runs at import).
    discount = {n for n in statements if start < n <= end}
    executed = canary["shop/pricing.py"]

    proc = gate(collector, repo, "--paths", "shop/pricing.py::discount", "--threshold", "0",
                "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert (doc["lines"], doc["covered"]) == (len(discount), len(discount & executed))

    proc = gate(collector, repo, "--paths", "shop/pricing.py::discount", "shop/views.py:20-26",
                "--threshold", "100")
    assert proc.returncode == 1
    views_lines = {n for n in cov.analysis2(str(repo / "shop" / "views.py"))[1] if 20 <= n <= 26}
    covered = len(discount & executed) + len(views_lines & canary["shop/views.py"])
    total = len(discount) + len(views_lines)
    assert proc.stdout.splitlines()[-1] == (
        f"FAIL: canary covered {covered} of {total} selected lines "
        f"({100.0 * covered / total:.1f}%) < 100%"
    )

    whole = gate(collector, repo, "--paths", "shop/pricing.py", "--format", "json")
    doc = support.as_json(whole)
    assert (doc["lines"], doc["covered"]) == (len(statements), len(statements & executed))


def test_exit_codes_for_errors(repo: Path, canary: dict[str, set[int]],
                               collector: RunningCollector) -> None:
    proc = gate(collector, repo, "--changed-since", "no-such-ref")
    assert proc.returncode == 2 and "git diff no-such-ref failed" in proc.stderr
    proc = gate(collector, repo, "--paths", "shop/pricing.py::nothing_here")
    assert proc.returncode == 2 and "no function named 'nothing_here'" in proc.stderr
    proc = gate(collector, repo, "--paths", "README")
    assert proc.returncode == 2 and "bad path spec" in proc.stderr
    proc = gate(collector, repo, "--paths", "shop/pricing.py", "--threshold", "120")
    assert proc.returncode == 2
    proc = support.runcov("gate", "--collector", "http://127.0.0.1:9", "--service", "shop",
                          "--source", str(repo), "--changed-since", "v1.0")
    assert proc.returncode == 3 and "cannot reach the collector" in proc.stderr
    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--version", "9.9",
                          "--source", str(repo), "--changed-since", "v1.0")
    assert proc.returncode == 2 and "HTTP 404" in proc.stderr
    proc = support.runcov("gate", *collector.args(), "--service", "shop")
    assert proc.returncode == 2 and "one of the arguments" in proc.stderr


def test_unified_diff_parsing() -> None:
    text = (
        "diff --git a/pkg/a.py b/pkg/a.py\n--- a/pkg/a.py\n+++ b/pkg/a.py\n"
        "@@ -3 +3 @@ def f():\n-x\n+y\n@@ -10,0 +11,3 @@\n+a\n+b\n+c\n@@ -20,2 +23,0 @@\n-d\n-e\n"
        "diff --git a/notes.txt b/notes.txt\n--- a/notes.txt\n+++ b/notes.txt\n"
        "@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n"
    )
    assert parse_unified_diff(text) == {"pkg/a.py": {3, 11, 12, 13}}


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("a/b.py", PathSpec("a/b.py")),
        ("a/b.py:7", PathSpec("a/b.py", 7, 7)),
        ("a/b.py:10-20", PathSpec("a/b.py", 10, 20)),
        ("a/b.py::Cls.meth", PathSpec("a/b.py", function="Cls.meth")),
    ],
)
def test_path_specs(spec: str, parsed: PathSpec) -> None:
    assert PathSpec.parse(spec) == parsed


@pytest.mark.parametrize("spec", ["a/b.txt", "a/b.py:20-10", "a/b.py:0", "a/b.py::", "a.py:x"])
def test_bad_path_specs(spec: str) -> None:
    with pytest.raises(GateError):
        PathSpec.parse(spec)
