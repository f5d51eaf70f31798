"""The app in a real browser: Debian Chromium driven by Playwright against ``streamlit run app.py``.

In CI (``CI`` set) a missing browser is a failure; on a user's machine without Chromium the test is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import cv2
import pytest
from browser_helpers import cpu_seconds, open_sample
from helpers import REPO_ROOT, SAMPLES
from skimage import data as skimage_data

pytestmark = pytest.mark.browser

ARTIFACTS = REPO_ROOT / "test-artifacts"


def test_upload_threshold_compare_and_bad_file(server, browser, slice_samples):
    from playwright.sync_api import expect

    entry = max(slice_samples, key=lambda e: e["tumour_pixels"])
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(server)
    expect(page.get_by_role("heading", name="Segment a brain MRI")).to_be_visible()

    # Upload a real slice and see the overlay.
    page.get_by_text("Upload a file").click()
    page.locator("input[type=file]").set_input_files(str(SAMPLES / entry["image"]))
    overlay_caption = page.get_by_text(re.compile(r"^Tumour at threshold \d\.\d\d$"))
    expect(overlay_caption).to_be_visible()
    before = overlay_caption.inner_text()
    expect(page.get_by_text("Tumour area, this slice")).to_be_visible()

    # Move the shared threshold with the keyboard, once the app has finished its run.
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    slider = page.locator("[data-testid='stSidebar'] input[type=range]").first
    slider.focus()
    for _ in range(10):
        slider.press("ArrowRight")
    target = round(float(before.split()[-1]) + 0.10, 2)
    expect(slider).to_have_value(str(target))
    expect(page.get_by_text(f"Tumour at threshold {target:.2f}", exact=True)).to_be_visible()
    expect(page.get_by_text(before, exact=True)).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "segment.png"), full_page=True)

    # Compare page: upload the matching ground truth and read a Dice value.
    page.get_by_role("link", name="Compare with ground truth").click()
    expect(page.get_by_role("heading", name="Compare with ground truth")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.locator("input[type=file]")).to_have_count(1)  # the Segment page's uploader has gone
    page.locator("input[type=file]").set_input_files(str(SAMPLES / entry["mask"]))
    dice_metric = page.locator("[data-testid='stMetric']").filter(has_text="Dice").first
    expect(dice_metric).to_be_visible()
    dice_value = float(dice_metric.locator("[data-testid='stMetricValue']").inner_text())
    assert 0.0 <= dice_value <= 1.0
    expect(page.get_by_text("false negative", exact=True)).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

    # A bad file gets a message, not a traceback, and the page keeps working.
    page.get_by_role("link", name="Segment").click()
    page.get_by_text("Upload a file").click()
    bad = ARTIFACTS / "not_an_image.png"
    bad.write_text("this is not a scan")
    page.locator("input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text("not a readable image")).to_be_visible()
    expect(page.get_by_text("Traceback")).to_have_count(0)

    # A colour photograph: warned about, and its outline's area under the slider is no measurement.
    photo = ARTIFACTS / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    page.locator("input[type=file]").set_input_files(str(photo))
    expect(page.get_by_text("This looks like a colour photograph")).to_be_visible()
    expect(page.locator(".reading")).to_have_text(re.compile("^area not meaningful"))
    page.locator("input[type=file]").set_input_files(str(SAMPLES / entry["image"]))
    # The photograph's page has the same metric label: wait for the scan's own reading, then for the run to end
    # (a page link clicked while an upload's rerun is still on its way can be overtaken by it).
    # (While it runs, Streamlit keeps the photograph's elements on show beside the new ones.)
    expect(page.locator(".reading", has_text=re.compile(r"\d px$"))).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.locator(".reading", has_text="not meaningful")).to_have_count(0)

    # How it works: the architecture and the live feature maps of this scan.
    page.get_by_role("link", name="How it works").click()
    expect(page.get_by_role("heading", name="How it works: what the U-Net sees")).to_be_visible()
    expect(page.get_by_text("skip connection (from the encoder)")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^channel \d+$")).first).to_be_visible()
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "how_it_works.png"), full_page=True)
    page.close()


def test_screenshot_for_readme(server, browser, sample_index):
    """The gallery with a sample open: the picture in the README."""
    from playwright.sync_api import expect

    entry = max((e for e in sample_index if e["category"] == "large"), key=lambda e: e["tumour_pixels"])
    page = browser.new_page(viewport={"width": 1500, "height": 1150})
    page.goto(server)
    open_sample(page, entry)
    expect(page.get_by_text(re.compile(r"^Tumour at threshold"))).to_be_visible()
    expect(page.get_by_role("heading", name=entry["image"])).to_be_visible()
    expect(page.get_by_text("Tumour area, this slice")).to_be_visible()
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"))
    if os.environ.get("MRISEG_UPDATE_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "app.png", REPO_ROOT / "docs" / "screenshot.png")
    page.close()


def test_idle_server_leaves_the_cpu_alone(served, browser):
    """With a page open and nothing to do, the server uses next to no CPU.

    Streamlit's default file watcher kept one core busy while a page was open, re-scanning this folder (.venv
    included) after every inotify overflow, and inference in the app ran 3-4 times slower for it;
    .streamlit/config.toml switches it to polling the app's own files.
    """
    from playwright.sync_api import expect

    url, process = served
    page = browser.new_page()
    page.goto(url)
    expect(page.get_by_role("heading", name="Segment a brain MRI")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    time.sleep(2)
    before = cpu_seconds(process.pid)
    time.sleep(5)
    busy = (cpu_seconds(process.pid) - before) / 5
    assert busy < 0.25, f"the idle server kept {busy:.0%} of a CPU core busy"
    page.close()


def font_size(locator) -> float:
    return float(locator.evaluate("element => parseFloat(getComputedStyle(element).fontSize)"))


def test_presenter_mode_enlarges_text_and_keeps_headings_and_numbers_larger(server, browser, slice_samples):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    open_sample(page, slice_samples[0])
    expect(page.get_by_text(re.compile(r"^Tumour at threshold"))).to_be_visible()
    note = page.get_by_text("on this slice", exact=False).first  # the sentence on the manual mask
    body_before = font_size(note)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    page.get_by_role("button", name="Presenter mode").click()
    expect(page.get_by_role("button", name=re.compile("Exit presenter mode"))).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_be_hidden()

    name = page.get_by_role("heading", name=slice_samples[0]["image"])  # the case's name
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(name).to_have_count(1)  # the previous layout's copy has gone: sizes are read from the new one
    body = font_size(note)
    heading = font_size(name)
    label = font_size(page.get_by_test_id("stMetricLabel").locator("p").first)
    value = font_size(page.get_by_test_id("stMetricValue").locator("p").first)
    assert body > body_before, "presenter mode should enlarge the body text for the back row"
    assert heading >= 1.4 * body, f"the heading ({heading} px) should stand above the text ({body} px)"
    assert value >= 2 * label, f"a metric's number ({value} px) should stand well above its label ({label} px)"
    page.close()


# Streamlit ends a label or metric that does not fit with "…" inside a .stMarkdownEllipsis box.
CUT_OFF_TEXT = """() => Array.from(document.querySelectorAll(".stMarkdownEllipsis"))
  .filter(element => element.offsetParent !== null && element.scrollWidth > element.clientWidth + 1)
  .map(element => element.textContent)"""


def test_no_label_or_number_is_cut_off_on_a_laptop_screen(server, browser, sample_index):
    """Buttons and metrics show their whole text at 1280x800 on every page, with a volume open (it shows the
    most metrics)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server)
    open_sample(page, next(e for e in sample_index if e["category"] == "volume"))
    expect(page.get_by_text("Tumour volume")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    assert page.evaluate(CUT_OFF_TEXT) == []
    for link, ready in (("Compare with ground truth", page.get_by_role("button", name="Higher")),
                        ("Metrics", page.get_by_text("Per-volume Dice, mean")),
                        ("How it works", page.get_by_text(re.compile(r"^channel \d+$")).first)):
        page.get_by_role("link", name=link).click()
        expect(ready).to_be_visible()
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
        assert page.evaluate(CUT_OFF_TEXT) == [], f"on the {link} page"
    page.close()


def click_bar(page, chart_title: str, trace: int, slice_number: int) -> None:
    """Click the bar of ``slice_number`` in trace ``trace`` of the Plotly chart titled ``chart_title``."""
    chart = page.locator(".js-plotly-plot").filter(has_text=chart_title)
    bar = chart.locator(".barlayer .trace").nth(trace).locator(".point").nth(slice_number - 1)
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    # Plotly's drag layer covers the bars, so click where the bar is rather than on its element
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_clicking_a_slice_bar_opens_that_slice(server, browser, sample_index):
    """On both volume charts a click on a bar moves the slice slider there, grouped (off-centre) bars included."""
    from playwright.sync_api import expect

    entry = next(e for e in sample_index if e["category"] == "volume")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    open_sample(page, entry)
    expect(page.get_by_text("Tumour volume")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    thumbs = page.get_by_test_id("stMain").get_by_test_id("stSliderThumbValue")
    start = int(thumbs.first.inner_text())
    target = start - 2
    click_bar(page, "Tumour area per slice", 0, target)
    expect(thumbs.first).to_have_text(str(target))

    page.get_by_role("link", name="Compare with ground truth").click()
    expect(page.get_by_text("hold tumour in the ground truth")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    for trace in (0, 1):  # the ground-truth bar sits left of the slice, the prediction's right of it
        target = int(thumbs.first.inner_text()) + 1
        click_bar(page, "Tumour pixels per slice", trace, target)
        expect(thumbs.first).to_have_text(str(target))
    page.close()
