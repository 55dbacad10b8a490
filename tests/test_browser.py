"""Real-browser test of the slice viewer: JupyterLab on localhost, headless Chromium driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and the
``selenium`` Python package; no browser is downloaded. Missing pieces skip the test locally and FAIL it in CI
(``CI=true``). With ``XLSTM_UNET_UPDATE_SCREENSHOTS=1`` the viewer's screenshot is saved to
``figures/screenshots/viewer.png``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from xlstm_unet.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "viewer_demo.ipynb"
SCREENSHOT = REPO_ROOT / "figures" / "screenshots" / "viewer.png"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
    "--window-size=1500,1100",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _need(what: str) -> None:
    msg = f"browser test needs {what} (Debian: apt-get install -y chromium chromium-driver; pip install selenium)"
    if _in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab serving a copy of the viewer notebook; yields (base URL, token)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "settings"
    # no news / update pop-ups over the notebook
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "MPLBACKEND": "Agg"}
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait(fn, timeout: float, what: str, driver=None):  # noqa: ANN001, ANN202 - small local helper
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        val = fn()
        if val:
            return val
        time.sleep(0.5)
    page = driver.find_element("tag name", "body").text[-2000:] if driver is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page text:\n{page}")


def _viewer_state(driver) -> dict:  # noqa: ANN001
    """The viewer's title text and the src of its rendered image."""
    return driver.execute_script(
        """
        const img = document.querySelector('.jp-OutputArea-output img.widget-image');
        const html = [...document.querySelectorAll('.widget-html-content')].map(e => e.innerText)
            .find(t => t.includes('Dice')) || '';
        return {title: html, src: img ? img.src : '', width: img ? img.naturalWidth : 0};
        """
    )


@pytest.mark.slow
def test_viewer_in_jupyterlab(lab: tuple[str, str], tmp_path: Path) -> None:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        _need("chromium and chromedriver on PATH")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
    except ImportError:
        _need("the selenium package")
    from PIL import Image

    base, token = lab
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    try:
        driver.set_script_timeout(60)
        driver.get(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
        _wait(lambda: driver.execute_script(
            "const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.status === 'idle');"), 90, "the notebook's kernel", driver)
        driver.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells');")
        state = _wait(lambda: (lambda s: s if s["width"] > 100 and "slice" in s["title"] else None)(
            _viewer_state(driver)), 120, "the viewer widget", driver)
        first_title, first_src = state["title"], state["src"]

        # move the slice slider: drag its handle a few slices down (the demo's structures stay in view)
        slider = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".widget-slider")
                      if "slice" in e.text)
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        track = slider.find_element(By.CSS_SELECTOR, ".noUi-target")
        ActionChains(driver).click_and_hold(handle).move_by_offset(-track.size["width"] // 10, 0).release().perform()
        moved = _wait(lambda: (lambda s: s if s["title"] != first_title and s["src"] != first_src else None)(
            _viewer_state(driver)), 60, "the viewer to re-render after moving the slider", driver)
        assert "slice" in moved["title"] and moved["title"].split("slice")[1] != first_title.split("slice")[1]

        viewer = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox")
        driver.execute_script("arguments[0].scrollIntoView();", viewer)
        png = viewer.screenshot_as_png
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()

    shot = Image.open(io.BytesIO(png)).convert("RGB")
    arr = np.asarray(shot, dtype=float)
    assert shot.width > 300 and shot.height > 150, f"viewer screenshot too small: {shot.size}"
    assert arr.std() > 20, f"viewer screenshot looks blank (pixel std {arr.std():.1f})"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50
    if os.environ.get("XLSTM_UNET_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        small = shot.copy()
        small.thumbnail((1000, 1000))
        small.quantize(colors=128).save(SCREENSHOT, optimize=True)
