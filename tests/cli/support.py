"""Helpers for the CLI tests: measure the sample app with coverage.py, feed a real collector."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from coverage import CoverageData
from coverage.config import DEFAULT_EXCLUDE
from coverage.misc import join_regex
from coverage.python import PythonParser

from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    FunctionRange,
    Release,
    StaticPart,
)

SAMPLEAPP = Path(__file__).parent / "sampleapp"

# The sample app's requests (see sampleapp/drive.py) and the endpoint each one belongs to.
INPUTS = {
    "checkout-fr": "POST /checkout",
    "checkout-half": "POST /checkout",
    "checkout-bad": "POST /checkout",
    "item-even": "GET /items/{item_id}",
    "item-missing": "GET /items/{item_id}",
    "admin": "GET /admin/report",
    "never-called": "job never_called",
}


def clean_env() -> dict[str, str]:
    """The environment for child processes, without the test run's own coverage hooks."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COV_CORE_", "COVERAGE_", "RUNCOV_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def copy_app(dst: Path) -> Path:
    """A private copy of the sample app (so paths and git state belong to the test)."""
    shutil.copytree(SAMPLEAPP, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def coverage_run(root: Path, data_file: Path, *inputs: str, branch: bool = True) -> None:
    """``coverage run [--branch] --source=shop drive.py INPUT...`` in ``root``."""
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", *(["--branch"] if branch else []),
         "--source=shop", f"--data-file={data_file}", "drive.py", *inputs],
        cwd=root, env=clean_env(), check=True, capture_output=True, text=True,
    )


def coverage_cli(root: Path, *args: str) -> str:
    """Run the ``coverage`` command in ``root`` and return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "coverage", *args], cwd=root, env=clean_env(),
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def hits(data_file: Path, root: Path) -> dict[str, tuple[list[int], list[tuple[int, int]]]]:
    """Lines and arcs per root-relative path from a coverage.py data file."""
    data = CoverageData(basename=str(data_file))
    data.read()
    out = {}
    for filename in data.measured_files():
        rel = Path(filename).resolve().relative_to(root.resolve()).as_posix()
        out[rel] = (sorted(data.lines(filename) or []), sorted(data.arcs(filename) or []))
    return out


def sha_of(path: Path) -> str:
    """The wire format's file sha."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def static_of(root: Path, rel: str) -> FileStatic:
    """Denominators of one file by coverage.py's parser (what the agent sends)."""
    import ast

    path = root / rel
    text = path.read_text()
    parser = PythonParser(text=text, filename=str(path), exclude=join_regex(DEFAULT_EXCLUDE))
    parser.parse_source()
    functions = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(FunctionRange(prefix + child.name, child.lineno,
                                               child.end_lineno or child.lineno))
                visit(child, prefix + child.name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(ast.parse(text), "")
    return FileStatic(rel, sha_of(path), sorted(parser.statements), sorted(parser.arcs()),
                      functions)


@dataclass
class Request:
    """One sampled request's coverage, as an agent would report it."""

    endpoint: str
    files: dict[str, tuple[list[int], list[tuple[int, int]]]]
    trace_id: str = field(default_factory=lambda: os.urandom(16).hex())
    when: float = field(default_factory=time.time)


def batch(
    release: Release, root: Path, requests: Iterable[Request],
    static_paths: Optional[Iterable[str]] = None, mode: str = "exact",
) -> Batch:
    """A Batch with one coverage part per request and the denominators of the files."""
    requests = list(requests)
    paths = sorted(set(static_paths) if static_paths is not None
                   else {p for r in requests for p in r.files})
    parts = []
    for r in requests:
        files = [
            FileHits(p, sha_of(root / p), lines, [] if mode == "census" else arcs)
            for p, (lines, arcs) in sorted(r.files.items())
        ]
        parts.append(CoveragePart(
            release=release, trace_id=r.trace_id, span_id=os.urandom(8).hex(),
            endpoint=r.endpoint, mode=mode, status_class="2xx",
            time_unix_nano=int(r.when * 1e9), part=0, parts=1, files=files,
        ))
    static = [StaticPart(release, os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns(),
                         [static_of(root, p) for p in paths])] if paths else []
    return Batch(coverage=parts, static=static)


def measure_inputs(root: Path, data_dir: Path, names: Iterable[str]) -> dict[str, Path]:
    """One coverage.py data file per input, each its own process (a "request")."""
    out = {}
    for name in names:
        data_file = data_dir / f".coverage.{name}"
        coverage_run(root, data_file, name)
        out[name] = data_file
    return out


def requests_from(root: Path, data_files: dict[str, Path]) -> list[Request]:
    """The requests an agent would report for these per-input measurements.

    Files coverage.py lists without executing them (never imported under ``--source``) are
    left out: an agent reports only what a request ran.
    """
    out = []
    for name, path in data_files.items():
        files = {p: h for p, h in hits(path, root).items() if h[0]}
        out.append(Request(INPUTS[name], files))
    return out


def combine(root: Path, out: Path, data_files: Iterable[Path]) -> Path:
    """coverage.py's own union of several measurements (the oracle)."""
    coverage_cli(root, "combine", "--keep", f"--data-file={out}", *map(str, data_files))
    return out


def runcov(*args: str, cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None
           ) -> subprocess.CompletedProcess[str]:
    """Run the installed ``runcov`` console script.

    Unlike the ``coverage`` children, it keeps the test run's coverage hooks, so that a run
    measured with subprocess support also measures the CLI.
    """
    exe = Path(sys.executable).with_name("runcov")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, check=False)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """stdout of a ``--format json`` run."""
    import json

    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


# The change under test: the HALF discount gets two lines, items get a new branch, and a
# loyalty function nobody calls yet is added.
EDITS = {
    "shop/pricing.py": [
        ("        return total / 2\n",
         "        half = total / 2\n        return half\n"),
        ("def never_called(",
         'def loyalty(total: float, years: int) -> float:\n    """Loyalty discount."""\n'
         "    if years > 5:\n        return total * 0.9\n    return total\n\n\n"
         "def never_called("),
    ],
    "shop/views.py": [
        ('    label = "even" if item_id % 2 == 0 else "odd"\n',
         '    label = "even" if item_id % 2 == 0 else "odd"\n'
         '    if item_id > 1000:\n        label = "big"\n'),
    ],
}


# A module added in 1.1 that the canary never imports: the collector has never heard of it.
NEW_FILE = (
    "shop/coupons.py",
    '"""Coupons."""\n\n\ndef valid(code: str) -> bool:\n'
    '    """Whether a code is valid."""\n    return code.isalnum()\n',
)


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a throwaway identity; stdout."""
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )
    return proc.stdout
