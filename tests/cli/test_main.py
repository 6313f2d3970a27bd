"""The ``runcov`` entry point: subcommand registration, the optional ``run``, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Callable

import pytest

from runcov.cli import build_parser, main
from runcov.cli._common import run_guarded


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


@contextlib.contextmanager
def not_http_server(answer: bytes) -> Iterator[str]:
    """A loopback server that answers every connection with ``answer`` (not HTTP/1.x)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:  # TimeoutError from Python 3.10 on
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize(("answer", "message"), [
    # e.g. the collector's gRPC port (HTTP/2 frames)
    (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00garbage-not-http\r\n\r\n",
     "no valid HTTP answer from {url} for /api/v1/coverage (BadStatusLine)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"release\": {",
     "collector sent invalid JSON for /api/v1/coverage"),
], ids=["grpc-port", "cut-short"])
def test_a_server_that_does_not_speak_http_is_a_collector_failure(
    answer: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with not_http_server(answer) as url:
        code = main(["gate", "--collector", url, "--service", "shop", "--paths", "a.py"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert message.format(url=url) in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["127.0.0.1:4318", "localhost", "ftp://h:1", "http://h:port"])
def test_a_collector_url_without_http_is_a_configuration_error(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--collector", url, "--service", "s"]) == 2
    assert f"bad collector URL {url!r}: use http://HOST:PORT" in capsys.readouterr().err


def test_unexpected_errors_never_exit_1(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Exit code 1 is "gate failed": a crash must not look like one to a CD pipeline."""

    def fail(exc: BaseException) -> Callable[[argparse.Namespace], int]:
        def func(args: argparse.Namespace) -> int:
            raise exc
        return func

    args = argparse.Namespace()
    assert run_guarded(fail(PermissionError(13, "Permission denied", "out.lcov")), args) == 2
    assert "Permission denied: 'out.lcov'" in capsys.readouterr().err
    assert run_guarded(fail(KeyError("files")), args) == 4  # internal error
    err = capsys.readouterr().err
    assert "Traceback" in err and "runcov: internal error: KeyError: 'files'" in err
