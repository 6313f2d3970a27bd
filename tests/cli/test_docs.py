"""The CLI's documentation: its examples agree on the root that paths are relative to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]


def source_roots(text: str) -> list[str]:
    """Every source root an example gives: the agent's and the CLI's ``--source``."""
    roots = [item.strip().strip("\"'")
             for items in re.findall(r"source=\[([^\]]*)\]", text) for item in items.split(",")]
    roots += re.findall(r"RUNCOV_SOURCE=(\S+)", text)
    roots += re.findall(r"--source[ =]([^\s`]+)", text)
    return [root for root in roots if not re.fullmatch(r"[A-Z_]+", root)]  # not DIR


def path_specs(text: str) -> list[str]:
    """Every ``--paths`` spec of an example (up to the next option)."""
    specs = []
    for rest in re.findall(r"--paths ([^\n`]+)", text):
        for token in rest.split():
            if token.startswith("-") or token == "\\":
                break
            if not re.fullmatch(r"[A-Z_]+", token.split(":")[0]):  # not FILE::NAME
                specs.append(token)
    return specs


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_examples_name_files_relative_to_the_source_root_they_give(doc: Path) -> None:
    """The agent reports paths relative to its source root, and the CLI maps them onto the
    checkout by --source: with the examples' files named ``shop/...``, every root they give
    (agent and CLI alike) is the directory holding the ``shop`` package."""
    text = doc.read_text(encoding="utf-8")
    roots, specs = source_roots(text), path_specs(text)
    assert roots and all(root == "." for root in roots), roots
    assert all(spec.startswith("shop/") for spec in specs), specs


def test_cli_docs_say_what_the_figures_and_defaults_are() -> None:
    """The default release, the store's hours and the two Cover figures, as runcov has them
    (tests/cli/test_pipeline_output.py checks the behaviour)."""
    cli = " ".join((ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "(defaults: the most recently seen)" not in cli
    assert "the role is `baseline` when the service has a baseline release" in cli
    assert "**Windows count whole hours.**" in cli
    assert "`since 2026-11-25 10:00 UTC (the hour of 1s ago)`" in cli
    assert "`(Stmts - Miss + Branch - BrMiss) / (Stmts + Branch)`" in cli
    assert "means the same to `coverage report`" not in readme
    assert "where `runcov report`'s `Cover` is statements only" in readme
