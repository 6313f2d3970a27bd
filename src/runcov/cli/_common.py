"""Options and error handling shared by the report subcommands."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from runcov.reports.client import (
    DEFAULT_COLLECTOR_URL,
    CollectorClient,
    CollectorConfigError,
    CollectorRequestError,
    CollectorUnreachable,
    ReleaseSelection,
)
from runcov.reports.local import SourceError
from runcov.reports.progress import Progress, progress_wanted
from runcov.reports.report import release_label
from runcov.reports.window import Window

EXIT_OK = 0
EXIT_FAILED = 1  # the check ran and failed (gate)
EXIT_USAGE = 2  # bad arguments, configuration, unknown release, git failure
EXIT_COLLECTOR = 3  # collector unreachable, failing, or not answering the API's JSON
EXIT_INTERNAL = 4  # a bug in runcov: never 1, so that it cannot pass for a failed gate


class UsageError(Exception):
    """Bad arguments or configuration detected after parsing (exit code 2)."""


def add_collector_options(parser: argparse.ArgumentParser) -> None:
    """``--collector``, ``--token`` and ``--progress``."""
    group = parser.add_argument_group("collector")
    group.add_argument(
        "--collector", metavar="URL", default=None,
        help=f"collector base URL (env RUNCOV_COLLECTOR_URL, default {DEFAULT_COLLECTOR_URL})",
    )
    group.add_argument(
        "--token", default=None, help="query bearer token (env RUNCOV_TOKEN)",
    )
    group.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress on stderr (default: when stderr is a terminal; env RUNCOV_PROGRESS)",
    )


def add_selection_options(
    parser: argparse.ArgumentParser, versions: bool = True, window: bool = True
) -> None:
    """The release selection of docs/query-api.md (``window``: with ``--since``/``--until``)."""
    group = parser.add_argument_group("release selection")
    group.add_argument("--service", help="service.name")
    if versions:
        group.add_argument("--version", dest="release_version",
                           help="service.version (default: most recently seen)")
    group.add_argument("--environment", help="deployment.environment.name")
    if versions:
        group.add_argument("--role", choices=["baseline", "canary", "shadow", "game-day"],
                           help="deployment role (default: baseline if present)")
    group.add_argument("--endpoint", help='one endpoint, e.g. "GET /items/{item_id}"')
    if window:
        group.add_argument("--since", help="window start: ISO-8601 or relative (90m, 6h, 7d)")
        group.add_argument("--until", help="window end: ISO-8601 or relative")


def add_source_options(
    parser: argparse.ArgumentParser, exclude_what: str = "files", exclude_note: str = ""
) -> None:
    """``--source DIR`` and ``--exclude GLOB`` (alias ``--omit``), both repeatable.

    Declared once for every command that reads the local checkout or leaves files out, so
    that they mean the same everywhere: collector paths are relative to ``--source``, and
    ``--exclude`` matches them as the agent's ``exclude`` option does (see
    :class:`runcov.reports.local.Exclusion`). ``exclude_what`` and ``exclude_note`` say what
    a command leaves out, e.g. gate's "changed files" and its rule for ``--paths``.
    """
    parser.add_argument(
        "--source", metavar="DIR", action="append",
        help="local checkout of the service's source root, which collector paths are relative "
             "to (repeatable; default: current directory)",
    )
    parser.add_argument(
        "--exclude", "--omit", metavar="GLOB", dest="exclude", action="append", default=[],
        help=f"leave out {exclude_what} matching this glob, e.g. 'tests/*' or 'test_*.py', as "
             f"the agent's exclude option matches them (repeatable{exclude_note})",
    )


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format text|json``."""
    parser.add_argument("--format", choices=["text", "json"], default="text",
                        help="output format (default: text)")


def window(args: argparse.Namespace) -> Window:
    """The ``--since``/``--until`` window, resolved once per command (see :class:`Window`)."""
    found = getattr(args, "_window", None)
    if found is None:
        found = Window(getattr(args, "since", None), getattr(args, "until", None))
        args._window = found
    return found


def selection(args: argparse.Namespace, require_service: bool = True) -> ReleaseSelection:
    """The release selection given on the command line.

    A relative ``--since``/``--until`` is sent as the instant it means now, the instant the
    reports' headings name the hour of (:meth:`Window.label`).
    """
    if require_service and not args.service:
        raise UsageError("--service is required")
    when = window(args)
    return ReleaseSelection(
        service=args.service,
        version=getattr(args, "release_version", None),
        environment=args.environment,
        role=getattr(args, "role", None),
        endpoint=args.endpoint,
        since=when.query(when.since),
        until=when.query(when.until),
    )


def check_endpoint(c: CollectorClient, *sels: ReleaseSelection) -> None:
    """Reject an ``--endpoint`` that none of the selected releases has ever seen.

    The collector answers such a selection with 404; asking first lets the message suggest
    the closest known endpoint and list the others, for a typo in the endpoint's name (older
    collectors answered it with empty coverage, which read as 0 % and failed a gate). Known
    means seen at any time, so that a ``--since`` window without its requests still reports
    0 % for an endpoint that exists.
    """
    wanted = sels[0].endpoint if sels else None
    if wanted is None:
        return
    known: set[str] = set()
    labels = []
    for sel in sels:
        doc = c.endpoints(replace(sel, endpoint=None, since=None, until=None))
        known.update(e["endpoint"] for e in doc.get("endpoints", []))
        labels.append(release_label(doc["release"]))
    if wanted in known:
        return
    close = difflib.get_close_matches(wanted, sorted(known), n=1)
    listed = ", ".join(sorted(known)[:10]) + (" ..." if len(known) > 10 else "")
    raise UsageError(
        f"unknown endpoint {wanted!r}: {' and '.join(dict.fromkeys(labels))} never saw it"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; known endpoints: {listed or '(none)'}"
    )


def progress(args: argparse.Namespace, label: str, total: Optional[int] = None,
             unit: str = "", scale: int = 1) -> Progress:
    """A progress line on stderr, enabled per ``--progress``/env/terminal."""
    return Progress(label, total, progress_wanted(args.progress, sys.stderr), sys.stderr, unit,
                    scale)


def client(args: argparse.Namespace) -> CollectorClient:
    """The collector client for these options."""
    return CollectorClient.from_env(args.collector, args.token, url_option="--collector")


def download_progress(args: argparse.Namespace, c: CollectorClient) -> Progress:
    """Show the bytes received from the collector (large detail answers) on stderr."""
    bar = progress(args, "downloading", unit=" KiB", scale=1024)
    if bar.enabled:
        c.on_bytes = bar.advance
    return bar


def emit_json(doc: Any, out: Optional[TextIO] = None) -> None:
    """Print a JSON document to stdout."""
    stream = out if out is not None else sys.stdout
    json.dump(doc, stream, indent=2, sort_keys=True)
    stream.write("\n")


def source_dirs(values: Optional[list[str]]) -> list[Path]:
    """``--source`` directories (default: the current directory), checked to exist."""
    dirs = [Path(v) for v in (values or ["."])]
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"source directory {d} does not exist")
    return dirs


#: Characters that act on a terminal or reorder what it shows: C0 and C1 controls and DEL,
#: and the bidirectional formatting characters. What a report prints comes from the collector
#: (names, paths, its error messages); printed raw, they could move the cursor, clear the
#: screen, set links or forge a verdict line. Shown as ``\u009b``, as JSON escapes them.
_INERT = {
    code: f"\\u{code:04x}"
    for code in (
        *range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
        *range(0x202A, 0x202F), *range(0x2066, 0x206A),
    )
    if code not in (0x09, 0x0A)  # (tab and newline: the output's own layout)
}
#: On stderr, a carriage return rewrites the progress line.
_INERT_STDERR = {code: text for code, text in _INERT.items() if code != 0x0D}


def inert(text: str) -> str:
    """``text`` with every character that acts on a terminal shown escaped."""
    return text.translate(_INERT)


class _InertStream:
    """A text stream that writes what it is given with the terminal's control characters
    escaped (see :data:`_INERT`); everything else is the wrapped stream's."""

    def __init__(self, stream: Any, table: dict[int, str]) -> None:
        self._stream = stream
        self._table = table

    def write(self, text: str) -> int:
        self._stream.write(text.translate(self._table))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand with what it prints made inert (:data:`_INERT`): see
    :func:`_run_guarded`."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _InertStream(out, _INERT), _InertStream(err, _INERT_STDERR)
    try:
        return _run_guarded(func, args)
    finally:
        sys.stdout, sys.stderr = out, err


def _run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning every failure into a message and its documented exit code.

    Exit code 1 means "the gate failed" to CD pipelines, so no error may end with it (as an
    uncaught exception would): local file errors are configuration errors (2), and anything
    unforeseen is an internal error (4), reported with its traceback.
    """
    try:
        return func(args)
    except CollectorUnreachable as exc:
        return _failed(args, EXIT_COLLECTOR, str(exc))
    except (CollectorRequestError, CollectorConfigError) as exc:
        return _failed(args, EXIT_USAGE, str(exc))
    except (UsageError, SourceError, ValueError) as exc:
        return _failed(args, EXIT_USAGE, str(exc))
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        return _failed(args, EXIT_USAGE, str(exc))
    except Exception as exc:  # the last resort that keeps exit code 1 for failed gates
        traceback.print_exc(file=sys.stderr)
        return _failed(
            args,
            EXIT_INTERNAL,
            f"internal error: {type(exc).__name__}: {exc} (please report this with the "
            "traceback above)",
        )


def _failed(args: argparse.Namespace, code: int, message: str) -> int:
    """Say why a command failed, on stderr; with ``--format json`` also as JSON on stdout
    (``{"error": ..., "exit_code": ...}``), so that a pipeline that parses the output reads
    a failure, not an empty document."""
    print(f"runcov: {inert(message)}", file=sys.stderr)
    if getattr(args, "format", None) == "json":
        try:
            sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
            sys.stdout.flush()
        except OSError:
            pass
    return code
