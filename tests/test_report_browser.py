"""The HTML report in a real browser: headless Chromium driven by Selenium loads a report of a tiny run, and a
slider, the keyboard, the window presets, the HU readout and the label contours are used as a person would.

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
from tests.report_factory import conditional_samples, cube_mask

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


def test_label_contours_legend_and_toggle_in_a_real_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from prdit.report.labels import FACE_BITS, contour_faces

    mask = cube_mask(16, (2, 14), (4, 9))  # the inner cube off-centre: a flipped plane would show
    samples, _ = conditional_samples(tmp_path, mask, {"body": 1, "heart": 2})
    report = write_report(samples, tmp_path / "report.html")
    browser.get(report.resolve().as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]

    viewer = browser.find_element(By.CSS_SELECTOR, ".viewer")
    legend = viewer.find_element(By.CLASS_NAME, "legend")
    assert legend.is_displayed()
    assert [i.get_attribute("data-label") for i in legend.find_elements(By.CLASS_NAME, "legend-item")] == ["body", "heart"]
    assert "body (1)" in legend.text and "heart (2)" in legend.text and "m.nii.gz" in legend.text

    # in every plane, each cell's painted sides are exactly the faces its voxel shares with another label
    edges = contour_faces(mask)

    def sides(faces, top, bottom, left, right):
        bits = [(faces & FACE_BITS[face]) != 0 for face in (top, bottom, left, right)]
        return sum(bit.astype(int) << i for i, bit in enumerate(bits))

    expected_at = {  # display rows and columns of the slice through voxel 8 (coronal, sagittal: superior at the top)
        "axial": lambda z: sides(edges[z], (1, -1), (1, 1), (2, -1), (2, 1)),
        "coronal": lambda y: sides(edges[::-1, y, :], (0, 1), (0, -1), (2, -1), (2, 1)),
        "sagittal": lambda x: sides(edges[::-1, :, x], (0, 1), (0, -1), (1, -1), (1, 1)),
    }
    for plane, expected in expected_at.items():
        layer = viewer.find_element(By.CSS_SELECTOR, f'.pane[data-plane="{plane}"] canvas.contours')
        assert layer.is_displayed()
        painted = np.array(browser.execute_script(PAINTED_SIDES, layer, 16, 16))
        assert painted.any()
        np.testing.assert_array_equal(painted, expected(8), err_msg=plane)

    # the slider moves the contours with the slice: z = 3 is outside the inner cube
    axial = viewer.find_element(By.CSS_SELECTOR, '.pane[data-plane="axial"]')
    layer = axial.find_element(By.CSS_SELECTOR, "canvas.contours")
    slider = axial.find_element(By.TAG_NAME, "input")
    slider.send_keys(*[Keys.ARROW_LEFT] * 5)
    assert axial.find_element(By.CLASS_NAME, "position").text.startswith("z = 3 ")
    np.testing.assert_array_equal(np.array(browser.execute_script(PAINTED_SIDES, layer, 16, 16)), expected_at["axial"](3))

    # the checkbox and the C key hide and show contours and legend
    image = axial.find_element(By.TAG_NAME, "canvas")
    before = canvas_pixels(browser, image)
    browser.find_element(By.ID, "show-contours").click()
    assert not layer.is_displayed() and not legend.is_displayed()
    assert canvas_pixels(browser, image) == before  # the CT slice itself is untouched
    browser.find_element(By.TAG_NAME, "body").send_keys("c")
    assert layer.is_displayed() and legend.is_displayed() and browser.find_element(By.ID, "show-contours").is_selected()
    np.testing.assert_array_equal(np.array(browser.execute_script(PAINTED_SIDES, layer, 16, 16)), expected_at["axial"](3))
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


# For a rows x cols grid over a canvas, which sides of each cell are painted (bits: top 1, bottom 2, left 4, right 8),
# read two pixels inside the cell from each side's middle (away from the anti-aliased rims of neighbouring cells).
PAINTED_SIDES = """
const [canvas, rows, cols] = arguments;
const alpha = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const at = (x, y) => alpha[(Math.floor(y) * canvas.width + Math.floor(x)) * 4 + 3] > 128;
const sx = canvas.width / cols, sy = canvas.height / rows, cells = [];
for (let r = 0; r < rows; r++) {
  const row = [];
  for (let c = 0; c < cols; c++) {
    const x0 = c * sx, y0 = r * sy, xm = x0 + sx / 2, ym = y0 + sy / 2;
    row.push(at(xm, y0 + 1.5) | (at(xm, y0 + sy - 1.5) << 1) | (at(x0 + 1.5, ym) << 2) | (at(x0 + sx - 1.5, ym) << 3)
             | (at(xm, ym) << 4));  // a painted centre (bit 16) is never expected
  }
  cells.push(row);
}
return cells;
"""
