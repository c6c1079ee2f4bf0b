"""A real headless Chromium for tests that look at pages as a person would: Debian's
``chromium`` and ``chromium-driver`` (``make setup`` installs both), driven by Selenium.

Selenium is given both binaries, so it never runs Selenium Manager (which would try to
download a browser). Chromium's sandbox needs user namespaces it does not get as root, so
as root the sandbox is turned off; as any other user it stays on.

    with headless_chromium() as browser:
        browser.get(Path("report.html").as_uri())
        screenshot(browser, tmp_path / "report.png")
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: `make setup` installs chromium and "
                           "chromium-driver (Debian packages)")  # fmt: skip
    return path


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a ``width`` x ``height`` window, quit when the block ends."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary(CHROMIUM)
    for argument in ("--headless=new", f"--window-size={width},{height}",
                     "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    browser = webdriver.Chrome(options=options, service=Service(_binary(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(browser: webdriver.Chrome, css: str, timeout_s: float = 30) -> None:
    """Until an element matching ``css`` is visible (pages that render with JavaScript,
    such as MLflow's UI); raises TimeoutException after ``timeout_s``."""
    WebDriverWait(browser, timeout_s).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def screenshot(browser: webdriver.Chrome, path: str | Path, full_page: bool = True) -> Path:
    """A PNG of the page at ``path``: the whole page (the window grown to its height) when
    ``full_page``, else the window."""
    if full_page:
        width, height = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        browser.set_window_size(max(width, browser.get_window_size()["width"]), height)
    path = Path(path)
    if not browser.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not write the screenshot {path}")
    return path
