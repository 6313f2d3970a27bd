"""runcov gate: production coverage of changed lines (git) and of named paths, as exit codes."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from coverage import Coverage

from runcov.reports.gate import GateError, PathSpec, parse_unified_diff
from runcov.reports.local import analyze_local, function_body
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


def import_only_lines(repo: Path, modules: list[str]) -> dict[str, set[int]]:
    """Ground truth for "runs at import time": what coverage.py records when merely importing."""
    script = repo.parent / "import_only.py"
    script.write_text("".join(f"import {m}\n" for m in modules))
    data = repo.parent / ".coverage.import-only"
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--source=shop", f"--data-file={data}",
         str(script)],
        cwd=repo, env={**support.clean_env(), "PYTHONPATH": str(repo)}, check=True,
    )
    return {p: set(lines) for p, (lines, _) in support.hits(data, repo).items()}


def changed_statements(repo: Path) -> dict[str, set[int]]:
    """Ground truth: lines added or changed since v1.0 (difflib) that coverage.py executes,
    without those that already run when the module is imported (no request runs them)."""
    cov = Coverage(data_file=None)
    at_import = import_only_lines(repo, ["shop.views", "shop.pricing", "shop.coupons"])
    out = {}
    for rel in [*support.EDITS, support.NEW_FILE[0]]:
        old = support.git(repo, "show", f"v1.0:{rel}").splitlines() if rel in support.EDITS else []
        new = (repo / rel).read_text().splitlines()
        changed = set()
        for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, old, new).get_opcodes():
            if tag in ("replace", "insert"):
                changed.update(range(j1 + 1, j2 + 1))
        statements = set(cov.analysis2(str(repo / rel))[1])
        out[rel] = changed & statements - at_import[rel]
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
    verdict = (f"canary covered {covered} of {total} changed lines ({pct:.1f}%) < 80% "
               "in shop 1.1 (prod, canary)")
    assert proc.stdout.splitlines()[-1] == "FAIL: " + verdict

    proc = gate(collector, repo, "--changed-since", "v1.0", "--threshold", f"{pct - 1:.1f}",
                "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = support.as_json(proc)
    assert doc["passed"] is True and (doc["covered"], doc["lines"]) == (covered, total)
    by_file = {f["path"]: f for f in doc["files"]}
    for path, lines in truth.items():
        assert set(by_file[path]["missed_lines"]) == lines - canary.get(path, set())
    # The new module counts, entirely missed, by the local file's coverage.py analysis:
    # the body of valid(); its def line runs at import, like loyalty()'s in pricing.py.
    assert not canary.get("shop/coupons.py")
    assert by_file["shop/coupons.py"]["covered"] == 0
    assert by_file["shop/coupons.py"]["lines"] == len(truth["shop/coupons.py"]) == 1
    assert by_file["shop/coupons.py"]["note"] == "never executed in production"
    pricing = (repo / "shop" / "pricing.py").read_text().splitlines()
    loyalty = pricing.index("def loyalty(total: float, years: int) -> float:") + 1
    assert doc["import_time"] == {"shop/coupons.py": [4], "shop/pricing.py": [loyalty]}
    assert doc["import_time_lines"] == 2


def test_no_changes_passes(repo: Path, canary: dict[str, set[int]],
                           collector: RunningCollector) -> None:
    proc = gate(collector, repo, "--changed-since", "HEAD")
    assert proc.returncode == 0
    assert "no executable changed lines to measure: gate passed" in proc.stdout
    # Said, so that a ref that is the deployed commit itself (a wrong tag) is noticed.
    assert proc.stdout.splitlines()[0] == (
        "note: git finds no change since HEAD under --source (committed or not): nothing to "
        "gate; is that the commit the change is since?"
    )
    assert support.as_json(gate(collector, repo, "--changed-since", "HEAD", "--format",
                                "json"))["changed_files"] == 0
    # A change made only of import-time lines is not "no change".
    proc = gate(collector, repo, "--changed-since", "v1.0", "--exclude", "shop/views.py",
                "--format", "json")
    assert support.as_json(proc)["changed_files"] == 3


def test_new_code_past_the_end_of_the_file_the_release_ran_fails_the_gate(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """A function appended to a file the release ran in another version lies past the end
    of the release's file: by the release's executable lines it would measure nothing and
    pass. The checkout's own analysis counts its body, never run, and the file is named as
    differing; without --version the default release is refused."""
    pricing = repo / "shop" / "pricing.py"
    text = pricing.read_text()
    pricing.write_text(
        text + "\n\ndef refund(total: float) -> float:\n    if total > 10:\n"
        "        return total - 10\n    return 0.0\n"
    )
    def_line = len(text.splitlines()) + 3  # (after two blank lines)
    body = [def_line + 1, def_line + 2, def_line + 3]
    lines = pricing.read_text().splitlines()
    assert lines[def_line - 1].startswith("def refund") and lines[-1] == "    return 0.0"

    proc = gate(collector, repo, "--changed-since", "HEAD", "--format", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = support.as_json(proc)
    assert (doc["covered"], doc["lines"]) == (0, 3)
    assert doc["files"][0]["path"] == "shop/pricing.py"
    assert doc["files"][0]["missed_lines"] == body
    assert doc["import_time"] == {"shop/pricing.py": [def_line]}  # (the def runs at import)
    assert doc["differing_files"] == ["shop/pricing.py"]
    assert "1 local file(s) differ from the version shop 1.1 (prod, canary) ran" in proc.stderr

    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--role", "canary",
                          "--source", str(repo), "--changed-since", "HEAD")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--changed-since without --version gated shop 1.1 (prod, canary)" in proc.stderr


def test_a_gate_narrowed_to_an_endpoint_says_so(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    proc = gate(collector, repo, "--changed-since", "v1.0", "--endpoint", "POST /checkout",
                "--threshold", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(
        r"PASS: canary covered \d+ of \d+ changed lines \([\d.]+%\) >= 0% in shop 1\.1 "
        r"\(prod, canary\), endpoint POST /checkout", proc.stdout.splitlines()[-1]
    ), proc.stdout
    doc = support.as_json(gate(collector, repo, "--changed-since", "v1.0", "--endpoint",
                               "POST /checkout", "--format", "json"))
    assert doc["endpoint"] == "POST /checkout"
    assert doc["message"].endswith("in shop 1.1 (prod, canary), endpoint POST /checkout")
    assert support.as_json(gate(collector, repo, "--changed-since", "v1.0", "--format",
                                "json"))["endpoint"] is None


def test_a_files_percentage_has_the_digits_of_the_verdict(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """A one-file gate of 2 lines in 3 at a threshold of 66.7: the file's row shows the
    digits the verdict shows, never ``66.7%`` above a verdict of ``(66.67%) < 66.7%``."""
    whole = support.as_json(gate(collector, repo, "--paths", "shop/views.py", "--format",
                                 "json", "--threshold", "0"))
    missed = whole["files"][0]["missed_lines"][0]
    executable = set(analyze_local(repo / "shop" / "views.py").lines)
    ran = sorted(canary["shop/views.py"] & executable)[-2:]
    specs = [f"shop/views.py:{n}" for n in (*ran, missed)]
    proc = gate(collector, repo, "--paths", *specs, "--threshold", "66.7")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "covered 2 of 3 selected lines (66.67%) < 66.7%" in proc.stdout.splitlines()[-1]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("shop/views.py")]
    assert row.split()[1:4] == ["3", "2", "66.67%"], proc.stdout
    doc = support.as_json(gate(collector, repo, "--paths", *specs, "--threshold", "66.7",
                               "--format", "json"))
    assert doc["files"][0]["percent"] == doc["percent"] == 66.67


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
    assert doc["message"] == (
        "canary covered 0 of 1 changed lines (0.0%) < 80% in shop 1.1 (prod, canary)"
    )
    # The edit is not what the canary ran: the gate says so, for the file it measured.
    assert doc["differing_files"] == ["shop/views.py"]
    assert proc.stderr.startswith(
        "runcov: warning: 1 local file(s) differ from the version shop 1.1 (prod, canary) ran "
        "(line numbers may not match): shop/views.py\n"
    )


def test_changed_lines_that_run_only_at_import_are_left_out(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """Imports, def/class lines and module constants run at import, never in a request:
    changing them must not fail a canary that no traffic could make pass."""
    edits = {
        "shop/views.py": [
            ("from shop import pricing\n", "from shop import pricing as pricing\n"),
            ("def item(item_id: int) -> dict:\n", "def item(item_id: int) -> dict[str, object]:\n"),
            ("class Admin:\n", "class Admin(object):\n"),
            ("    def report(self, verbose: bool) -> str:\n",
             "    def report(self, verbose: bool = False) -> str:\n"),
        ],
        "shop/pricing.py": [('"us": 0.0}', '"us": 0.0, "uk": 0.2}')],
    }
    at_import = {}
    for rel, changes in edits.items():
        old_lines = (repo / rel).read_text().splitlines()
        text = (repo / rel).read_text()
        for old, new in changes:
            assert old in text
            text = text.replace(old, new, 1)
        (repo / rel).write_text(text)
        new_lines = text.splitlines()
        assert len(new_lines) == len(old_lines)  # production's line numbers still apply
        at_import[rel] = [n for n, (a, b) in enumerate(zip(old_lines, new_lines), 1) if a != b]
    assert [len(v) for v in at_import.values()] == [4, 1]

    proc = gate(collector, repo, "--changed-since", "HEAD", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = support.as_json(proc)
    assert (doc["lines"], doc["files"]) == (0, [])
    assert doc["import_time"] == at_import and doc["import_time_lines"] == 5

    # A changed line in a function body still counts; the note says what was left out.
    views = repo / "shop" / "views.py"
    text = views.read_text().replace('        return {"status": 404}\n',
                                     '        return {"status": 404, "why": "x"}\n')
    views.write_text(text)
    body = text.splitlines().index('        return {"status": 404, "why": "x"}') + 1
    assert body not in canary["shop/views.py"]
    proc = gate(collector, repo, "--changed-since", "HEAD")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-2:] == [
        "note: left out 5 changed lines that run only at import time (imports, def/class lines, "
        "decorators, module- and class-level statements), which no request executes: "
        "shop/pricing.py 5; shop/views.py " + ", ".join(map(str, at_import["shop/views.py"])),
        "FAIL: canary covered 0 of 1 changed lines (0.0%) < 80% in shop 1.1 (prod, canary)",
    ]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("shop/views.py"))
    assert row.split() == ["shop/views.py", "1", "0", "0.0%", str(body)]


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
        f"({100.0 * covered / total:.1f}%) < 100% in shop 1.1 (prod, canary)"
    )

    whole = gate(collector, repo, "--paths", "shop/pricing.py", "--format", "json")
    doc = support.as_json(whole)
    assert (doc["lines"], doc["covered"]) == (len(statements), len(statements & executed))


def test_paths_that_select_nothing_or_several_functions_are_usage_errors(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """A typo in a game-day gate must stop the pipeline, not measure nothing and pass."""
    for spec in ["shop/pricing.py:5000-6000", "shop/pricing.py:6-7"]:
        proc = gate(collector, repo, "--paths", "shop/pricing.py::discount", spec,
                    "--threshold", "100")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"runcov: {spec} selects no executable line: nothing to measure" in proc.stderr

    (repo / "shop" / "jobs.py").write_text(
        "class Nightly:\n    def run(self):\n        return 1\n\n"
        "class Hourly:\n    def run(self):\n        return 2\n\n"
        "    @property\n    def every(self):\n        return 60\n\n"
        "    @every.setter\n    def every(self, value):\n        self.minutes = value\n"
    )
    # Deployed with the canary, its functions never called: the collector has its static data.
    collector.store.ingest(support.batch(CANARY, repo, [], static_paths=["shop/jobs.py"]))
    proc = gate(collector, repo, "--paths", "shop/jobs.py::run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("shop/jobs.py::run is ambiguous: it matches Nightly.run (line 2), Hourly.run "
            "(line 6); give the qualified name, e.g. shop/jobs.py::Hourly.run") in proc.stderr
    proc = gate(collector, repo, "--paths", "shop/jobs.py::Hourly.run", "--format", "json")
    assert proc.returncode == 1 and support.as_json(proc)["files"][0]["missed_lines"] == [7]
    # One name defined twice (a property's getter and setter) is one function: both bodies.
    proc = gate(collector, repo, "--paths", "shop/jobs.py::every", "--format", "json")
    assert proc.returncode == 1 and support.as_json(proc)["files"][0]["missed_lines"] == [11, 15]


def test_gate_warns_when_the_checkout_is_not_the_release_it_gates(
    repo: Path, collector: RunningCollector, tmp_path: Path
) -> None:
    """Gating release 1.0 from a checkout of 1.1 measures 1.0's lines by 1.1's line numbers:
    the gate says so on stderr, as export does, and its verdict keeps its exit code."""
    old = support.copy_app(tmp_path / "v1.0")  # the sample app as tagged v1.0
    data = tmp_path / "data"
    data.mkdir()
    per_input = support.measure_inputs(old, data, ("checkout-half", "item-even"))
    collector.store.ingest(support.batch(Release("shop", "1.0", "prod", "baseline"), old,
                                         support.requests_from(old, per_input)))
    args = ("gate", *collector.args(), "--service", "shop", "--threshold", "0",
            "--paths", "shop/pricing.py", "shop/views.py::item")

    matching = support.runcov(*args, "--source", str(old))
    assert matching.returncode == 0, matching.stderr
    assert matching.stderr == ""

    proc = support.runcov(*args, "--source", str(repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "runcov: warning: 2 local file(s) differ from the version shop 1.0 (prod, baseline) "
        "ran (line numbers may not match): shop/pricing.py, shop/views.py\n"
    )
    assert proc.stdout.splitlines()[-1].startswith("PASS: ")
    doc = support.as_json(support.runcov(*args, "--source", str(repo), "--format", "json"))
    assert doc["differing_files"] == ["shop/pricing.py", "shop/views.py"]


def test_a_path_the_collector_never_heard_of_is_a_usage_error(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """A --paths file that the collector knows nothing of for the release (no coverage, no
    static data) is almost always a path relative to another root than the agents': it is a
    usage error saying so, not a gate that fails at 0 %."""
    proc = gate(collector, repo / "shop", "--paths", "pricing.py", "--threshold", "10")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == (
        "runcov: pricing.py: the collector knows nothing of this file for shop 1.1 (prod, "
        "canary) (no coverage and no static data, at any time): no sampled request ever ran "
        "it, or, more likely, the path is not the one the agents report, which is relative "
        "to their source root (--source names that root in the checkout); did you mean "
        "'shop/pricing.py'?\n"
    )
    # A module of the checkout that no sampled request ran: the same, listing what is known.
    proc = gate(collector, repo, "--paths", "shop/coupons.py")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(
        "runcov: shop/coupons.py: the collector knows nothing of this file for shop 1.1"
    )
    assert proc.stderr.endswith(
        "; its files: shop/__init__.py, shop/pricing.py, shop/views.py\n"
    )
    proc = gate(collector, repo, "--paths", "shop/nowhere.py")
    assert proc.returncode == 2
    assert "(--source names that root in the checkout); it is not under --source either" in (
        proc.stderr
    )


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


IMPORT_TIME_SOURCE = '''\
"""A module."""                              # -
import functools                              # import
LIMIT = 3                                     # import


def deco(f):                                  # import
    return f                                  # request


@deco                                         # import
@functools.lru_cache(                         # import
    maxsize=LIMIT,                            # -
)                                             # -
def handler(                                  # import
    x=1,                                      # -
):                                            # -
    """Docstring."""                          # -
    y = x + 1                                 # request

    @deco                                     # request
    def inner():                              # request
        return y                              # request
    return inner                              # request


class Admin:                                  # import
    level = LIMIT                             # import

    @property                                 # import
    def name(self):                           # import
        return "admin"                        # request

    def ping(self): return "pong"             # request


if LIMIT > 2:                                 # import
    ALIAS = handler                           # import
'''


def test_import_time_lines(tmp_path: Path) -> None:
    """Statements outside every function body run at import: the ``# import`` lines above.

    Everything marked ``# import`` is executed by merely importing the module (coverage.py
    says so); the ``# request`` lines only run in calls (a one-line ``def`` runs its body).
    """
    module = tmp_path / "mod.py"
    module.write_text(IMPORT_TIME_SOURCE)
    marks = {n: line.rsplit("# ", 1)[1] for n, line in enumerate(IMPORT_TIME_SOURCE.splitlines(), 1)
             if "# " in line}
    local = analyze_local(module)
    assert {n for n, m in marks.items() if m != "-"} == local.lines
    assert local.import_time(local.lines) == {n for n, m in marks.items() if m == "import"}

    data = tmp_path / ".coverage"
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data}", str(module)],
                   cwd=tmp_path, env=support.clean_env(), check=True)
    imported = set(support.hits(data, tmp_path)["mod.py"][0])
    assert {n for n, m in marks.items() if m == "import"} <= imported

    # The body of a function, as --paths FILE::NAME and compare-tests count it.
    ((_, start, end),) = [f for f in local.functions if f[0] == "handler"]
    body = function_body(local.lines, start, end, local.bodies[(start, end)])
    assert body == {n for n in range(start, end + 1) if marks.get(n) == "request"}


def test_changed_files_all_unknown_to_the_collector_hint_at_the_source_root(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """The checkout's package directory given as --source (the agents' root is the
    directory above it): every changed path lacks its ``shop/`` prefix, and the gate, which
    counts them as never executed, says why that is likely."""
    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--version", "1.1",
                          "--role", "canary", "--source", str(repo / "shop"),
                          "--changed-since", "v1.0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (
        "runcov: warning: none of the 3 changed file(s) measured (coupons.py, pricing.py, "
        "views.py) is known to the collector for shop 1.1 (prod, canary), whose agents "
        "reported 3 other(s) (shop/__init__.py, shop/pricing.py, shop/views.py): unless they "
        "are all new modules, --source is not the agents' source root in this checkout (their "
        "paths are relative to it)\n"
    )
    # With the right root, no such warning (the new module alone is unknown, among known ones).
    proc = gate(collector, repo, "--changed-since", "v1.0")
    assert "is known to the collector" not in proc.stderr, proc.stderr


TEST_MODULE = (
    "tests/test_pricing.py",
    '"""Tests of the HALF discount."""\n\nfrom shop import pricing\n\n\n'
    "def test_half() -> None:\n    assert pricing.discount(10.0, \"HALF\") == 5.0\n",
)


@pytest.fixture
def release_with_tests(repo: Path, collector: RunningCollector, tmp_path: Path) -> Path:
    """Release 1.2: a covered production line changed with a new test module in one commit
    (tagged v1.1 before it), the canary measured on it; the checkout's root is the agents'."""
    support.git(repo, "tag", "v1.1")
    views = repo / "shop" / "views.py"
    text = views.read_text()
    assert "    total = 0.0\n" in text
    views.write_text(text.replace("    total = 0.0\n", "    total = 0.0  # in euros\n", 1))
    (repo / "tests").mkdir()
    (repo / TEST_MODULE[0]).write_text(TEST_MODULE[1])
    support.git(repo, "add", ".")
    support.git(repo, "commit", "-q", "-m", "1.2")
    data = tmp_path / "data-1.2"
    data.mkdir()
    per_input = support.measure_inputs(repo, data, CANARY_INPUTS)
    collector.store.ingest(support.batch(Release("shop", "1.2", "prod", "canary"), repo,
                                         support.requests_from(repo, per_input)))
    return repo


def test_exclude_leaves_out_test_files_changed_with_the_code(
    release_with_tests: Path, collector: RunningCollector
) -> None:
    """A test module committed with the change is counted, never executed, by a gate whose
    --source is the repository root; --exclude leaves it out, as the agent's exclude would,
    and the canary's 100 % of the changed production line passes."""
    repo = release_with_tests
    args = ("gate", *collector.args(), "--service", "shop", "--version", "1.2",
            "--role", "canary", "--source", str(repo), "--changed-since", "v1.1")
    proc = support.runcov(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("note: 1 measured file(s) unknown to the collector for shop 1.2 (prod, canary) "
            "count as never executed: tests/test_pricing.py (new modules no sampled request "
            "ran yet; leave out files that are not production code, such as tests, with "
            "--exclude GLOB)") in proc.stdout
    doc = support.as_json(support.runcov(*args, "--format", "json"))
    assert doc["unknown_files"] == ["tests/test_pricing.py"] and doc["excluded_files"] == []
    assert {f["path"] for f in doc["files"]} == {"shop/views.py", "tests/test_pricing.py"}

    for glob in ("tests/*", "test_*.py", str(repo.resolve() / "tests" / "*")):
        proc = support.runcov(*args, "--exclude", glob)
        assert proc.returncode == 0, (glob, proc.stdout + proc.stderr)
        assert proc.stdout.splitlines()[-2:] == [
            "note: left out 1 changed file(s) matching --exclude: tests/test_pricing.py",
            "PASS: canary covered 1 of 1 changed lines (100.0%) >= 80% in shop 1.2 (prod, "
            "canary)",
        ], glob
        doc = support.as_json(support.runcov(*args, "--exclude", glob, "--format", "json"))
        assert doc["excluded_files"] == ["tests/test_pricing.py"] and doc["unknown_files"] == []
        assert [f["path"] for f in doc["files"]] == ["shop/views.py"]
    # A glob matching nothing leaves the verdict as it was.
    assert support.runcov(*args, "--exclude", "docs/*").returncode == 1


def test_paths_naming_an_excluded_file_are_a_usage_error(
    repo: Path, canary: dict[str, set[int]], collector: RunningCollector
) -> None:
    """--paths names its files: one that --exclude leaves out is a contradiction, not a file
    to drop silently (which could leave nothing to measure and pass)."""
    proc = gate(collector, repo, "--paths", "shop/pricing.py", "shop/views.py::item",
                "--exclude", "views.py")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == ("runcov: shop/views.py::item names a file that --exclude leaves "
                           "out: views.py\n")
    proc = gate(collector, repo, "--paths", "shop/pricing.py", "--exclude", "tests/*",
                "--format", "json")
    assert proc.returncode == 1 and support.as_json(proc)["excluded_files"] == []


def test_the_verdict_names_the_release_the_gate_picked(
    repo: Path, collector: RunningCollector, tmp_path: Path
) -> None:
    """Without --version the gate measures the most recently seen release: its verdict
    names it (version, environment and role), not the role alone."""
    data = tmp_path / "data"
    data.mkdir()
    requests = support.requests_from(repo, support.measure_inputs(repo, data, CANARY_INPUTS))
    for version in ("1.0", "1.1"):
        collector.store.ingest(support.batch(Release("shop", version, "staging", "baseline"),
                                             repo, requests))
    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--source", str(repo),
                          "--paths", "shop/views.py::item", "--threshold", "100")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(
        r"FAIL: baseline covered \d+ of \d+ selected lines \([\d.]+%\) < 100% "
        r"in shop 1\.1 \(staging, baseline\)", proc.stdout.splitlines()[-1]
    ), proc.stdout
    proc = support.runcov("gate", *collector.args(), "--service", "shop", "--source", str(repo),
                          "--changed-since", "HEAD")
    assert proc.stdout.splitlines()[-1] == (
        "PASS: no executable changed lines to measure: gate passed for shop 1.1 (staging, "
        "baseline)"
    )


def test_exclusion_is_the_agents(tmp_path: Path) -> None:
    """The CLI's --exclude and the agent's ``exclude`` drop the same files for the same globs."""
    from runcov.redaction import Redactor
    from runcov.reports.local import Exclusion

    paths = ["shop/views.py", "shop/tests/test_views.py", "tests/test_pricing.py",
             "tests/unit/conftest.py", "conftest.py", "Shop/Test_x.py", "scripts/run.py"]
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    globs = [["tests/*"], ["test_*.py"], ["conftest.py"], ["shop/*"], ["*/test_*"],
             ["TEST_*.py"], [str(tmp_path / "scripts" / "*")], ["scripts"], []]
    for g in globs:
        agent = Redactor([str(tmp_path)], exclude=g)
        cli = Exclusion(g)
        for rel in paths:
            local = (tmp_path / rel).resolve()
            assert cli(rel, local) == (agent.relpath(str(local)) is None), (g, rel)
    assert Exclusion(["tests/*"])("tests/a/b.py") and not Exclusion(["tests/*"])("shop/tests.py")
    assert Exclusion(["test_*.py"])("pkg/tests/test_x.py")
    assert not Exclusion([str(tmp_path / "*")])("shop/views.py")  # no local file to match
