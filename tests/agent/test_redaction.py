"""Redaction: relative paths under the roots only, exclusions, and user regexes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runcov.redaction import MAX_PATH_BYTES, REDACTED, Redactor


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in [
        "app/shop/views.py",
        "app/shop/migrations/0001_init.py",
        "app/settings.py",
        "app/vendor/lib/mod.py",
        "outside/other.py",
        "app/customer_acme/report.py",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    return tmp_path


def test_relative_path_under_root(tree: Path) -> None:
    r = Redactor([str(tree / "app")])
    assert r.relpath(str(tree / "app/shop/views.py")) == "shop/views.py"
    assert r.relpath(str(tree / "app" / "shop" / ".." / "settings.py")) == "settings.py"


def test_outside_roots_missing_and_pseudo_files_are_dropped(tree: Path) -> None:
    r = Redactor([str(tree / "app")])
    assert r.relpath(str(tree / "outside/other.py")) is None
    assert r.relpath(str(tree / "app/missing.py")) is None
    assert r.relpath(str(tree / "app/shop")) is None  # a directory
    assert r.relpath("<string>") is None
    assert r.relpath("<frozen importlib._bootstrap>") is None
    assert r.relpath("relative/path.py") is None
    assert r.relpath("") is None


def test_longest_root_wins(tree: Path) -> None:
    r = Redactor([str(tree / "app"), str(tree / "app/vendor")])
    assert r.relpath(str(tree / "app/vendor/lib/mod.py")) == "lib/mod.py"
    assert r.relpath(str(tree / "app/shop/views.py")) == "shop/views.py"


def test_a_file_root_reports_its_name(tree: Path) -> None:
    r = Redactor([str(tree / "app/settings.py")])
    assert r.relpath(str(tree / "app/settings.py")) == "settings.py"
    assert r.relpath(str(tree / "app/shop/views.py")) is None


def test_symlinked_root_and_file_resolve(tree: Path) -> None:
    link = tree / "linked"
    os.symlink(tree / "app", link)
    r = Redactor([str(link)])
    assert r.relpath(str(tree / "app/shop/views.py")) == "shop/views.py"
    assert r.relpath(str(link / "shop/views.py")) == "shop/views.py"


def test_exclude_globs(tree: Path) -> None:
    r = Redactor(
        [str(tree / "app")],
        exclude=["*/migrations/*", "settings.py", str(tree / "app/vendor") + "/*"],
    )
    assert r.relpath(str(tree / "app/shop/migrations/0001_init.py")) is None
    assert r.relpath(str(tree / "app/settings.py")) is None
    assert r.relpath(str(tree / "app/vendor/lib/mod.py")) is None
    assert r.relpath(str(tree / "app/shop/views.py")) == "shop/views.py"


def test_user_regexes_scrub_paths_and_strings(tree: Path) -> None:
    r = Redactor([str(tree / "app")], redact=[r"customer_[a-z]+", r"\d{4}-\d{4}"])
    assert r.relpath(str(tree / "app/customer_acme/report.py")) == f"{REDACTED}/report.py"
    assert r.scrub("GET /cards/1234-5678 for customer_bob") == (
        f"GET /cards/{REDACTED} for {REDACTED}"
    )
    assert Redactor([str(tree)]).scrub("unchanged customer_bob") == "unchanged customer_bob"


def test_no_absolute_or_home_parts_in_reported_paths(tree: Path) -> None:
    r = Redactor([str(tree)])
    rel = r.relpath(str(tree / "app/shop/views.py"))
    assert rel == "app/shop/views.py"
    assert str(tree) not in rel
    assert not rel.startswith("/")
    assert ".." not in rel.split("/")


def test_overlong_paths_are_dropped(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(12):
        deep = deep / ("d" * 100)
    deep.mkdir(parents=True)
    target = deep / "m.py"
    target.write_text("")
    rel = os.path.relpath(target, tmp_path)
    assert len(rel) > MAX_PATH_BYTES
    assert Redactor([str(tmp_path)]).relpath(str(target)) is None


def test_results_are_cached_but_correct_for_new_files(tree: Path) -> None:
    r = Redactor([str(tree / "app")])
    first = r.relpath(str(tree / "app/shop/views.py"))
    assert r.relpath(str(tree / "app/shop/views.py")) is first
    (tree / "app/new.py").write_text("")
    assert r.relpath(str(tree / "app/new.py")) == "new.py"
