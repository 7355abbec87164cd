"""The HTML report as a person sees it: opened in headless Chromium, images loaded, headers sort."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imloss_cli.registry import Registry
from imloss_cli.report import build_report, render

from .test_report import registry  # noqa: F401  (fixture: the im_weight x seed group)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    SELENIUM = ""
except ImportError as e:
    SELENIUM = f"selenium is not importable ({e}); pip install -e .[test]"

pytestmark = pytest.mark.skipif(
    bool(SELENIUM) or CHROMIUM is None or CHROMEDRIVER is None,
    reason=SELENIUM
    or "no Chromium and ChromeDriver on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_page_opens_with_its_tables_and_every_image_loaded_and_headers_sort(
    registry: Registry,
    browser,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(build_report(registry), "html", registry))
    browser.get(page.as_uri())

    tables = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
    assert len(tables) == 4
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 6
    assert all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 0 for i in images
    )

    comparison = tables[0]

    def first_column() -> list[str]:
        return [
            row.find_elements(By.TAG_NAME, "td")[0].text
            for row in comparison.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]

    def metric_column() -> list[str]:
        return [
            row.find_elements(By.TAG_NAME, "td")[1].text
            for row in comparison.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]

    assert first_column() == ["0.0", "1.0", "2.0"]
    header = comparison.find_elements(By.TAG_NAME, "th")[1]  # test_acc
    header.click()
    # ascending by mean; each cell the mean and its 95% interval (two seeds 2 pp apart: ± 12.71 pp)
    assert metric_column() == ["79.00 [66.29, 91.71]", "89.00 [76.29, 101.71]", "94.00 [81.29, 106.71]"]
    assert first_column() == ["2.0", "0.0", "1.0"]
    header.click()
    assert first_column() == ["1.0", "0.0", "2.0"]  # descending
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
