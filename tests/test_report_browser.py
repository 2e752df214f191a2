"""The HTML report in a real browser: headless Chromium driven by Selenium loads a report of a tiny run, and a
slider, the keyboard, the window presets and the HU readout are used as a person would.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and ``selenium`` (the ``dev``
extra); without them the test is skipped and says which one is missing.
"""

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from prdit.io import load_volume
from prdit.report import write_report

WINDOW = (1400, 1000)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}")


def find_browser() -> tuple[str, str]:
    selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
    del selenium
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.skip(f"no {missing} on PATH: apt-get install chromium chromium-driver (.ci/run does this)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="prdit-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def canvas_pixels(driver, canvas) -> str:
    return driver.execute_script("return arguments[0].toDataURL('image/png');", canvas)


def test_report_in_a_real_browser(browser, tiny_run, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    report = write_report(tiny_run["samples"], tmp_path / "report.html", real=tiny_run["data"])
    browser.get(report.resolve().as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors

    generated, real = browser.find_elements(By.CSS_SELECTOR, ".viewer")
    axial = generated.find_element(By.CSS_SELECTOR, '.pane[data-plane="axial"]')
    canvas, slider = axial.find_element(By.TAG_NAME, "canvas"), axial.find_element(By.TAG_NAME, "input")
    position = axial.find_element(By.CLASS_NAME, "position")
    assert position.text.startswith("z = 16 (0–31)")  # the central slice of a 32^3 volume

    # the slider, moved with the keyboard as a person would, shows another slice (and the real row follows)
    before = canvas_pixels(browser, canvas)
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert position.text.startswith("z = 19 (0–31)")
    assert canvas_pixels(browser, canvas) != before
    real_slider = real.find_element(By.CSS_SELECTOR, '.pane[data-plane="axial"] input')
    assert real_slider.get_attribute("value") == slider.get_attribute("value") == "19"

    # arrow keys step the plane under the pointer
    coronal = generated.find_element(By.CSS_SELECTOR, '.pane[data-plane="coronal"]')
    ActionChains(browser).move_to_element(coronal.find_element(By.TAG_NAME, "canvas")).perform()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    assert coronal.find_element(By.CLASS_NAME, "position").text.startswith("y = 15 (0–31)")

    # the HU under the cursor is the volume's own value at the voxel it names
    ActionChains(browser).move_to_element_with_offset(canvas, 17, -23).perform()
    readout = generated.find_element(By.CLASS_NAME, "readout").text
    match = re.fullmatch(r"(-?\d+) HU at voxel \(z (\d+), y (\d+), x (\d+)\)", readout)
    assert match, readout
    value, z, y, x = (int(g) for g in match.groups())
    volume = np.rint(load_volume(tiny_run["samples"] / "sample_000000.nii.gz").array)
    assert z == 19 and value == volume[z, y, x]

    # a window preset re-renders the slice with other grey levels
    before = canvas_pixels(browser, canvas)
    browser.find_element(By.CSS_SELECTOR, '.window-preset[data-window="bone"]').click()
    assert "selected" in browser.find_element(By.CSS_SELECTOR, '.window-preset[data-window="bone"]').get_attribute("class")
    assert canvas_pixels(browser, canvas) != before
    assert "level 400 HU, width 1800 HU" in browser.find_element(By.ID, "window-values").text

    # the metrics table is there, in words
    table = browser.find_element(By.CSS_SELECTOR, "table.metrics").text
    assert "HU histogram distance (Wasserstein-1)" in table and "Lung fraction" in table

    shot = tmp_path / "report.png"
    browser.find_element(By.CSS_SELECTOR, '.window-preset[data-window="lung"]').click()
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot))
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    viewport = browser.execute_script("return [window.innerHeight, window.innerWidth]")
    assert image.shape == tuple(viewport) and image.shape[1] == WINDOW[0]
    assert image.std() > 20  # not blank: dark page, light text and CT slices
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    keep = Path(tempfile.gettempdir()) / "prdit-report-browser-test.png"  # for a person to look at
    shutil.copyfile(shot, keep)
