"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium, for the control panel's browser tests.

The driver is Debian's ``/usr/bin/chromedriver``, passed explicitly, so
Selenium Manager never runs (nothing is downloaded).  Screenshots go to
``$VHDKIT_SCREENSHOTS`` (default ``build/screenshots`` in the checkout).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_api import ROOT

SCREENSHOTS = Path(os.environ.get("VHDKIT_SCREENSHOTS") or ROOT / "build" / "screenshots")
WAIT = 30.0


def browser_paths():
    """(chromium, chromedriver) from Debian's packages; fails (never skips) when absent."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not os.path.exists(driver):
        pytest.fail("headless browser tests need Debian's chromium and chromium-driver; run scripts/setup")
    return chromium, driver


def versions() -> dict:
    chromium, driver = browser_paths()
    out = {}
    for name, exe in (("chromium", chromium), ("chromedriver", driver)):
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        out[name] = p.stdout.strip()
    return out


def make_driver(tmp: Path, width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={tmp / 'profile'}",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp / "downloads")})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver, log_output=str(tmp / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=opts)


def screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def start_worker(data: Path, log: Path, env: dict) -> subprocess.Popen:
    """A ``vhdkit worker`` on the server's data directory, polling often."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    full.pop("VHDKIT_STORE", None)
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "vhdkit", "worker", "--data", str(data), "--poll", "0.2"],
                                cwd=ROOT, env=full, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
