"""The ``runcov`` entry point: subcommand registration, the optional ``run``, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
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
    capsys.readouterr()
    # A misspelt option is told with the usage of the subcommand it was given to.
    with pytest.raises(SystemExit) as exc:
        main(["gate", "--service", "s", "--paths", "a.py", "--thresold", "80"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: runcov gate ")
    assert err.rstrip().endswith("runcov gate: error: unrecognized arguments: --thresold 80")
    if "run" in subcommands(build_parser()):  # (``run`` keeps its command in ``command``)
        with pytest.raises(SystemExit) as exc:
            main(["run", "--bogus", "--", "true"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: runcov run ")
        assert err.rstrip().endswith("runcov run: error: unrecognized arguments: --bogus")
    assert main(["export", "--service", "s", "--source", "/nonexistent/dir"]) == 2
    assert "source directory /nonexistent/dir does not exist" in capsys.readouterr().err


@contextlib.contextmanager
def http_server(respond: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A loopback server that reads each request's head and lets ``respond`` answer it."""
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
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                try:
                    respond(conn, head)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def not_http_server(answer: bytes) -> contextlib.AbstractContextManager[str]:
    """A loopback server that answers every connection with ``answer`` (not HTTP/1.x)."""
    return http_server(lambda conn, head: conn.sendall(answer))


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


@pytest.mark.parametrize(("url", "why"), [
    ("127.0.0.1:4318", "no http:// or https:// in front"),
    ("localhost", "no http:// or https:// in front"),
    ("ftp://h:1", "the scheme is 'ftp', not http or https"),
    ("http://h:port", "the port 'port' is not a number"),
    ("http://127.0.0.1:99999", "the port 99999 is out of range (1-65535)"),
    ("http://127.0.0.1:0", "the port 0 is out of range (1-65535)"),
    ("http://[::1", "unbalanced brackets around an IPv6 address (write it as http://[::1]:4318)"),
    ("http://:4318", "no host"),
])
def test_a_collector_url_that_cannot_work_is_a_configuration_error_naming_why(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message names where the URL came from, the URL and what is wrong with it."""
    monkeypatch.delenv("RUNCOV_COLLECTOR_URL", raising=False)
    assert main(["report", "--collector", url, "--service", "s"]) == 2
    err = capsys.readouterr().err
    assert err == (f"runcov: bad --collector {url!r}: {why}; use http://HOST:PORT or "
                   "https://HOST:PORT (e.g. http://127.0.0.1:4318)\n")
    monkeypatch.setenv("RUNCOV_COLLECTOR_URL", url)
    assert main(["report", "--service", "s"]) == 2
    assert f"runcov: bad RUNCOV_COLLECTOR_URL {url!r}: {why}; " in capsys.readouterr().err


def json_server(doc: object) -> contextlib.AbstractContextManager[str]:
    """A loopback server that answers every request with this JSON document (HTTP 200)."""
    return http_server(_answer(json.dumps(doc).encode()))


@pytest.mark.parametrize(("doc", "command", "path", "problem"), [
    ({"services": 5}, ["report"], "/api/v1/services",
     '"services" is a number (5), not a list'),
    ({"services": 5}, ["report", "--service", "shop"], "/api/v1/releases",
     '"releases" is missing'),
    ({"services": 5}, ["diff", "--service", "shop", "--canary", "1.1"], "/api/v1/releases",
     '"releases" is missing'),
    ({"services": 5}, ["gate", "--service", "shop", "--paths", "a.py"], "/api/v1/coverage",
     '"release" is missing'),
    ({"services": 5}, ["agent", "--service", "shop"], "/api/v1/agent", '"release" is missing'),
    ({"releases": [{"version": 5}]}, ["report", "--service", "shop"], "/api/v1/releases",
     '"releases[0].version" is a number (5), not a string or null'),
    ({"release": {"service": "shop"}, "files": [{"path": "a.py", "lines": [["7", 1]]}]},
     ["export", "--service", "shop"], "/api/v1/coverage",
     '"files[0].lines[0][0]" is a string ("7"), not a whole number'),
    ([], ["report", "--service", "shop", "--endpoint", "GET /"], "/api/v1/endpoints",
     "the answer is a list, not an object"),
], ids=["services", "releases", "diff", "gate", "agent", "nested", "detail", "not-an-object"])
def test_an_answer_of_another_shape_is_a_collector_failure_naming_what_was_unexpected(
    doc: object, command: list[str], path: str, problem: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Valid JSON, but not what the query API answers: exit 3 naming the URL, the path and
    what was unexpected, whichever command read it, and no traceback."""
    with json_server(doc) as url:
        code = main([*command, "--collector", url, "--source", str(tmp_path),
                     "-o", str(tmp_path / "out")] if command[0] == "export"
                    else [*command, "--collector", url])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err == f"runcov: collector sent unexpected JSON for {path} from {url}: {problem}\n"
    assert not (tmp_path / "out").exists()


def test_run_names_the_option_given_not_the_variable_it_becomes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``runcov run`` hands its options to the agent as RUNCOV_* variables: a bad value is
    reported as the option typed, and a bad variable from the environment as that variable."""
    for name in [k for k in os.environ if k.startswith("RUNCOV_")]:
        monkeypatch.delenv(name)

    def execve(*args: object) -> None:
        raise AssertionError(f"the command was started: {args}")

    monkeypatch.setattr(os, "execve", execve)  # a valid setting would replace pytest
    assert main(["run", "--sample-rate", "abc", "--", "true"]) == 2
    assert capsys.readouterr().err == (
        "runcov run: --sample-rate 'abc': not a number between 0 and 1 "
        "(passed to the agent as RUNCOV_SAMPLE_RATE='abc')\n"
    )
    assert main(["run", "--endpoint", "GET /items@2", "--", "true"]) == 2
    assert capsys.readouterr().err.startswith(
        "runcov run: --endpoint 'GET /items@2': rate '2' is not a number between 0 and 1"
    )
    monkeypatch.setenv("RUNCOV_SAMPLE_RATE", "abc")
    assert main(["run", "--mode", "census", "--", "true"]) == 2
    assert capsys.readouterr().err == (
        "runcov run: RUNCOV_SAMPLE_RATE='abc': not a number between 0 and 1\n"
    )


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


# -- a collector that answers in ways that could harm the caller ---------------------------


def test_a_redirect_is_not_followed_and_the_token_stays_home(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A redirect would hand the query token to whatever URL it names: it is an error naming
    where it pointed, and the other server hears nothing."""
    heard: list[bytes] = []
    with http_server(lambda conn, head: heard.append(head)) as elsewhere:
        def redirect(conn: socket.socket, head: bytes) -> None:
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + elsewhere.encode()
                         + b"/api/v1/services\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        with http_server(redirect) as url:
            code = main(["report", "--collector", url, "--token", "SEKRIT"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (f"the collector at {url} answered /api/v1/services with a redirect (HTTP 302) to "
            f"'{elsewhere}/api/v1/services': runcov does not follow redirects") in err
    assert heard == []


def _answer(body: bytes, chunk: int = 0, pause: float = 0.0) -> Callable[..., None]:
    def respond(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if not chunk:
            conn.sendall(body)
            return
        for start in range(0, len(body), chunk):
            conn.sendall(body[start:start + chunk])
            time.sleep(pause)

    return respond


def test_answers_too_big_too_deep_or_too_slow_fail_the_query(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runcov.reports import client as client_module
    from runcov.reports.client import CollectorClient, CollectorUnreachable

    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 1024 * 1024)
    big = json.dumps({"services": ["x" * 1000] * 2000}).encode()  # ~2 MB
    with http_server(_answer(big)) as url:
        assert main(["report", "--collector", url]) == 3
    assert f"the collector at {url} sent more than 1 MiB for /api/v1/services" in (
        capsys.readouterr().err)

    deep = b"[" * 100_000 + b"]" * 100_000
    with http_server(_answer(deep)) as url:
        assert main(["report", "--collector", url]) == 3
    err = capsys.readouterr().err
    assert "collector sent invalid JSON for /api/v1/services" in err and "Traceback" not in err

    trickle = json.dumps({"services": []}).encode()  # a byte every 0.25 s: ~4 s in all
    with http_server(_answer(trickle, chunk=1, pause=0.25)) as url:
        started = time.monotonic()
        with pytest.raises(CollectorUnreachable) as failed:
            CollectorClient(base_url=url, timeout=1.0).services()
        assert time.monotonic() - started < 2.5
    assert "did not finish answering /api/v1/services within 1 s" in str(failed.value)


def test_what_the_collector_names_is_printed_inert(capsys: pytest.CaptureFixture[str]) -> None:
    """Names and messages from the collector can carry terminal controls (a hostile or broken
    collector; C1 and bidirectional controls that an ingest client sent): printed, they are
    shown escaped, never acted on."""
    name = "shop\x1b]0;PWNED\x07\x1b[2J\u009b31m\u202eevil\rFAIL"
    doc = {"services": [{"service": name, "releases": 1, "last_seen": "2026-11-25T10:00:00Z"}]}
    with http_server(_answer(json.dumps(doc).encode())) as url:
        assert main(["report", "--collector", url]) == 0
    out = capsys.readouterr().out
    assert "shop\\u001b]0;PWNED\\u0007\\u001b[2J\\u009b31m\\u202eevil\\u000dFAIL" in out
    assert not any(c in out for c in "\x1b\x07\u009b\u202e\r")

    def refuse(conn: socket.socket, head: bytes) -> None:
        body = json.dumps({"error": "bad\x1b[2J\u202ething"}).encode()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)

    with http_server(refuse) as url:
        assert main(["report", "--collector", url, "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert "bad\\u001b[2J\\u202ething" in captured.err
    assert not any(c in captured.err + captured.out for c in "\x1b\u202e")
    assert json.loads(captured.out)["exit_code"] == 2
