"""Debian's headless Chromium, driven through its own chromedriver (apt: chromium, chromium-driver).

Both paths are given: selenium's manager, which would look for (and download) a browser or a
driver, is never asked. The flags keep Chromium from opening connections of its own (updates,
sync, field trials), which this machine's closed network would refuse, and from the GPU and the
sandbox, which a container lacks. Each browser gets a new empty profile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A WebDriver of a new headless Chromium whose profile is the new folder `profile`, keeping
    the browser's console log (read with `console`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER,
                                                               log_output=str(profile.parent / "chromedriver.log")))
    try:
        yield driver
    finally:
        driver.quit()


def console(driver: Any) -> list[dict[str, Any]]:
    """The browser's console entries since the last call ({"level", "message", ...})."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return entries


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """The whole page (the window stretched to its height) as a PNG at `path`."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(int(height) + 40, 600))
    driver.save_screenshot(str(path))
    return path
