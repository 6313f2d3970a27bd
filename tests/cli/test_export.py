"""runcov export: coverage.py data, LCOV and Cobertura that coverage.py's tools accept as theirs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from coverage import CoverageData

from runcov.reports.export import write_json
from runcov_collector.model import Release
from tests.cli import support
from tests.cli.conftest import RunningCollector, Sample

RELEASE = Release("shop", "1.0", "prod", "baseline")


@pytest.fixture
def measured(tmp_path: Path, collector: RunningCollector) -> tuple[Path, Path]:
    """The sample app measured by coverage.py per request and fed to the collector.

    Returns (checkout, oracle data file): the oracle is coverage.py's own combined measurement.
    """
    root = support.copy_app(tmp_path / "app")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    per_input = support.measure_inputs(root, data_dir, support.INPUTS)
    oracle = data_dir / ".coverage.oracle"
    support.coverage_cli(root, "combine", "--keep", f"--data-file={oracle}",
                         *map(str, per_input.values()))
    requests = support.requests_from(root, per_input)
    collector.store.ingest(support.batch(RELEASE, root, requests))
    return root, oracle


def export(collector: RunningCollector, root: Path, fmt: str, out: Path) -> str:
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--version", "1.0",
        "--environment", "prod", "--format", fmt, "-o", str(out), "--source", str(root),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_coverage_report_identical_to_coverage_py(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, oracle = measured
    exported = tmp_path / "exported.coverage"
    stderr = export(collector, root, "coverage", exported)
    assert "warning" not in stderr

    expected = support.coverage_cli(root, "report", "-m", f"--data-file={oracle}")
    actual = support.coverage_cli(root, "report", "-m", f"--data-file={exported}")
    assert "Branch" in expected and "shop/pricing.py" in expected
    assert actual == expected
    # The per-line truth behind the report is the same too.
    assert support.hits(exported, root) == support.hits(oracle, root)


def test_coverage_html_and_json_work_on_the_export(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, oracle = measured
    exported = tmp_path / "exported.coverage"
    export(collector, root, "coverage", exported)
    html = tmp_path / "html"
    support.coverage_cli(root, "html", f"--data-file={exported}", "-d", str(html))
    assert (html / "index.html").is_file()
    page = next(html.glob("*pricing_py.html")).read_text()
    assert "never_called" in page
    support.coverage_cli(root, "json", f"--data-file={exported}", "-o", str(tmp_path / "a.json"))
    support.coverage_cli(root, "json", f"--data-file={oracle}", "-o", str(tmp_path / "b.json"))
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["files"] == b["files"] and a["totals"] == b["totals"]


def _lcov_records(text: str) -> dict[str, dict[str, list[tuple[str, ...]]]]:
    """Per file name: its ``DA`` (line, hit) and ``BRDA`` (line, block, branch, taken) in order."""
    records: dict[str, dict[str, list[tuple[str, ...]]]] = {}
    current: dict[str, list[tuple[str, ...]]] = {}
    for line in text.splitlines():
        if line.startswith("SF:"):
            current = records.setdefault(Path(line[3:]).name, {"DA": [], "BRDA": []})
        elif line.startswith("DA:"):
            current["DA"].append(tuple(line[3:].split(",")[:2]))
        elif line.startswith("BRDA:"):
            lineno, block, rest = line[5:].split(",", 2)
            branch, _, taken = rest.rpartition(",")
            current["BRDA"].append((lineno, block, branch, taken))
    return records


def _by_line(brda: list[tuple[str, ...]]) -> dict[str, list[tuple[str, str]]]:
    """Branches per line: (branch, taken) in the order the file lists them."""
    out: dict[str, list[tuple[str, str]]] = {}
    for lineno, _, branch, taken in brda:
        out.setdefault(lineno, []).append((branch, taken))
    return out


def test_lcov_matches_coverage_py_and_genhtml_accepts_it(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, oracle = measured
    out = tmp_path / "prod.lcov"
    export(collector, root, "lcov", out)
    expected = tmp_path / "oracle.lcov"
    support.coverage_cli(root, "lcov", f"--data-file={oracle}", "-o", str(expected))
    got, want = _lcov_records(out.read_text()), _lcov_records(expected.read_text())
    assert got.keys() == want.keys()
    for name in want:
        assert got[name]["DA"] == want[name]["DA"], name
        # coverage.py's branches, in its order, numbered 0, 1, ... per line (lcov 1.x reads
        # numbers only): the same branches with the same "taken", under numbers.
        ours, theirs = _by_line(got[name]["BRDA"]), _by_line(want[name]["BRDA"])
        assert ours.keys() == theirs.keys(), name
        for lineno, branches in theirs.items():
            assert ours[lineno] == [(str(i), taken) for i, (_, taken) in enumerate(branches)]
    pricing, described = _by_line(got["pricing.py"]["BRDA"]), _by_line(want["pricing.py"]["BRDA"])
    # discount(): line 10 "if code is None" went both ways, line 14's fall-through to 17
    # never happened; never_called() never ran.
    assert ("10", "1") in got["pricing.py"]["DA"] and ("45", "0") in got["pricing.py"]["DA"]
    assert described["10"] == [("jump to line 11", "1"), ("jump to line 12", "1")]
    assert pricing["10"] == [("0", "1"), ("1", "1")]
    fall_through = [d for d, _ in described["14"]].index("jump to line 17")
    assert pricing["14"][fall_through] == (str(fall_through), "0")
    if shutil.which("genhtml") is None:
        pytest.skip("genhtml (Debian package lcov) is not installed")
    proc = subprocess.run(
        ["genhtml", "--branch-coverage", "-o", str(tmp_path / "genhtml"), str(out)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "genhtml" / "index.html").is_file()


_RATE = re.compile(r"^\s*(lines|functions|branches)\.+: (?:[\d.]+% \((\d+) of (\d+) \w+\)|(no data "
                   r"found))", re.M)


def _lcov_summary(output: str) -> dict[str, tuple[int, int] | None]:
    """``{"lines": (hit, found), "branches": None, ...}`` from lcov's or genhtml's summary."""
    return {kind: None if none else (int(hit), int(found))
            for kind, hit, found, none in _RATE.findall(output)}


def _sums(text: str, hit: str, found: str) -> tuple[int, int]:
    """The sum of the file records' ``hit`` and ``found`` counts (e.g. ``BRH``/``BRF``)."""
    values = {hit: 0, found: 0}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in values:
            values[key] += int(value)
    return values[hit], values[found]


@pytest.mark.parametrize("tool", ["lcov", "genhtml"])
def test_lcov_tools_read_the_branches_and_functions_of_the_export(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path, tool: str
) -> None:
    """lcov's own tools (1.16 here; CI installs Debian's lcov) find the export's branches and
    count its lines, branches and functions as runcov report and coverage.py do."""
    binary = shutil.which(tool)
    if binary is None:
        pytest.skip(f"{tool} (Debian package lcov) is not installed")
    root, _ = measured
    out = tmp_path / "prod.lcov"
    export(collector, root, "lcov", out)
    report = support.as_json(support.runcov(
        "report", *collector.args(), "--service", "shop", "--version", "1.0", "--format", "json",
    ))["totals"]
    assert report["branches_total"] > report["branches_covered"] > 0
    rc = ["--rc", "lcov_branch_coverage=1", "--rc", "lcov_function_coverage=1"]
    if tool == "lcov":
        command = [binary, "--summary", str(out), *rc]
    else:
        command = [binary, *rc, "-o", str(tmp_path / "html"), str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _lcov_summary(proc.stdout + proc.stderr)
    text = out.read_text()
    assert summary["branches"] == (report["branches_covered"], report["branches_total"])
    assert summary["lines"] == (report["lines_covered"], report["lines_total"])
    assert summary["functions"] == _sums(text, "FNH", "FNF")
    assert _sums(text, "BRH", "BRF") == summary["branches"]


def test_cobertura_matches_coverage_py(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, oracle = measured
    out = tmp_path / "prod.xml"
    export(collector, root, "cobertura", out)
    expected = tmp_path / "oracle.xml"
    support.coverage_cli(root, "xml", f"--data-file={oracle}", "-o", str(expected))

    def lines(path: Path) -> dict[str, set[tuple[str, str, str]]]:
        tree = ET.parse(path)
        out: dict[str, set[tuple[str, str, str]]] = {}
        for cls in tree.iter("class"):
            out[cls.get("filename", "")] = {
                (ln.get("number", ""), ln.get("hits", ""), ln.get("condition-coverage", ""))
                for ln in cls.iter("line")
            }
        return out

    got = lines(out)
    assert got == lines(expected)
    assert "shop/pricing.py" in got
    root_el = ET.parse(out).getroot()
    assert root_el.get("branch-rate") == ET.parse(expected).getroot().get("branch-rate")
    assert [s.text for s in root_el.iter("source")] == [str(root.resolve())]


def test_runcov_traced_requests_export_equal_coverage_py(
    tmp_path: Path, collector: RunningCollector
) -> None:
    """The agent's own tracer as the source of hits: same report as coverage.py's."""
    root = support.copy_app(tmp_path / "app")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    names = list(support.INPUTS)
    requests = []
    for name in names:  # one process per request, like coverage.py's measurements below
        proc = subprocess.run(
            [sys.executable, "traced.py", name], cwd=root, env=support.clean_env(),
            capture_output=True, text=True, check=True,
        )
        record = json.loads(proc.stdout)
        assert record["traced"] is True
        files = {p: (lines, [tuple(a) for a in arcs])
                 for p, (lines, arcs) in record["files"].items()}
        requests.append(support.Request(support.INPUTS[name], files))
    collector.store.ingest(support.batch(RELEASE, root, requests))
    oracle = support.combine(root, data_dir / ".coverage.oracle",
                             support.measure_inputs(root, data_dir, names).values())
    exported = tmp_path / "traced.coverage"
    export(collector, root, "coverage", exported)
    expected = support.coverage_cli(root, "report", "-m", f"--data-file={oracle}")
    assert support.coverage_cli(root, "report", "-m", f"--data-file={exported}") == expected


def test_endpoint_contexts(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path, sample: Sample
) -> None:
    root, oracle = measured
    out = tmp_path / "contexts.coverage"
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--version", "1.0",
        "--format", "coverage", "-o", str(out), "--source", str(root), "--contexts", "endpoint",
    )
    assert proc.returncode == 0, proc.stderr
    # The union over contexts is the same coverage: same report as coverage.py's.
    expected = support.coverage_cli(root, "report", "-m", f"--data-file={oracle}")
    assert support.coverage_cli(root, "report", "-m", f"--data-file={out}") == expected
    data = CoverageData(basename=str(out))
    data.read()
    assert data.measured_contexts() == set(support.INPUTS.values())
    views = str((root / "shop" / "views.py").resolve())
    by_line = data.contexts_by_lineno(views)
    # Each line's contexts are exactly the endpoints whose requests ran it (per coverage.py).
    for line in range(1, 40):
        want = {endpoint for name, endpoint in support.INPUTS.items()
                if line in sample.lines(name).get("shop/views.py", set())}
        assert set(by_line.get(line, [])) == want, line
    html = tmp_path / "html"
    support.coverage_cli(root, "html", f"--data-file={out}", "--show-contexts", "-d", str(html))
    page = next(html.glob("*views_py.html")).read_text()
    assert "GET /admin/report" in page


def test_json_is_the_collector_detail(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, _ = measured
    out = tmp_path / "prod.json"
    export(collector, root, "json", out)
    doc = json.loads(out.read_text())
    assert doc["release"] == RELEASE.as_dict()
    files = {f["path"]: f for f in doc["files"]}
    assert set(files) == {"shop/__init__.py", "shop/pricing.py", "shop/views.py"}
    assert files["shop/pricing.py"]["executable_lines"]
    assert all(len(entry) == 3 for entry in files["shop/views.py"]["lines"])


def test_missing_and_changed_local_files_are_reported(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, _ = measured
    (root / "shop" / "views.py").write_text((root / "shop" / "views.py").read_text() + "\n# x\n")
    (root / "shop" / "__init__.py").unlink()
    stderr = export(collector, root, "coverage", tmp_path / "partial.coverage")
    assert "1 file(s) not found under the source directory, left out: shop/__init__.py" in stderr
    assert "differ from the version production ran" in stderr and "shop/views.py" in stderr
    assert set(support.hits(tmp_path / "partial.coverage", root)) == {
        "shop/pricing.py", "shop/views.py"
    }


def test_progress_for_many_files(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path
) -> None:
    root, _ = measured
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--format", "coverage",
        "-o", str(tmp_path / "p.coverage"), "--source", str(root), "--progress",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("downloading: ") and line.endswith(" KiB") for line in lines)
    assert "writing: 3/3 files (100%)" in lines
    assert lines[-1] == f"wrote {tmp_path / 'p.coverage'} (coverage, 3 files)"
    quiet = support.runcov(
        "export", *collector.args(), "--service", "shop", "--format", "coverage",
        "-o", str(tmp_path / "q.coverage"), "--source", str(root),
    )
    assert quiet.stderr.splitlines() == [f"wrote {tmp_path / 'q.coverage'} (coverage, 3 files)"]


def test_census_mode_exports_line_data(tmp_path: Path, collector: RunningCollector) -> None:
    """Census releases have lines but no arcs: the export is line data, as coverage run is."""
    root = support.copy_app(tmp_path / "app")
    data = tmp_path / "data"
    data.mkdir()
    per_input = {}
    for name in support.INPUTS:
        per_input[name] = data / f".coverage.{name}"
        support.coverage_run(root, per_input[name], name, branch=False)
    requests = support.requests_from(root, per_input)
    collector.store.ingest(support.batch(RELEASE, root, requests, mode="census"))
    oracle = support.combine(root, data / ".coverage.oracle", per_input.values())
    exported = tmp_path / "census.coverage"
    export(collector, root, "coverage", exported)
    written = CoverageData(basename=str(exported))
    written.read()
    assert not written.has_arcs()
    expected = support.coverage_cli(root, "report", "-m", f"--data-file={oracle}")
    assert "Branch" not in expected
    assert support.coverage_cli(root, "report", "-m", f"--data-file={exported}") == expected


@pytest.mark.parametrize("fmt", ["coverage", "lcov", "cobertura", "json"])
def test_unwritable_output_is_a_usage_error(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path, fmt: str
) -> None:
    root, _ = measured
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "a-file").write_text("")
    for out, message in [
        (out_dir, f"output {out_dir} is a directory: give a file name"),
        (out_dir / "a-file" / "x.out",
         f"cannot write {out_dir / 'a-file' / 'x.out'}: {out_dir / 'a-file'} is not a directory"),
    ]:
        proc = support.runcov(
            "export", *collector.args(), "--service", "shop", "--format", fmt, "-o", str(out),
            "--source", str(root),
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in out_dir.iterdir()] == ["a-file"]


@pytest.mark.parametrize("fmt", ["coverage", "lcov", "cobertura", "json"])
def test_output_in_a_missing_directory_is_a_usage_error_naming_it(
    measured: tuple[Path, Path], collector: RunningCollector, tmp_path: Path, fmt: str
) -> None:
    """A typo in -o's directory stops the export (exit 2, naming the directory) rather than
    creating directories and writing the file where nobody will look for it."""
    root, _ = measured
    missing = tmp_path / "no-such-dir" / "sub"
    out = missing / "x.out"
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--format", fmt, "-o", str(out),
        "--source", str(root),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"runcov: cannot write {out}: directory {missing} does not exist (create it first)\n"
    )
    assert not (tmp_path / "no-such-dir").exists()
    # Relative to the working directory, likewise; an existing directory is written to.
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--format", fmt, "-o",
        "typo/x.out", "--source", str(root), cwd=tmp_path,
    )
    assert proc.returncode == 2 and "directory typo does not exist" in proc.stderr
    (tmp_path / "present").mkdir()
    proc = support.runcov(
        "export", *collector.args(), "--service", "shop", "--format", fmt, "-o",
        "present/x.out", "--source", str(root), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "present" / "x.out").is_file()


def test_failed_json_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_json({"files": []}, tmp_path / "taken")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
