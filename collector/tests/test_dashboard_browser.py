"""The dashboard in a real headless Chromium: pages, numbers, line classes, sorting, diff."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector.tests.dashboard import (
    TOKEN,
    Running,
    copy_sample,
    populate,
    running_collector,
    static_part,
    truth,
)

from runcov_collector.model import Batch, CoveragePart, FileHits, FileStatic, Release

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium driven by Selenium, sending the dashboard's Basic credentials."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (f"BROWSER TESTS NOT RUN: {', '.join(missing)} missing "
                   "(apt-get install -y chromium chromium-driver)")
        if os.environ.get("CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        credentials = base64.b64encode(f"viewer:{TOKEN}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": f"Basic {credentials}"}})
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    root = copy_sample(tmp / "src")
    scratch = tmp / "data"
    scratch.mkdir()
    with running_collector(tmp, root) as running:
        yield running, populate(running, root, scratch)


def shot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def cells(row: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {c.get_attribute("data-field"): c.text
            for c in row.find_elements(By.CSS_SELECTOR, "[data-field]")}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def test_services_to_releases(browser: Any, site: tuple[Running, dict]) -> None:
    from selenium.webdriver.common.by import By

    running, _ = site
    browser.get(running.url + "/")
    assert browser.title == "Services · runcov"
    row = browser.find_element(By.CSS_SELECTOR, '#services tr[data-service="shop"]')
    assert cells(row)["releases"] == "2"
    row.find_element(By.LINK_TEXT, "shop").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "shop"
    api = running.api("/api/v1/releases?service=shop")["releases"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#releases tr.release")
    assert len(rows) == len(api)
    for r in api:
        row = browser.find_element(
            By.CSS_SELECTOR, f'#releases tr[data-version="{r["version"]}"][data-role="{r["role"]}"]'
        )
        shown = cells(row)
        assert shown["line_percent"] == pct(r["line_percent"])
        assert shown["branch_percent"] == pct(r["branch_percent"])
        assert shown["lines"] == f'{r["lines_covered"]}/{r["lines_total"]}'
        assert shown["requests"] == str(r["requests"])
        spark = row.find_element(By.CSS_SELECTOR, "svg.sparkline polyline")
        assert len(spark.get_attribute("points").split()) >= 2
    shot(browser, "dashboard-releases")


def test_release_files_sort_and_filter(browser: Any, site: tuple[Running, dict]) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    running, _ = site
    query = "service=shop&version=1.0&environment=prod&role=baseline"
    browser.get(f"{running.url}/ui/release?{query}")
    api = running.api("/api/v1/coverage?" + query)
    totals = cells(browser.find_element(By.ID, "totals"))
    assert totals["line_percent"] == pct(api["totals"]["line_percent"])
    assert totals["branches"] == (
        f'{api["totals"]["branches_covered"]}/{api["totals"]["branches_total"]}'
    )
    for f in api["files"]:
        row = browser.find_element(By.CSS_SELECTOR, f'#files tr[data-path="{f["path"]}"]')
        assert cells(row)["line_percent"] == pct(f["line_percent"])
        assert cells(row)["lines"] == f'{f["lines_covered"]}/{f["lines_total"]}'
    endpoint = browser.find_element(
        By.CSS_SELECTOR, '#endpoints tr[data-endpoint="GET /cart/<empty>"]'
    )
    assert endpoint.text.startswith("GET /cart/<empty>")

    # Sorting is a server round trip through the header link.
    browser.find_element(By.LINK_TEXT, "Missed").click()
    browser.find_element(By.LINK_TEXT, "Missed").click()
    assert "order=desc" in browser.current_url
    missed = [int(cells(r)["missed"]) for r in
              browser.find_elements(By.CSS_SELECTOR, "#files tbody tr")]
    assert missed == sorted(missed, reverse=True)
    shot(browser, "dashboard-release")

    # Typing in the filter box submits the server-side filter after a pause (dashboard.js).
    # The whole word arrives as one input event, so a slow machine cannot submit half of it.
    box = browser.find_element(By.ID, "file-q")
    browser.execute_script(
        "arguments[0].value = 'cart';"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", box
    )
    WebDriverWait(browser, 30).until(ec.url_contains("q=cart"))
    WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.ID, "file-count").text == "1 file"
    )
    paths = [r.get_attribute("data-path") for r in
             browser.find_elements(By.CSS_SELECTOR, "#files tbody tr")]
    assert paths == ["shop/cart.py"]


def test_annotated_source(browser: Any, site: tuple[Running, dict]) -> None:
    from selenium.webdriver.common.by import By

    running, oracles = site
    browser.get(f"{running.url}/ui/release?service=shop&version=1.0&environment=prod"
                "&role=baseline")
    browser.find_element(By.LINK_TEXT, "shop/cart.py").click()
    classes = browser.execute_script(
        "return Array.from(document.querySelectorAll('#source tr'))"
        ".map(r => [parseInt(r.id.slice(1)), r.className]);"
    )
    want = truth(running.source, oracles["baseline"], "shop/cart.py")
    got = {cls: {n for n, c in classes if c == cls} for cls in ("covered", "missed", "partial")}
    assert got == {"covered": want.covered, "missed": want.missed, "partial": want.partial}
    # The classes are styled differently.
    colors = {
        cls: browser.find_element(By.CSS_SELECTOR, f"#source tr.{cls} td.code")
        .value_of_css_property("background-color")
        for cls in ("covered", "missed", "partial")
    }
    assert len(set(colors.values())) == 3
    # First trace per line links to the tracing UI.
    detail = running.api("/api/v1/file?service=shop&version=1.0&environment=prod"
                         "&role=baseline&path=shop/cart.py")
    line, _, trace = sorted(detail["lines"])[1]
    link = browser.find_element(By.CSS_SELECTOR, f"#L{line} a.trace-link")
    assert link.get_attribute("href") == f"https://tracing.example/trace/{trace}"
    assert link.text == trace[:8]
    # Source text is shown as text, never as markup.
    assert "<b>not html</b>" in browser.find_element(By.ID, "source").text
    assert browser.find_elements(By.CSS_SELECTOR, "#source b") == []
    # "next missed line" walks the missed and partial lines in order.
    button = browser.find_element(By.ID, "next-missed")
    button.click()
    first = min(want.missed | want.partial)
    assert browser.current_url.endswith(f"#L{first}")
    shot(browser, "dashboard-file")


def test_diff_view(browser: Any, site: tuple[Running, dict]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    running, _ = site
    browser.get(running.url + "/ui/service?service=shop")
    browser.find_element(By.ID, "compare-link").click()
    Select(browser.find_element(By.ID, "a-version")).select_by_value("1.0")
    Select(browser.find_element(By.ID, "a-role")).select_by_value("baseline")
    Select(browser.find_element(By.ID, "b-version")).select_by_value("1.1")
    Select(browser.find_element(By.ID, "b-role")).select_by_value("canary")
    Select(browser.find_element(By.ID, "diff-environment")).select_by_value("prod")
    browser.find_element(By.ID, "diff-submit").click()
    # The form is a GET to /ui/diff: the page with the result replaces this one.
    WebDriverWait(browser, 30).until(ec.url_contains("b_role=canary"))
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "diff-files")))
    api = running.api("/api/v1/diff?service=shop&environment=prod&a_version=1.0"
                      "&a_role=baseline&b_version=1.1&b_role=canary")
    changed = [f for f in api["files"] if f["newly_covered_lines"]
               or f["no_longer_covered_lines"] or f["newly_covered_arcs"]
               or f["no_longer_covered_arcs"]]
    rows = browser.find_elements(By.CSS_SELECTOR, "#diff-files tbody tr")
    assert [r.get_attribute("data-path") for r in rows] == sorted(f["path"] for f in changed)
    cart = next(f for f in changed if f["path"] == "shop/cart.py")
    row = browser.find_element(By.CSS_SELECTOR, '#diff-files tr[data-path="shop/cart.py"]')
    shown = cells(row)
    expanded = []
    for part in filter(None, shown["newly_covered_lines"].split(", ")):
        a, _, b = part.partition("-")
        expanded.extend(range(int(a), int(b or a) + 1))
    assert expanded == sorted(cart["newly_covered_lines"])
    only = browser.find_element(By.ID, "diff-endpoints").text
    assert "GET /cart/<empty> — only in A" in only
    shot(browser, "dashboard-diff")



def test_many_files_are_paged(browser: Any, site: tuple[Running, dict]) -> None:
    from selenium.webdriver.common.by import By

    running, _ = site
    release = Release("many", "7", "prod", "baseline")
    paths = [f"app/m{i:04d}.py" for i in range(250)]
    running.store.ingest(Batch(
        coverage=[CoveragePart(release, os.urandom(16).hex(), os.urandom(8).hex(), "GET /",
                               "exact", "2xx", time.time_ns(), 0, 1,
                               [FileHits(p, "0" * 16, [1], []) for p in paths])],
        static=[static_part(release, [FileStatic(p, "0" * 16, [1, 2], []) for p in paths])],
    ))
    browser.get(running.url + "/ui/release?service=many&version=7&environment=prod"
                "&role=baseline")
    assert browser.find_element(By.ID, "file-count").text == "250 files"
    assert "page 1 of 3" in browser.find_element(By.ID, "pager").text
    browser.find_element(By.CSS_SELECTOR, "#pager a[rel=next]").click()
    rows = [r.get_attribute("data-path")
            for r in browser.find_elements(By.CSS_SELECTOR, "#files tbody tr")]
    assert rows == paths[100:200]
    assert "page 2 of 3" in browser.find_element(By.ID, "pager").text
    shot(browser, "dashboard-paged")
