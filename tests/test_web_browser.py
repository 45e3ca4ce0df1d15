"""The pages in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromedriver (scripts/test.sh installs both; no browser is downloaded). Also: no
secret of the sink URL reaches any output."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli
from web_helpers import SCRIPT, SCRIPT_ID, Server, WebArchive, get, make_archive, serving

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = ROOT / "docs" / "web-result.png"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebArchive:
    return make_archive(tmp_path_factory.mktemp("webb"))


@pytest.fixture(scope="module")
def server(web: WebArchive) -> Iterator[Server]:
    with serving("--sink", str(web.sink)) as s:
        yield s


def _driver(javascript: bool = True) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail(f"{CHROMIUM} or {DRIVER} is missing: `bash scripts/test.sh` installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    d = _driver()
    yield d
    d.quit()


def _ink(png: Path, box: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """(distinct colours, dark pixels) of a screenshot or of a box in it."""
    from PIL import Image

    img = Image.open(png).convert("L")
    if box:
        img = img.crop(box)
    pixels = img.tobytes()
    return len(set(pixels)), sum(1 for p in pixels if p < 110)


def test_search_open_the_page_follow_the_run_link(web: WebArchive, server: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.base + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys(web.failure_id)
    box.submit()
    WebDriverWait(browser, 10).until(ec.url_contains(f"/results/{web.failure_id}"))
    heading = browser.find_element(By.ID, "heading").text
    assert web.failure_id in heading and "FAILURE" in heading and "reports.monthly" in heading
    value = browser.find_element(By.CSS_SELECTOR, "#field-result pre")
    assert "card declined for order-7" in value.text
    assert value.is_displayed()
    rect = value.rect
    assert rect["width"] > 100 and rect["height"] > 10 and rect["y"] + rect["height"] < 900  # in view, no scrolling
    button = browser.find_element(By.CSS_SELECTOR, "button.copy")
    assert button.is_displayed()  # the package's own copy.js ran
    button.click()
    WebDriverWait(browser, 5).until(lambda d: button.text == "Copied")

    shot = SCREENSHOT if os.environ.get("CELERY_ARCHIVE_UPDATE_DOCS") == "1" else tmp_path / "web-result.png"
    shot.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(shot))
    colours, dark = _ink(shot)
    assert colours > 20 and dark > 2000  # not blank: text and rules drawn
    x, y, w, h = (int(rect[k]) for k in ("x", "y", "width", "height"))
    colours, dark = _ink(shot, (x, y, x + w, y + h))  # where the DOM says the value is, the screenshot has text
    assert colours > 5 and dark > 100
    margin = _ink(shot, (0, y, 15, y + h))  # the page's left margin beside it: nothing drawn
    assert margin[1] == 0

    browser.find_element(By.CSS_SELECTOR, "a.run-link").click()
    WebDriverWait(browser, 10).until(ec.url_contains("/runs/"))
    run_id = browser.current_url.rsplit("/", 1)[1]
    assert run_id in browser.find_element(By.TAG_NAME, "h1").text and "purged" in browser.find_element(By.TAG_NAME, "h1").text


def test_markup_in_a_result_shows_as_text(server: Server, browser: Any) -> None:
    from urllib.parse import quote

    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser.get(f"{server.base}/results/{quote(SCRIPT_ID, safe='')}")
    assert SCRIPT in browser.find_element(By.CSS_SELECTOR, "#field-result pre").text
    assert SCRIPT_ID in browser.find_element(By.ID, "heading").text
    assert browser.title != "owned" and not browser.find_elements(By.CSS_SELECTOR, "main script, main img, main b")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_the_pages_work_without_javascript(web: WebArchive, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = _driver(javascript=False)
    try:
        d.get(server.base + "/")
        box = d.find_element(By.ID, "q")
        box.send_keys("demo-0005")
        box.submit()  # a plain form GET: wait for the page it loads (submit() may return before it)
        WebDriverWait(d, 10).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#matches a"))
        links = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#matches a")]
        assert links == [f"demo-0005{i}" for i in range(10)]
        d.find_element(By.LINK_TEXT, "demo-00051").click()
        assert "demo-00051" in d.find_element(By.ID, "heading").text
        assert not d.find_element(By.CSS_SELECTOR, "button.copy").is_displayed()  # no script: no button
        assert "celery-archive restore demo-00051" in d.find_element(By.CSS_SELECTOR, "pre.copy-source").text
    finally:
        d.quit()


def test_the_readme_screenshot_is_one_the_tests_made() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/web-result.png" in readme and SCREENSHOT.exists()
    colours, dark = _ink(SCREENSHOT)
    assert colours > 20 and dark > 2000


SECRET, KEY = "webS3cr3tValue0123456789", "AKIAWEBTESTKEY01"


def test_no_secret_of_the_sink_url_is_ever_shown(web: WebArchive, s3_endpoint: str, tmp_path: Path) -> None:
    """`s3://KEY:SECRET@bucket/...` (which open_sink takes as it is for now) and a file:// URL
    with a password: the command's output never holds them; and pages over an archive opened
    from such a URL show it without them, errors included."""
    for url in (f"s3://{KEY}:{SECRET}@bucket/prefix", f"file://user:{SECRET}@localhost{web.sink}"):
        for extra in ([], ["--json"]):
            out = cli("serve", "--sink", url, "--port", "0", "--check", *extra)
            assert out.returncode != 0
            assert SECRET not in out.stdout + out.stderr and KEY not in out.stdout + out.stderr
            assert "***" in out.stdout + out.stderr or "bucket" in out.stdout + out.stderr

    from celery_archive.sinks import open_sink
    from celery_archive.web.app import create_app
    from celery_archive.web.archive import Archive

    copy = tmp_path / "archive"
    shutil.copytree(web.sink, copy)
    archive = Archive(open_sink(str(copy)), f"s3://{KEY}:{SECRET}@bucket/prefix")
    import uvicorn

    from celery_archive.web.command import _bind

    sock = _bind("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    import threading

    server = uvicorn.Server(uvicorn.Config(create_app(archive), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        import time

        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        runs = get(base + "/api/runs").json()
        assert isinstance(runs, dict)
        paths = ["/", "/runs", "/audit", "/healthz", "/api/runs", "/?q=nothing", "/results/nothing", "/api/results/nothing",
                 *(f"/runs/{r['run_id']}" for r in runs["runs"]), *(f"/results/{t}" for t in web.task_ids[:20])]
        shutil.rmtree(copy / "data")  # committed data files gone: the error pages name the archive too
        seen = []
        for path in paths:
            a = get(base + path)
            assert SECRET not in a.body and KEY not in a.body, path
            seen.append(a)
        assert any(a.status == 500 and "s3://bucket/prefix" in a.body for a in seen)  # the error names the place
        assert all("s3://bucket/prefix" in a.body for a in seen if a.headers["content-type"].startswith("text/html"))
    finally:
        server.should_exit = True
        thread.join(timeout=10)

