"""``prdit data qc`` in a real browser: headless Chromium opens the QC page of an imported messy collection and
finds every volume's three slice pictures decoded, its histogram drawn, its flags shown, and every refused scan
listed with its reason; ``PRDIT_QC_SCREENSHOT=path.png`` also saves what the browser shows (docs/own-data.md)."""

from __future__ import annotations

import csv
import os

import pytest

from prdit.cli import main
from tests.collection_factory import GOOD, REFUSED, write_messy_collection
from tests.test_report_browser import browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qc_page(tmp_path_factory):
    src = write_messy_collection(tmp_path_factory.mktemp("scans"))
    out = tmp_path_factory.mktemp("imported")
    main(["data", "import", "--src", str(src), "--out", str(out), "--size", "40", "--spacing", "3.5",
          "--hu-offset", "-1024", "--no-progress"])
    main(["data", "qc", str(out), "--out", str(out / "qc.html")])
    with open(out / "manifest.csv", newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    return out / "qc.html", rows


def test_qc_page_in_a_real_browser(browser, qc_page):  # noqa: F811 (the fixture)
    from selenium.webdriver.common.by import By

    page, rows = qc_page
    browser.get(page.resolve().as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    cards = {card.get_attribute("data-case"): card for card in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert set(cards) == {case for case, row in rows.items() if row["status"] == "ok"}
    for case, card in cards.items():
        images = card.find_elements(By.TAG_NAME, "img")
        assert [image.get_attribute("alt") for image in images] == ["axial", "coronal", "sagittal"]
        assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) == 40 for i in images)
        assert len(card.find_elements(By.CSS_SELECTOR, "svg.histogram rect")) >= (10 if case in GOOD else 1), case
        shown = [flag.text for flag in card.find_elements(By.CLASS_NAME, "flag")]
        assert shown == [f for f in rows[case]["flags"].split("; ") if f], case
    flagged_first = list(cards)[:2]
    assert sorted(flagged_first) == ["copy_of_lps", "empty"] and set(GOOD) <= set(cards)
    table = browser.find_element(By.CSS_SELECTOR, "table.refused").text
    for case in REFUSED:
        assert case in table and rows[case]["reason"][-40:] in table
    shot = os.environ.get("PRDIT_QC_SCREENSHOT")
    if shot:
        browser.set_window_size(1400, 1000)
        assert browser.save_screenshot(shot)
