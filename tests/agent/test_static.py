"""Static denominators: coverage.py's statements and possible arcs, computed once per content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import coverage
import pytest
from coverage.python import PythonFileReporter

from runcov.static import StaticAnalyzer, analyze_source, file_sha

CORPUS = sorted(
    p for p in (Path(__file__).parent.parent / "corpus").glob("*.py") if p.name != "__init__.py"
)

SAMPLE = '''\
import functools


def deco(f):
    return f


@deco
@functools.lru_cache
def checkout(cart, user=None):
    total = 0
    for item in cart:
        if item > 3:
            total += item
        else:
            total -= 1
    if user is None:  # pragma: no cover
        raise ValueError("no user")
    return total


class Shop:
    def run(self, n):
        def inner(x):
            return x * 2
        return [inner(i)
                for i in range(n)]

    async def arun(self):
        return 1
'''


def coverage_oracle(path: Path) -> tuple[set[int], set[tuple[int, int]]]:
    """Statements and branch-relevant possible arcs as coverage.py itself computes them."""
    cov = coverage.Coverage(branch=True, data_file=None, config_file=False)
    cov.get_data()  # initialises an empty data set without measuring anything
    _, statements, excluded, _, _ = cov.analysis2(str(path))
    reporter = PythonFileReporter(str(path), cov)
    arcs = {
        (a, b) for a, b in reporter.arcs() if a not in set(excluded) and b not in set(excluded)
    }
    return set(statements), arcs


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_matches_coverage_py_on_the_corpus(path: Path) -> None:
    result = StaticAnalyzer().analyze(str(path))
    assert result is not None
    sha, facts = result
    assert facts is not None
    statements, arcs = coverage_oracle(path)
    assert set(facts["lines"]) == statements
    assert {tuple(a) for a in facts["arcs"]} == arcs
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert facts["lines"] == sorted(facts["lines"])


def test_sample_facts(tmp_path: Path) -> None:
    path = tmp_path / "shop.py"
    path.write_text(SAMPLE)
    sha, facts = StaticAnalyzer().analyze(str(path))  # type: ignore[misc]
    assert sha == file_sha(SAMPLE.encode())
    assert facts is not None
    statements, arcs = coverage_oracle(path)
    assert set(facts["lines"]) == statements
    assert {tuple(a) for a in facts["arcs"]} == arcs
    # The excluded block (pragma: no cover) is neither counted nor a branch target.
    assert 17 not in facts["lines"] and 18 not in facts["lines"]
    assert [12, 17] not in facts["arcs"]
    assert [13, 14] in facts["arcs"] and [13, 16] in facts["arcs"]
    # A multi-line statement counts once, at its first line.
    assert 26 in facts["lines"] and 27 not in facts["lines"]
    assert facts["functions"] == [
        {"name": "deco", "start": 4, "end": 5},
        {"name": "checkout", "start": 8, "end": 19},
        {"name": "Shop.run", "start": 23, "end": 27},
        {"name": "Shop.run.<locals>.inner", "start": 24, "end": 25},
        {"name": "Shop.arun", "start": 29, "end": 30},
    ]


def test_function_start_is_the_code_objects_first_line(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(SAMPLE)
    namespace: dict[str, object] = {}
    exec(compile(SAMPLE, str(path), "exec"), namespace)
    facts = analyze_source(SAMPLE)
    starts = {f["name"]: f["start"] for f in facts["functions"]}
    checkout = namespace["checkout"].__wrapped__  # type: ignore[attr-defined]
    assert starts["checkout"] == checkout.__code__.co_firstlineno
    assert starts["Shop.arun"] == namespace["Shop"].arun.__code__.co_firstlineno  # type: ignore[attr-defined]


def test_analysed_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runcov.static

    path = tmp_path / "m.py"
    path.write_text("a = 1\n")
    analyzer = StaticAnalyzer()
    first = analyzer.analyze(str(path))
    assert analyzer.analyze(str(path)) == first
    assert analyzer.analyses == 1
    path.write_text("a = 1\nif a:\n    b = 2\n")
    # Within the re-check period the disk is not looked at again.
    assert analyzer.analyze(str(path)) == first
    assert analyzer.analyses == 1
    monkeypatch.setattr(runcov.static, "RECHECK_SECONDS", 0.0)
    sha, facts = analyzer.analyze(str(path))  # type: ignore[misc]
    assert analyzer.analyses == 2
    assert first is not None and sha != first[0]
    assert facts is not None and facts["lines"] == [1, 2, 3]
    assert sorted(map(tuple, facts["arcs"])) == [(1, 2), (2, -1), (2, 3), (3, -1)]


def test_not_python_and_unreadable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    result = StaticAnalyzer().analyze(str(broken))
    assert result == (file_sha(b"def f(:\n"), None)
    assert StaticAnalyzer().analyze(str(tmp_path / "missing.py")) is None
    assert StaticAnalyzer().sha(str(tmp_path / "missing.py")) is None


def test_source_encoding_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "latin.py"
    data = "# -*- coding: latin-1 -*-\r\nname = 'caf\xe9'\r\nif name:\r\n    x = 1\r\n".encode(
        "latin-1"
    )
    path.write_bytes(data)
    sha, facts = StaticAnalyzer().analyze(str(path))  # type: ignore[misc]
    assert sha == file_sha(data)
    assert facts is not None and facts["lines"] == [2, 3, 4]
