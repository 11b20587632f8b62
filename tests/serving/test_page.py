"""The page at `/`, in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against the
real `bentoml serve`: a real photo goes in through the file chooser, the service's label and a heatmap come out,
the card's summary shows; errors (not an image, too large) show as messages on the page. Screenshots are kept in
.cache/screenshots/ (PAGE_SCREENSHOTS overrides)."""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest
from helpers import ROOT, running_server
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.slow
MAX_BYTES = 2_000_000
SCREENSHOTS = Path(os.environ.get("PAGE_SCREENSHOTS", ROOT / ".cache" / "screenshots"))


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with running_server({"SERVING_ARTIFACTS_ROOT": str(artifact.parent.parent),
                         "SERVING_MODEL_NAME": artifact.parent.name, "SERVING_MAX_REQUEST_BYTES": str(MAX_BYTES)},
                        tmp_path_factory.mktemp("serve-page") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the page test needs Debian's chromium and chromium-driver (.ci/setup installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield chrome
    chrome.quit()


def open_page(browser, url: str) -> None:
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "card-version").text)


def choose_file(browser, path: Path) -> None:
    browser.find_element(By.ID, "file").send_keys(str(path))


def shown(browser, element_id: str) -> bool:
    return browser.find_element(By.ID, element_id).is_displayed()


def test_a_photo_gets_its_label_and_heatmap(server, browser, data_dir, artifact):
    photo = sorted((data_dir / "val" / "bees").glob("*.jpg"))[0]
    expected = httpx.post(server.url + "/predict", files={"image": photo.open("rb")}, timeout=60).json()
    open_page(browser, server.url)
    assert browser.find_element(By.ID, "card-version").text == f"version: {expected['version']}"
    assert "ants, bees" in browser.find_element(By.ID, "card-classes").text
    assert "test accuracy" in browser.find_element(By.ID, "card-test-accuracy").text
    choose_file(browser, photo)
    WebDriverWait(browser, 60).until(lambda b: shown(b, "result") or shown(b, "error"))
    assert not shown(browser, "error"), browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "result-label").text == expected["label"]
    heatmap = browser.find_element(By.ID, "heatmap")
    source = heatmap.get_attribute("src")
    assert source.startswith("data:image/png;base64,") and len(base64.b64decode(source.split(",", 1)[1])) > 1000
    WebDriverWait(browser, 10).until(lambda b: b.execute_script(
        "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0"))
    classes = browser.find_elements(By.CSS_SELECTOR, "#classes li")
    assert [li.get_attribute("data-label") for li in classes] == [t["label"] for t in expected["top_k"]]
    other = classes[1]
    other.click()  # the other class's heatmap
    assert heatmap.get_attribute("src") != source and other.get_attribute("data-label") in \
        browser.find_element(By.ID, "heatmap-caption").text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "page-explained.png"))
    assert browser.get_log("browser") == [], "the page logged errors (a CSP violation, a script error)"


def test_occlusion_heatmaps_are_one_choice_away(server, browser, data_dir):
    """The method menu explains the same photo again by occlusion: a new heatmap, captioned with its method."""
    photo = sorted((data_dir / "val" / "ants").glob("*.jpg"))[1]
    open_page(browser, server.url)
    choose_file(browser, photo)
    WebDriverWait(browser, 60).until(lambda b: shown(b, "result") or shown(b, "error"))
    assert "by Grad-CAM" in browser.find_element(By.ID, "heatmap-caption").text
    cam = browser.find_element(By.ID, "heatmap").get_attribute("src")
    Select(browser.find_element(By.ID, "method")).select_by_value("occlusion")
    WebDriverWait(browser, 60).until(lambda b: "by occlusion" in b.find_element(By.ID, "heatmap-caption").text
                                     or shown(b, "error"))
    assert not shown(browser, "error"), browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "heatmap").get_attribute("src") != cam
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "page-occlusion.png"))
    assert browser.get_log("browser") == []


@pytest.mark.parametrize("case", ["not_an_image", "too_large"])
def test_errors_show_on_the_page(server, browser, tmp_path, case):
    if case == "not_an_image":
        bad = tmp_path / "notes.jpg"
        bad.write_bytes(b"this is not a photo")
        expected = "not an image"
    else:
        bad = tmp_path / "huge.png"
        bad.write_bytes(os.urandom(MAX_BYTES + 1000))
        expected = "exceeds the limit"
    open_page(browser, server.url)
    choose_file(browser, bad)
    WebDriverWait(browser, 60).until(lambda b: shown(b, "error"))
    message = browser.find_element(By.ID, "error").text
    assert bad.name in message and expected in message.lower(), message
    assert not shown(browser, "result")
    assert browser.save_screenshot(str(SCREENSHOTS / f"page-{case}.png"))
