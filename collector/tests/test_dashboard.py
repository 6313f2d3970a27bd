"""The dashboard over a real collector: pages, numbers, annotation, escaping, paths, scale."""

from __future__ import annotations

import ast
import base64
import html
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.tests.dashboard import (
    TOKEN,
    Running,
    copy_sample,
    populate,
    running_collector,
    static_of,
    static_part,
    truth,
)

from runcov_collector.dashboard.cache import AnswerCache
from runcov_collector.dashboard.source import Annotation, annotate, read_source
from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    MetricPoint,
    Release,
)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Running, dict[str, Path]]]:
    root = copy_sample(tmp_path / "src")
    scratch = tmp_path / "data"
    scratch.mkdir()
    with running_collector(tmp_path, root) as running:
        yield running, populate(running, root, scratch)


def fields(page: str, row_attr: str, value: str) -> dict[str, str]:
    """data-field cells of the table row whose ``row_attr`` equals ``value``."""
    row = re.search(rf'<tr[^>]*{row_attr}="{re.escape(html.escape(value))}"[^>]*>(.*?)</tr>',
                    page, re.S)
    assert row, f"no row {row_attr}={value}"
    return {k: html.unescape(v.strip()) for k, v in
            re.findall(r'data-field="([a-z_]+)">(.*?)</t[dh]>', row.group(1), re.S)}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def test_services_and_releases_show_the_api_numbers(site: tuple[Running, dict]) -> None:
    running, _ = site
    status, page = running.get("/")
    assert status == 200
    assert fields(page, "data-service", "shop") == {"releases": "2"}
    status, page = running.get("/ui/service?service=shop")
    assert status == 200
    for r in running.api("/api/v1/releases?service=shop")["releases"]:
        row = re.search(rf'data-version="{r["version"]}"[^>]*data-role="{r["role"]}"', page)
        assert row
        cells = fields(page[row.start() - 40:], "data-version", r["version"])
        assert cells["line_percent"] == pct(r["line_percent"])
        assert cells["branch_percent"] == pct(r["branch_percent"])
        assert cells["requests"] == str(r["requests"])
        assert cells["lines"] == f'{r["lines_covered"]}/{r["lines_total"]}'
    # Trend sparklines: one polyline per release, from /series.
    assert page.count("<polyline") == 2


def test_release_page_numbers_and_escaping(site: tuple[Running, dict]) -> None:
    running, _ = site
    query = "service=shop&version=1.0&environment=prod&role=baseline"
    status, page = running.get("/ui/release?" + query)
    assert status == 200
    cov = running.api("/api/v1/coverage?" + query)
    for f in cov["files"]:
        cells = fields(page, "data-path", f["path"])
        assert cells["line_percent"] == pct(f["line_percent"])
        assert cells["lines"] == f'{f["lines_covered"]}/{f["lines_total"]}'
        assert cells["branches"] == f'{f["branches_covered"]}/{f["branches_total"]}'
    endpoints = running.api("/api/v1/endpoints?" + query)["endpoints"]
    assert {e["endpoint"] for e in endpoints} == {"POST /cart", "GET /cart/<empty>"}
    # The endpoint name is data: escaped everywhere, never markup.
    assert "GET /cart/<empty>" not in page
    assert "GET /cart/&lt;empty&gt;" in page
    assert fields(page, "data-endpoint", "GET /cart/<empty>")["requests"] == "1"


def test_annotated_source_classes_equal_coverage_py(site: tuple[Running, dict]) -> None:
    running, oracles = site
    status, page = running.get(
        "/ui/file?service=shop&version=1.0&environment=prod&role=baseline&path=shop/cart.py"
    )
    assert status == 200
    classes = dict(re.findall(r'<tr id="L(\d+)" class="([a-z]*)"', page))
    want = truth(running.source, oracles["baseline"], "shop/cart.py")
    got = {cls: {int(n) for n, c in classes.items() if c == cls}
           for cls in ("covered", "missed", "partial")}
    assert got == {"covered": want.covered, "missed": want.missed, "partial": want.partial}
    assert want.partial and want.missed  # the sample exercises all three classes
    # First trace per line links to the tracing UI; source text is escaped.
    detail = running.api("/api/v1/file?service=shop&version=1.0&environment=prod"
                         "&role=baseline&path=shop/cart.py")
    first = {line: trace for line, _, trace in detail["lines"]}
    some_line, some_trace = next(iter(sorted(first.items())))
    assert f'href="https://tracing.example/trace/{some_trace}"' in page
    assert re.search(rf'<tr id="L{some_line}"[^>]*>.*?{some_trace[:8]}', page, re.S)
    assert "&lt;b&gt;not html&lt;/b&gt;" in page and "<script>alert(1)" not in page
    partial_line = min(want.partial)
    assert re.search(rf'<tr id="L{partial_line}" class="partial" title="line {partial_line} '
                     r"didn&#39;t jump to", page)


def test_a_census_release_shows_branch_coverage_as_not_measured(
    site: tuple[Running, dict],
) -> None:
    """Census records lines, not arcs: branch figures read "n/a" (not 0.0%) on every page, and
    no line is "partial" (which exits ran is unknown). The exact release keeps its numbers."""
    running, _ = site
    census = Release("shop", "2.0", "prod", "baseline")
    query = "service=shop&version=2.0&environment=prod&role=baseline"
    exact = running.api("/api/v1/file?service=shop&version=1.0&environment=prod&role=baseline"
                        "&path=shop/cart.py")
    lines = [line for line, _, _ in exact["lines"]]
    statics = [static_of(running.source, rel) for rel in ("shop/__init__.py", "shop/cart.py")]
    running.store.ingest(Batch(static=[static_part(census, statics)], coverage=[CoveragePart(
        release=census, trace_id="ab" * 16, span_id="cd" * 8, endpoint="POST /cart",
        mode="census", status_class="2xx", time_unix_nano=time.time_ns(), part=0, parts=1,
        files=[FileHits("shop/cart.py", exact["sha"], lines, [])])]))
    api = running.api("/api/v1/coverage?" + query)
    assert api["totals"]["branch_percent"] is None and api["totals"]["branches_total"] > 0
    not_measured = 'title="measured by census only: census records lines, not arcs or branches"'

    status, page = running.get("/ui/service?service=shop")
    assert status == 200
    assert fields(page, "data-version", "2.0")["branch_percent"] == "n/a"
    assert fields(page, "data-version", "1.0")["branch_percent"].endswith("%")

    status, page = running.get("/ui/release?" + query)
    assert status == 200
    totals = dict(re.findall(r'data-field="([a-z_]+)">(.*?)</dd>', page))
    assert totals["branch_percent"] == "n/a"
    assert totals["branches"] == f'n/a/{api["totals"]["branches_total"]}'
    assert totals["line_percent"] == pct(api["totals"]["line_percent"])
    cart = fields(page, "data-path", "shop/cart.py")
    assert (cart["branch_percent"], cart["line_percent"]) == ("n/a", pct(exact["line_percent"]))
    assert fields(page, "data-endpoint", "POST /cart")["arcs_covered"] == "n/a"
    assert not_measured in page

    status, page = running.get("/ui/file?" + query + "&path=shop/cart.py")
    assert status == 200
    classes = set(re.findall(r'<tr id="L\d+" class="([a-z]*)"', page))
    assert "covered" in classes and "partial" not in classes
    assert dict(re.findall(r'data-field="([a-z_]+)">(.*?)</dd>', page))["branch_percent"] == "n/a"
    status, page = running.get("/ui/file?service=shop&version=1.0&environment=prod"
                               "&role=baseline&path=shop/cart.py")
    assert 'class="partial"' in page and not_measured not in page

    # Compared with the exact release: the census side ran cart.py's lines, so the arcs the
    # exact side covered there are not differences, and the page says how many were left out.
    status, page = running.get("/ui/diff?service=shop&environment=prod&a_version=2.0"
                               "&a_role=baseline&b_version=1.0&b_role=baseline")
    assert status == 200
    left_out = len(exact_arcs(running))
    assert left_out > 0
    assert (f'id="diff-not-compared">{left_out} arc(s) covered on one side are not compared'
            in page)
    assert 'data-path="shop/cart.py"' not in page  # the same lines: no difference left


def exact_arcs(running: Running) -> set[tuple[int, int]]:
    """The arcs of ``shop/cart.py`` that release 1.0 (baseline) covered, from the API."""
    data = running.api("/api/v1/coverage?service=shop&version=1.0&environment=prod"
                       "&role=baseline&detail=1")
    [f] = [f for f in data["files"] if f["path"] == "shop/cart.py"]
    return {tuple(a) for a in f["arcs"]}


def test_file_page_without_source_dir_lists_lines(tmp_path: Path) -> None:
    root = copy_sample(tmp_path / "src")
    scratch = tmp_path / "data"
    scratch.mkdir()
    with running_collector(tmp_path, None) as running:
        oracles = populate(running, root, scratch)
        status, page = running.get("/ui/file?service=shop&version=1.0&environment=prod"
                                   "&role=baseline&path=shop/cart.py")
    assert status == 200
    assert "Source not shown: no source directory is configured." in page
    want = truth(root, oracles["baseline"], "shop/cart.py")
    classes = dict(re.findall(r'<tr id="L(\d+)" class="([a-z]*)"', page))
    assert {int(n) for n, c in classes.items() if c == "missed"} == want.missed
    assert {int(n) for n, c in classes.items() if c == "partial"} == want.partial


def test_diff_page(site: tuple[Running, dict]) -> None:
    running, _ = site
    query = ("service=shop&environment=prod&a_version=1.0&a_role=baseline"
             "&b_version=1.1&b_role=canary")
    status, page = running.get("/ui/diff?" + query)
    assert status == 200
    api = running.api("/api/v1/diff?" + query)
    for f in api["files"]:
        if not (f["newly_covered_lines"] or f["no_longer_covered_lines"]):
            continue
        cells = fields(page, "data-path", f["path"])
        newly = [n for part in cells["newly_covered_lines"].split(", ") if part
                 for n in _expand(part)]
        assert newly == sorted(f["newly_covered_lines"])
    only = [e["endpoint"] for e in api["endpoints"] if e["only_in_a"]]
    assert only == ["GET /cart/<empty>"]
    assert "GET /cart/&lt;empty&gt; — only in A" in page
    status, form = running.get("/ui/diff?service=shop")
    assert status == 200 and 'id="diff-form"' in form and 'id="diff-files"' not in form


def form_choices(page: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The compare form as a browser submits it: the selected options of each select, and the
    hidden inputs (values unescaped)."""
    form = re.search(r'<form[^>]*id="diff-form"[^>]*>(.*?)</form>', page, re.S)
    assert form, "no compare form"
    selected = {
        name: [html.unescape(v) for v in re.findall(r'<option value="([^"]*)" selected>', body)]
        for name, body in re.findall(r'<select name="([a-z_]+)"[^>]*>(.*?)</select>',
                                     form.group(1), re.S)
    }
    hidden = {name: html.unescape(value) for name, value in
              re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">',
                         form.group(1))}
    return selected, hidden


def submit_offered_form(running: Running, service: str) -> tuple[dict[str, str], int, str]:
    """Open the compare page of ``service`` and press Compare as offered: (the fields sent,
    status, page). Each select must preselect exactly one option (a browser would otherwise
    send its first, whatever that names)."""
    status, page = running.get("/ui/diff?" + urllib.parse.urlencode({"service": service}))
    assert status == 200
    selected, hidden = form_choices(page)
    assert set(selected) == {"a_version", "a_role", "b_version", "b_role", "environment"}
    assert all(len(values) == 1 for values in selected.values()), selected
    sent = {**hidden, **{name: values[0] for name, values in selected.items()}}
    status, result = running.get("/ui/diff?" + urllib.parse.urlencode(sent))
    return sent, status, result


def test_the_compare_form_offers_releases_that_exist(site: tuple[Running, dict]) -> None:
    """Offered as is, the form compares the most recent canary (B) with the baseline beside it
    (A), as ``runcov diff --canary`` does; it used to select no option, so a browser sent the
    newest version with role baseline, a release that does not exist (404)."""
    running, _ = site
    sent, status, page = submit_offered_form(running, "shop")
    assert sent == {"service": "shop", "a_version": "1.0", "a_role": "baseline",
                    "b_version": "1.1", "b_role": "canary", "environment": "prod"}
    assert status == 200, page
    assert 'class="sides">A: <strong>1.0 baseline</strong> · B: <strong>1.1 canary' in page
    # A comparison that leaves the roles out shows the roles it resolved to, not defaults.
    status, page = running.get("/ui/diff?service=shop&a_version=1.0&b_version=1.1")
    assert status == 200
    selected, _ = form_choices(page)
    assert (selected["a_role"], selected["b_role"], selected["environment"]) == (
        ["baseline"], ["canary"], ["prod"])
    # A baseline of the canary's own version is the one compared with it, newer or not.
    same = Release("shop", "1.1", "prod", "baseline")
    statics = [static_of(running.source, rel) for rel in ("shop/__init__.py", "shop/cart.py")]
    running.store.ingest(Batch(static=[static_part(same, statics)], coverage=[CoveragePart(
        release=same, trace_id="ef" * 16, span_id="cd" * 8, endpoint="POST /cart",
        mode="exact", status_class="2xx", time_unix_nano=time.time_ns() - 10**10, part=0,
        parts=1, files=[])]))
    sent, status, _ = submit_offered_form(running, "shop")
    assert (sent["a_version"], sent["a_role"], sent["b_version"], sent["b_role"]) == (
        "1.1", "baseline", "1.1", "canary")
    assert status == 200
    # What was asked for stays selected when the page answers it.
    status, page = running.get("/ui/diff?service=shop&environment=prod&a_version=1.1"
                               "&a_role=baseline&b_version=1.0&b_role=baseline")
    assert status == 200
    selected, _ = form_choices(page)
    assert selected == {"a_version": ["1.1"], "a_role": ["baseline"], "b_version": ["1.0"],
                        "b_role": ["baseline"], "environment": ["prod"]}


def test_the_compare_form_without_a_canary_offers_the_two_most_recent_releases(
    tmp_path: Path,
) -> None:
    """No canary: A is the second most recent release and B the most recent, in the most
    recent one's environment (the form compares within one)."""
    root = copy_sample(tmp_path / "src")
    statics = [static_of(root, rel) for rel in ("shop/__init__.py", "shop/cart.py")]
    with running_collector(tmp_path, root) as running:
        now = time.time_ns()
        for n, release in enumerate((Release("plain", "1.0", "prod", "baseline"),
                                     Release("plain", "2.0", "staging", "shadow"),
                                     Release("plain", "3.0", "", "game-day"),
                                     Release("plain", "3.1", "staging", "baseline"))):
            running.store.ingest(Batch(static=[static_part(release, statics)], coverage=[
                CoveragePart(release=release, trace_id=f"{n:032x}", span_id="cd" * 8,
                             endpoint="POST /cart", mode="exact", status_class="2xx",
                             time_unix_nano=now - (4 - n) * 10**10, part=0, parts=1,
                             files=[])]))
        sent, status, page = submit_offered_form(running, "plain")
        assert sent == {"service": "plain", "a_version": "2.0", "a_role": "shadow",
                        "b_version": "3.1", "b_role": "baseline", "environment": "staging"}
        assert status == 200, page
        # One release in the most recent one's environment: it is compared with itself (no
        # differences) rather than with a release that does not exist.
        lone = Release("plain", "4.0", "", "baseline")
        running.store.ingest(Batch(static=[static_part(lone, statics)], coverage=[
            CoveragePart(release=lone, trace_id="ab" * 16, span_id="cd" * 8,
                         endpoint="POST /cart", mode="exact", status_class="2xx",
                         time_unix_nano=now, part=0, parts=1, files=[])]))
        sent, status, page = submit_offered_form(running, "plain")
        assert (sent["a_version"], sent["b_version"], sent["environment"]) == ("3.0", "4.0", "")
        assert status == 200, page


def _expand(part: str) -> list[int]:
    if "-" in part:
        a, b = part.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(part)]


def test_errors_and_auth(site: tuple[Running, dict]) -> None:
    running, _ = site
    assert running.get("/", token=None)[0] == 401
    basic = base64.b64encode(f"viewer:{TOKEN}".encode()).decode()
    import urllib.request

    req = urllib.request.Request(running.url + "/", headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(req) as response:
        assert response.status == 200
    assert running.get("/ui/service?service=nope")[0] == 404
    assert running.get("/ui/release")[0] == 400
    status, page = running.get("/ui/release?service=shop&since=whenever")
    assert status == 400 and "since" in page
    status, page = running.get("/ui/release?service=shop&sort=<x>")
    assert status == 400 and "<x>" not in page
    status, page = running.get("/ui/file?service=shop&path=../../etc/passwd")
    assert status in (400, 404) and "root:" not in page
    assert running.get("/ui/static/dashboard.js")[0] == 200


def test_an_unreadable_source_file_is_a_note_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError reading the source is the page's note: left to the page handler it would
    pass for the store being unavailable."""
    (tmp_path / "ok.py").write_text("x = 1\n")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert read_source(str(tmp_path), "ok.py") == (None, "cannot read the file: Permission denied")


def test_source_reading_cannot_leave_the_source_dir(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "ok.py").write_text("x = 1\n")
    secret = tmp_path / "secret.py"
    secret.write_text("password = 'hunter2'\n")
    (root / "pkg" / "link.py").symlink_to(secret)
    (root / "pkg" / "dirlink").symlink_to(tmp_path)
    assert read_source(str(root), "pkg/ok.py")[0] == "x = 1\n"
    for bad in ("../secret.py", "pkg/../../secret.py", str(secret), "pkg/link.py",
                "pkg/dirlink/secret.py", "", "pkg/ok.py\x00", "pkg\\ok.py", "."):
        text, why = read_source(str(root), bad)
        assert text is None, bad
        assert why
    assert read_source(None, "pkg/ok.py") == (None, "no source directory is configured")

    # Through the collector: a stored file whose local source is a symlink out of the tree.
    release = Release("leak", "1", "", "baseline")
    with running_collector(tmp_path, root) as running:
        running.store.ingest(Batch(
            coverage=[CoveragePart(release, os.urandom(16).hex(), os.urandom(8).hex(), "GET /",
                                   "exact", "2xx", time.time_ns(), 0, 1,
                                   [FileHits("pkg/link.py", "0" * 16, [1], [])])],
            static=[static_part(release, [FileStatic("pkg/link.py", "0" * 16, [1], [])])],
        ))
        status, page = running.get("/ui/file?service=leak&version=1&environment=&role=baseline"
                                   "&path=pkg/link.py")
    assert status == 200
    assert "hunter2" not in page and "path is outside the source directory" in page


def test_partial_lines_follow_possible_exits() -> None:
    ann = Annotation.from_detail({
        "lines": [[1, 3, "a" * 32], [2, 3, "b" * 32], [5, 1, ""]],
        "arcs": [[1, 2, 3, ""], [2, 5, 3, ""]],
        "executable_lines": [1, 2, 3, 5],
        "possible_arcs": [[1, 2], [2, 3], [2, 5], [3, 5], [5, -1]],
    })
    assert [ann.css(n) for n in range(1, 7)] == [
        "covered", "partial", "missed", "", "covered", ""
    ]
    assert ann.note(2) == "line 2 didn't jump to 3"


def test_annotation_numbers_lines_as_python_does() -> None:
    """Form feeds, U+2028 and the other characters str.splitlines() breaks at stay inside
    their line; only \n, \r\n and \r end one, as in Python's own line numbers."""
    source = (
        "def first():\n"
        "    return 1\n"
        "\x0c\n"
        "def second():\n"
        '    s = "a\u2028b\x0bc\x85d\x1c"\r\n'
        "    return s\r"
        "second()\n"
    )
    statements = {n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)}
    assert statements == {1, 2, 4, 5, 6, 7}
    ann = Annotation.from_detail({"lines": [[5, 1, "t"], [6, 1, "t"]],
                                  "executable_lines": sorted(statements)})
    lines = annotate(source, ann)
    assert [line.number for line in lines] == list(range(1, 8))
    assert lines[3].text == "def second():"
    assert lines[4].text == '    s = "a\u2028b\x0bc\x85d\x1c"' and lines[4].css == "covered"
    assert lines[5].text == "    return s" and lines[5].css == "covered"
    assert lines[6].text == "second()" and lines[6].css == "missed"
    assert lines[2].text == "\x0c" and lines[2].css == ""
    assert annotate("", ann) == [] and [x.text for x in annotate("a\n\nb", ann)] == ["a", "", "b"]


def test_ten_thousand_files_are_paged_and_filtered_server_side(tmp_path: Path) -> None:
    release = Release("big", "1", "prod", "baseline")
    paths = [f"pkg{i // 100:03d}/mod{i % 100:02d}.py" for i in range(10_000)]
    statics = [FileStatic(p, "0" * 16, list(range(1, 11)), []) for p in paths]
    hits = [FileHits(p, "0" * 16, list(range(1, 1 + i % 10)), []) for i, p in enumerate(paths)]
    with running_collector(tmp_path, None) as running:
        running.store.ingest(Batch(
            coverage=[CoveragePart(release, os.urandom(16).hex(), os.urandom(8).hex(),
                                   "GET /", "exact", "2xx", time.time_ns(), 0, 1, hits)],
            static=[static_part(release, statics)],
        ))
        base = "/ui/release?service=big&version=1&environment=prod&role=baseline"
        started = time.perf_counter()
        status, page = running.get(base)
        first_page = time.perf_counter() - started
        assert status == 200
        assert page.count('<tr data-path="') == 100
        assert "page 1 of 100" in page and "10000 files" in page
        status, page = running.get(base + "&q=pkg042/&sort=missed&order=desc&page=1")
        rows = re.findall(r'<tr data-path="([^"]+)">', page)
        assert len(rows) == 100 and all(r.startswith("pkg042/") for r in rows)
        missed = [int(fields(page, "data-path", r)["missed"]) for r in rows]
        assert missed == sorted(missed, reverse=True) and missed[0] == 10
        status, page = running.get(base + "&prefix=pkg007/&per_page=30&page=4")
        rows = re.findall(r'<tr data-path="([^"]+)">', page)
        assert rows == [f"pkg007/mod{i:02d}.py" for i in range(90, 100)]
        assert "page 4 of 4" in page
    print(f"\n10,000-file release page rendered in {first_page * 1000:.0f} ms")


def test_answer_cache_reuses_fresh_answers_only() -> None:
    now = [100.0]
    cache = AnswerCache(ttl=10.0, size=2, clock=lambda: now[0])
    calls: list[str] = []

    def compute(key: str) -> object:
        calls.append(key)
        return object()

    first = cache.get("a", lambda: compute("a"))
    assert cache.get("a", lambda: compute("a")) is first
    now[0] += 10.5  # expired
    assert cache.get("a", lambda: compute("a")) is not first
    cache.get("b", lambda: compute("b"))
    cache.get("c", lambda: compute("c"))  # evicts the least recently used ("a")
    cache.get("a", lambda: compute("a"))
    assert calls == ["a", "a", "b", "c", "a"]
    off = AnswerCache(ttl=0)
    assert off.get("x", lambda: 1) == 1 and off.get("x", lambda: 2) == 2


def test_release_page_follows_endpoint_and_window(site: tuple[Running, dict]) -> None:
    running, _ = site
    base = "service=shop&version=1.0&environment=prod&role=baseline"
    for extra in ("&endpoint=POST%20/cart", "&since=3h", "&since=5h&until=3h"):
        status, page = running.get("/ui/release?" + base + extra)
        assert status == 200
        api = running.api("/api/v1/coverage?" + base + extra)
        block = re.search(r'<dl class="totals" id="totals">(.*?)</dl>', page, re.S)
        assert block
        totals = dict(re.findall(r'data-field="([a-z_]+)">(.*?)</dd>', block.group(1)))
        assert totals["lines"] == f'{api["totals"]["lines_covered"]}/{api["totals"]["lines_total"]}'
        assert totals["requests"] == str(api["totals"]["requests"])
    # The two baseline requests were two hours apart: each window holds one of them.
    assert running.api("/api/v1/coverage?" + base + "&since=3h")["totals"]["requests"] == 1
    status, page = running.get("/ui/release?" + base + "&since=3h")
    all_time = "/ui/release?service=shop&version=1.0&environment=prod&role=baseline"
    assert f'href="{html.escape(all_time)}"' in page  # "all time" drops the window
    assert "<strong>since 3h</strong>" in page


def test_dashboard_accepts_every_time_the_api_accepts(site: tuple[Running, dict]) -> None:
    """Seconds, weeks and a lowercase ``z`` are API times: the page takes them too, with the
    API's numbers, and refuses what the API refuses."""
    running, _ = site
    base = "service=shop&version=1.0&environment=prod&role=baseline"
    three_hours_ago = time.strftime("%Y-%m-%dT%H:%M:%Sz", time.gmtime(time.time() - 3 * 3600))
    for extra in ("&since=10800s", "&since=1w", f"&since={three_hours_ago}", "&until=0w"):
        api = running.api("/api/v1/coverage?" + base + extra)
        status, page = running.get("/ui/release?" + base + extra)
        assert status == 200, extra
        block = re.search(r'<dl class="totals" id="totals">(.*?)</dl>', page, re.S)
        assert block
        totals = dict(re.findall(r'data-field="([a-z_]+)">(.*?)</dd>', block.group(1)))
        assert totals["requests"] == str(api["totals"]["requests"]), extra
    status, page = running.get("/ui/release?" + base + "&since=3y")
    assert status == 400 and "since=&#39;3y&#39; is neither ISO-8601" in page


def test_changed_local_source_is_flagged(site: tuple[Running, dict]) -> None:
    running, _ = site
    cart = running.source / "shop" / "cart.py"
    cart.write_text(cart.read_text() + "# edited after the release\n")
    status, page = running.get("/ui/file?service=shop&version=1.0&environment=prod"
                               "&role=baseline&path=shop/cart.py")
    assert status == 200
    assert 'id="sha-warning"' in page and "differs from the version production ran" in page


def test_release_page_shows_the_agent_metrics(site: tuple[Running, dict]) -> None:
    running, _ = site
    status, page = running.get("/ui/release?service=shop&version=1.1&role=canary")
    assert status == 200 and "No agent metrics received for this release." in page
    query = "service=shop&version=1.0&environment=prod&role=baseline"
    now = time.time_ns()
    release = Release("shop", "1.0", "prod", "baseline")

    def point(name: str, value: float, kind: str = "counter", **attrs: str) -> MetricPoint:
        attributes = {"runcov." + k: v for k, v in attrs.items()}
        return MetricPoint(release, "pod-1", name, attributes, value, now, now - 10**9, kind)

    running.store.ingest(Batch(metrics=[
        point("runcov.requests.seen", 40, endpoint="POST /cart"),
        point("runcov.requests.sampled", 4, endpoint="POST /cart", mode="exact"),
        point("runcov.requests.dropped", 3, endpoint="POST /cart", reason="rate_cap"),
        point("runcov.requests.dropped", 1, endpoint="", reason="census_unclaimed"),
        point("runcov.overhead", 0.01),
        point("runcov.sample_rate", 0.25, "gauge", endpoint="POST /cart"),
    ]))
    for extra in ("", "&since=1h"):  # the agents' totals whatever the window
        status, page = running.get("/ui/release?" + query + extra)
        assert status == 200
        api = running.api("/api/v1/agent?" + query)
        block = re.search(r'<dl class="totals" id="agent">(.*?)</dl>', page, re.S)
        assert block
        totals = dict(re.findall(r'data-field="([a-z_]+)">(.*?)</dd>', block.group(1)))
        assert totals["requests_seen"] == str(api["requests_seen"]) == "40"
        assert totals["requests_dropped"] == str(api["requests_dropped"]) == "4"
        assert totals["overhead_per_sampled"] == "2.500 ms"
        drops = re.findall(r'data-reason="([a-z_]+)">', page)
        assert drops == ["census_unclaimed", "rate_cap"]
        cells = fields(page, "data-agent-endpoint", "POST /cart")
        assert (cells["requests_sampled"], cells["sample_rate"]) == ("4", "0.25")
