"""The one-command demo runs end to end with real numbers, and cleans up after itself."""

from __future__ import annotations

import importlib.util
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.examples import support

DEMO = support.EXAMPLES / "demo.py"


def ranges(text: str) -> set[int]:
    """``"3, 7-9"`` -> ``{3, 7, 8, 9}``."""
    result: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


def port_is_closed(url: str) -> bool:
    """Nothing listens at ``http://127.0.0.1:<port>`` any more."""
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("demo") / "work"
    proc = subprocess.run([sys.executable, str(DEMO), "--dir", str(workdir), "--requests", "200"],
                          capture_output=True, text=True, timeout=240, check=False)
    return proc, workdir


def test_demo_succeeds(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Demo complete" in proc.stdout


def test_reports_show_covered_lines_for_both_releases(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout
    for title in ("Files of shop 1.0 (demo, baseline)", "Files of shop 1.1 (demo, canary)"):
        section = out.split(title, 1)[1]
        total = re.search(r"^TOTAL \((\d+) files\)\s+(\d+)\s+(\d+)", section, re.M)
        assert total, section
        files, statements, missed = map(int, total.groups())
        assert files >= 8
        assert statements - missed > 100
        assert re.search(r"^shop/pricing\.py\s+\d+", section, re.M)


def test_agent_view_agrees_with_the_traffic_the_canary_got(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout
    section = out.split("$ runcov agent", 1)[1].split("$ runcov diff", 1)[0]
    canary = re.search(r"^canary: (\d+) requests in", out, re.M)
    assert canary, out
    counts = re.search(r"^requests seen\s+(\d+)\nrequests sampled\s+(\d+)", section, re.M)
    assert counts, section
    seen, sampled = map(int, counts.groups())
    # Every request of the traffic mix was seen and, at 100 % without a cap, sampled; the
    # health check before it is seen too (not a selected endpoint).
    assert sampled == int(canary.group(1)) and seen > sampled, section
    assert re.search(r"^requests dropped\s+0$", section, re.M), section
    assert re.search(r"^POST /quote\s+(\d+)\s+\1\s+0\s+100%", section, re.M), section


def test_diff_lists_the_canarys_new_branch(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out, workdir = demo[0].stdout, demo[1]
    pricing = (workdir / "src" / "shop" / "pricing.py").read_text().splitlines()
    new_if = next(n for n, line in enumerate(pricing, 1) if "len(categories) >= 3" in line)
    new_line = next(n for n, line in enumerate(pricing, 1) if 'discounts["bundle"]' in line)
    diff = out.split("$ runcov diff", 1)[1].split("$ runcov gate", 1)[0]
    detail = diff.split("\nshop/pricing.py\n", 1)[1]
    only_b = re.search(r"only in B, lines: ([\d, -]+)", detail)
    assert only_b, diff
    assert new_line in ranges(only_b.group(1))
    assert f"{new_if}->{new_line}" in detail


def test_diff_shows_only_the_changed_file(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    # Release 1.1 changes shop/pricing.py only; with both releases sent the same requests, no
    # other file's coverage may differ (different traffic once made shop/validation.py show up).
    diff = demo[0].stdout.split("$ runcov diff", 1)[1].split("$ runcov gate", 1)[0]
    table = diff.split("\n\n", 2)[1]
    files = re.findall(r"^(shop\S*\.py)\s", table, re.M)
    assert files == ["shop/pricing.py"], diff


def test_both_releases_got_the_same_requests(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout

    def endpoint_requests(title: str) -> dict[str, int]:
        table = out.split(title, 1)[1].split("\n\n", 1)[0]
        rows = re.findall(r"^((?:GET|POST) \S+)\s+(\d+)\s", table, re.M)
        return {endpoint: int(n) for endpoint, n in rows}

    baseline = endpoint_requests("Endpoints of shop 1.0 (demo, baseline)")
    canary = endpoint_requests("Endpoints of shop 1.1 (demo, canary)")
    assert len(baseline) >= 5 and baseline == canary, (baseline, canary)


def test_announced_request_count_is_what_each_release_got(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout
    announced = re.search(r"^== 4/8 Driving traffic: (\d+) requests at each release", out, re.M)
    assert announced, out
    sent = re.findall(r"^(?:baseline|canary): (\d+) requests in", out, re.M)
    stored = re.findall(r"^collector has release 1\.[01] \((?:baseline|canary)\): (\d+) sampled",
                        out, re.M)
    assert sent == stored == [announced.group(1)] * 2, (announced.group(0), sent, stored)
    # The breakdown under the banner adds up to it.
    parts = re.search(r"^(\d+) requests of the shop's mix .* and (\d+) orders spanning", out,
                      re.M)
    assert parts and int(parts.group(1)) + int(parts.group(2)) == int(announced.group(1)), out


def test_gates_pass_and_fail_as_the_story_says(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout
    assert re.search(r"^PASS: canary covered (\d+) of \1 changed lines", out, re.M)
    baseline = re.search(r"^FAIL: baseline covered (\d+) of (\d+) selected lines", out, re.M)
    game_day = re.search(r"^PASS: game-day covered (\d+) of (\d+) selected lines", out, re.M)
    assert baseline and game_day, out
    assert baseline.group(2) == game_day.group(2)
    assert int(game_day.group(1)) > int(baseline.group(1))
    assert re.search(r"^game-day: \d+ requests .*503: \d+", out, re.M), "no fault surfaced"


def test_lcov_export_holds_the_canarys_lines(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    workdir = demo[1]
    lcov = (workdir / "shop-1.1-canary.lcov").read_text()
    pricing = (workdir / "src" / "shop" / "pricing.py").read_text().splitlines()
    new_line = next(n for n, line in enumerate(pricing, 1) if 'discounts["bundle"]' in line)
    record = lcov.split("SF:shop/pricing.py\n", 1)[1].split("end_of_record", 1)[0]
    hits = dict(line[3:].split(",")[:2] for line in record.splitlines()
                if line.startswith("DA:"))
    assert int(hits[str(new_line)]) > 0


def test_export_step_shows_what_the_command_reported(
        demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out, workdir = demo[0].stdout, demo[1]
    section = out.split("runcov export", 1)[1]
    # `runcov export` reports the file it wrote on stderr; the demo shows it as a terminal would.
    assert f"\nwrote {workdir / 'shop-1.1-canary.lcov'} (lcov, " in section, section
    assert "(no output)" not in out


def _demo_module() -> Any:
    spec = importlib.util.spec_from_file_location("runcov_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("status", "expect"), [(0, 0), (2, 0)])
def test_runcov_step_shows_the_commands_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               status: int, expect: int) -> None:
    # A warning on stderr must reach the reader whether the command succeeded or not.
    module = _demo_module()
    fake = tmp_path / "runcov"
    fake.write_text("#!/bin/sh\necho 'the table'\necho 'warning: 1 file(s) left out' >&2\n"
                    f"exit {status}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(module, "BIN", tmp_path)
    demo = module.Demo(tmp_path / "work", 10)
    if status == expect:
        assert demo.runcov("export", expect=expect) == "the table\n"
    else:
        with pytest.raises(module.StepFailed, match="exited with 2, expected 0"):
            demo.runcov("export", expect=expect)
    shown = capsys.readouterr().out.splitlines()
    assert shown[1:3] == ["the table", "warning: 1 file(s) left out"], shown
    assert shown.count("warning: 1 file(s) left out") == 1


def test_demo_stops_its_processes(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    urls = re.findall(r"on (http://127\.0\.0\.1:\d+)", demo[0].stdout)
    urls += re.findall(r"^collector: (http://127\.0\.0\.1:\d+)", demo[0].stdout, re.M)
    assert len(urls) == 4
    assert all(port_is_closed(url) for url in urls)


def test_interrupted_demo_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", str(DEMO), "--dir", str(tmp_path / "work"), "--requests", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("canary: release"):
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest + err
    assert "interrupted" in err
    text = "".join(seen)
    urls = re.findall(r"on (http://127\.0\.0\.1:\d+)", text)
    urls += re.findall(r"^collector: (http://127\.0\.0\.1:\d+)", text, re.M)
    assert len(urls) == 3
    deadline = time.monotonic() + 5
    while not all(port_is_closed(u) for u in urls) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(port_is_closed(u) for u in urls)
