"""The ``runcov`` entry point: subcommand registration, the optional ``run``, exit codes."""

from __future__ import annotations

import argparse
import sys

import pytest

from runcov.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_report_subcommands_are_registered() -> None:
    assert {"report", "export", "diff", "gate", "compare-tests"} <= subcommands(build_parser())


def test_missing_run_module_is_skipped_cleanly(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "runcov.cli.run", None)  # as if not installed
    assert "run" not in subcommands(build_parser())
    assert main(["report", "--collector", "http://127.0.0.1:9", "--service", "s"]) == 3
    assert "cannot reach the collector at http://127.0.0.1:9" in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: runcov" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["gate", "--service", "s"])
    assert exc.value.code == 2
    assert main(["export", "--service", "s", "--source", "/nonexistent/dir"]) == 2
    assert "source directory /nonexistent/dir does not exist" in capsys.readouterr().err
