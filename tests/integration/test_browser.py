"""The demo page in headless Chromium against a real `longdoc serve`: 50,000 words uploaded, shaded, explored.

Needs Debian's chromium and chromium-driver and PyPI's selenium (ci/ui-deps.sh installs them). Set
LONGDOC_SCREENSHOT=docs/demo.png to also write the README's screenshot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, TRAIN_DATA, require
from tests.integration.procs import free_port, longdoc_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "demo-key"
WORDS = 50_000


def articles(words: int) -> str:
    """Real news articles from the bundled data, joined until the text has `words` words.

    It starts at the first article with a character outside the BMP (an emoji): chunk offsets count code
    points and JavaScript counts UTF-16 units, so the page must convert them.
    """
    texts = [json.loads(line)["text"].strip() for line in TRAIN_DATA.read_text(encoding="utf-8").splitlines()]
    first = next(i for i, text in enumerate(texts) if any(ord(c) > 0xFFFF for c in text))
    parts, count = [], 0
    for text in texts[first:]:
        parts.append(text)
        count += len(text.split())
        if count >= words:
            break
    return "\n\n".join(parts)


def model_dir(tiny_model_dir: Path) -> Path:
    """The bundled model once it exists, else the tiny random one (the page does not care which)."""
    return DEFAULT_MODEL if (DEFAULT_MODEL / "config.json").is_file() else tiny_model_dir


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require(CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "chromium and chromium-driver are not installed")
    require(importlib.util.find_spec("selenium") is not None, "selenium is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_demo_page_explains_a_long_document(browser: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    text = articles(WORDS)
    assert any(ord(c) > 0xFFFF for c in text)  # offsets are code points, JavaScript counts UTF-16 units
    document = tmp_path / "long-article.txt"
    document.write_text(text, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with longdoc_serve(port, tmp_path / "serve.log", model_dir=model_dir(tiny_model_dir), api_key=API_KEY, stride=32):
        expected = httpx.post(
            f"{url}/classify", json={"text": text}, headers={"X-API-Key": API_KEY}, timeout=600
        ).json()
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 300)
        wait.until(lambda d: d.find_element(By.ID, "model-line").text.startswith("Model "))

        browser.find_element(By.ID, "file").send_keys(str(document))
        wait.until(lambda d: d.execute_script("return document.getElementById('text').value.length") > 0)
        assert browser.execute_script("return document.getElementById('text').value") == text

        browser.find_element(By.ID, "submit").click()  # no key yet: the page asks for it and focuses the field
        wait.until(lambda d: "API key" in d.find_element(By.ID, "error").text)
        assert browser.switch_to.active_element.get_attribute("id") == "api-key"
        browser.switch_to.active_element.send_keys(API_KEY, Keys.ENTER)  # Enter submits the form

        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results[data-state='done']")))
        assert browser.find_element(By.ID, "label").text == expected["label"]
        assert browser.find_element(By.ID, "score").text == f"{expected['score']:.3f}"
        assert f"{expected['num_chunks']:,} chunks" in browser.find_element(By.ID, "meta").text
        page: dict[str, Any] = browser.execute_script(
            """
            const doc = document.getElementById('doc');
            const spans = doc.querySelectorAll('span[data-seg]');
            return {
              spans: spans.length,
              shaded: doc.querySelectorAll('span[class^="s"]').length,
              overlaps: doc.querySelectorAll('span.ov').length,
              textLength: doc.textContent.length,
              renderMs: Number(document.body.dataset.renderMs),
              topChunks: document.querySelectorAll('#top-chunks button').length,
            };
            """
        )
        n = expected["num_chunks"]
        assert n > 100 and n <= page["spans"] <= 2 * n + 1  # cut at chunk boundaries, not per token
        assert page["shaded"] >= n and page["overlaps"] == n - 1  # served with stride 32: every neighbour pair overlaps
        assert page["textLength"] == len(text.encode("utf-16-le")) // 2  # the whole text, nothing lost
        assert page["renderMs"] < 5000 and page["topChunks"] == 5

        doc = browser.find_element(By.ID, "doc")
        doc.send_keys(Keys.HOME)
        assert browser.find_element(By.ID, "detail-body").text.startswith(f"Chunk 1 of {n:,}")
        doc.send_keys(Keys.ARROW_RIGHT)
        assert browser.find_element(By.ID, "detail-body").text.startswith(f"Chunk 2 of {n:,}")
        assert browser.execute_script("return document.querySelectorAll('#doc span.sel').length") >= 1
        browser.find_elements(By.CSS_SELECTOR, "#top-chunks button")[0].click()
        detail = browser.find_element(By.ID, "detail-body").text
        assert detail.startswith("Chunk ") and "Contribution" in detail
        browser.execute_script("document.getElementById('results').scrollIntoView()")
        screenshot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(screenshot))
        severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    # The only console error allowed is the deliberate 401 of the first, keyless submit.
    assert all("401" in entry["message"] for entry in severe), severe
    assert screenshot.stat().st_size > 20_000
    target = os.environ.get("LONGDOC_SCREENSHOT")
    if target:
        shutil.copy(screenshot, target)
