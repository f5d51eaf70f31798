"""The classroom moments in a real browser (Debian Chromium through Playwright, 1280x800 and 1920x1080): the
threshold answering in the browser, presenter mode fitting a projector, state that survives navigation, the
uploaded mask named as the user's own, a rejected file clearing the old result."""

from __future__ import annotations

import re

import pytest
from browser_helpers import open_sample
from helpers import REPO_ROOT, SAMPLES

from mriseg.weights.bundle import read_config

pytestmark = pytest.mark.browser

LAPTOP = {"width": 1280, "height": 800}
PROJECTOR = {"width": 1920, "height": 1080}


def settled(page) -> None:
    """Wait until the app's run is over and the threshold view shows one overlay."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.locator("canvas.overlay")).to_have_count(1)


def page_with_upload(server: str, browser, scan) -> object:
    """A laptop-sized page of the app with ``scan`` uploaded on the Segment page and its overlay shown."""
    page = browser.new_page(viewport=LAPTOP)
    page.goto(server)
    page.get_by_text("Upload a file").click()
    page.locator("input[type=file]").set_input_files(str(scan))
    settled(page)
    return page


def wholly_on_screen(locator, viewport: dict) -> bool:
    box = locator.bounding_box()
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"]
            and box["y"] + box["height"] <= viewport["height"])


@pytest.fixture(scope="module")
def largest(sample_index) -> dict:
    return max((e for e in sample_index if e["category"] == "large"), key=lambda e: e["tumour_pixels"])


def test_threshold_redraws_in_the_browser_then_reaches_the_server(server, browser, largest):
    """Arrow keys on the view's slider redraw the overlay at once; released, the value becomes the threshold of
    the whole app (sidebar, measured area), and the live reading matches the server's measurement."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport=LAPTOP)
    page.goto(server)
    open_sample(page, largest)
    settled(page)
    canvas = page.locator("canvas.overlay")
    default = read_config(REPO_ROOT / "weights")["postprocessing"]["threshold"]
    expect(canvas).to_have_attribute("data-threshold", f"{default:.2f}")
    slider = page.locator("input#threshold")
    slider.focus()
    for _ in range(20):
        slider.press("ArrowRight")
    target = round(default + 0.20, 2)
    expect(canvas).to_have_attribute("data-threshold", f"{target:.2f}")
    expect(page.get_by_text(f"Tumour at threshold {target:.2f}", exact=True)).to_be_visible()
    sidebar = page.locator("[data-testid='stSidebar'] input[type=range]").first
    expect(sidebar).to_have_value(str(target))
    reading = page.locator(".reading")
    area = page.locator("[data-testid='stMetric']").filter(has_text="Tumour area, this slice")
    expect(area.locator("[data-testid='stMetricValue']")).to_have_text(reading.inner_text())
    # The other way round: the sidebar moves the view's slider and its overlay.
    sidebar.focus()
    sidebar.press("ArrowLeft")
    expect(canvas).to_have_attribute("data-threshold", f"{target - 0.01:.2f}")
    page.close()


def test_laptop_screen_shows_the_whole_overlay_after_opening_a_sample(server, browser, sample_index):
    from playwright.sync_api import expect

    volume = next(e for e in sample_index if e["category"] == "volume")
    page = browser.new_page(viewport=LAPTOP)
    page.goto(server)
    open_sample(page, volume)
    settled(page)
    page.evaluate("window.scrollTo(0, 0)")
    canvas = page.locator("canvas.overlay")
    expect(canvas).to_have_attribute("data-threshold", re.compile(r"\d\.\d\d"))
    assert wholly_on_screen(canvas, LAPTOP), canvas.bounding_box()
    page.close()


def test_presenter_mode_fits_a_projector_with_pages_one_click_away_and_esc_to_leave(server, browser, largest):
    from playwright.sync_api import expect

    page = browser.new_page(viewport=PROJECTOR)
    page.goto(server)
    open_sample(page, largest)
    settled(page)
    body_before = float(page.locator(".reading").evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
    page.get_by_role("button", name="Presenter mode").click()
    expect(page.get_by_role("button", name=re.compile("Exit presenter mode"))).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_be_hidden()
    settled(page)
    page.evaluate("window.scrollTo(0, 0)")
    canvas = page.locator("canvas.overlay")
    expect(canvas).to_have_attribute("data-threshold", re.compile(r"^\d\.\d\d$"))
    number = page.get_by_test_id("stMetricValue").first
    assert wholly_on_screen(canvas, PROJECTOR), canvas.bounding_box()
    assert wholly_on_screen(number, PROJECTOR), number.bounding_box()
    assert canvas.bounding_box()["height"] >= 600, "a projector's picture should fill most of the screen's height"
    reading = float(page.locator(".reading").evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
    assert reading > body_before, "the live reading should grow for the back row"

    # The comparison page is one visible click away, and presenter mode stays on there with its threshold.
    link = page.get_by_role("link", name="Compare with ground truth")
    assert wholly_on_screen(link, PROJECTOR)
    link.click()
    expect(page.get_by_role("heading", name="Compare with ground truth")).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_be_hidden()
    expect(page.get_by_role("slider", name="Threshold")).to_be_visible()

    page.keyboard.press("Escape")
    expect(page.get_by_test_id("stSidebar")).to_be_visible()
    expect(page.get_by_role("button", name="Presenter mode")).to_be_visible()
    page.close()


def test_scan_source_and_upload_survive_a_visit_to_another_page(server, browser, largest):
    from playwright.sync_api import expect

    page = page_with_upload(server, browser, SAMPLES / largest["image"])
    page.get_by_role("link", name="Metrics").click()
    expect(page.get_by_role("heading", name="Metrics", exact=True)).to_be_visible()
    page.get_by_role("link", name="Segment").click()
    expect(page.get_by_role("radio", name="Upload a file")).to_be_checked()
    expect(page.get_by_text(f"Showing your upload {largest['image']}")).to_be_visible()
    settled(page)
    page.close()


def test_an_uploaded_mask_is_named_as_the_users_own(server, browser, largest):
    from playwright.sync_api import expect

    page = page_with_upload(server, browser, SAMPLES / largest["image"])
    page.get_by_role("link", name="Compare with ground truth").click()
    # The Compare page's own uploader, once the Segment page's has gone.
    expect(page.get_by_text("Ground-truth mask (optional)")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.locator("input[type=file]")).to_have_count(1)
    page.locator("input[type=file]").set_input_files(str(SAMPLES / largest["mask"]))
    expect(page.locator("[data-testid='stMetric']").filter(has_text="Dice").first).to_be_visible()
    page.get_by_role("link", name="Segment").click()
    expect(page.get_by_text(re.compile(r"Your uploaded mask marks [\d,]+ px"))).to_be_visible()
    expect(page.get_by_text("The data set's manual mask", exact=False)).to_have_count(0)
    page.close()


def test_a_rejected_file_clears_the_old_result_and_says_why(server, browser, largest, tmp_path):
    from playwright.sync_api import expect

    page = page_with_upload(server, browser, SAMPLES / largest["image"])
    notes = tmp_path / "lesson notes.txt"
    notes.write_text("Bring the FLAIR scans for Tuesday.")
    page.locator("input[type=file]").set_input_files(str(notes))
    expect(page.get_by_text("unsupported file type '.txt'", exact=False)).to_be_visible()
    expect(page.locator("canvas.overlay")).to_have_count(0)
    expect(page.get_by_text("Tumour area, this slice")).to_have_count(0)
    page.close()
