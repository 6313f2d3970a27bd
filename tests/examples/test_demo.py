"""The one-command demo runs end to end with real numbers, and cleans up after itself."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
