"""Presenter mode as a lesson needs it, in a real browser (Debian Chromium through Playwright): a copied link opens
the same view in a fresh browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import open_sample
from helpers import REPO_ROOT, SAMPLES

pytestmark = pytest.mark.browser

PROJECTOR = {"width": 1920, "height": 1080}


@pytest.fixture(scope="module")
def volume(sample_index) -> dict:
    return next(e for e in sample_index if e["category"] == "volume")


def settled(page) -> None:
    """Wait until the app's run is over and the threshold view shows one final overlay."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.locator("canvas.overlay")).to_have_count(1)
    expect(page.get_by_role("slider", name="Slice")).to_be_visible()


def slice_number(page) -> int:
    """The Slice slider's value, as written on its thumb."""
    thumb = page.get_by_test_id("stSlider").filter(has_text="Slice").get_by_test_id("stSliderThumbValue")
    return int(thumb.inner_text())


def test_a_copied_link_opens_the_same_view_in_a_fresh_browser(server, browser, volume):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PROJECTOR, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(server)
    open_sample(page, volume)
    settled(page)
    page.get_by_role("button", name="Presenter mode").click()
    expect(page.get_by_role("button", name=re.compile("Exit presenter mode"))).to_be_visible()
    settled(page)
    threshold = page.locator("input#threshold")
    threshold.focus()
    start = float(page.locator("canvas.overlay").get_attribute("data-threshold"))
    for _ in range(10):
        threshold.press("ArrowLeft")
    target = f"{start - 0.10:.2f}"
    expect(page).to_have_url(re.compile(f"threshold={target}"))
    settled(page)
    slice_slider = page.get_by_role("slider", name="Slice")
    first = slice_number(page)
    slice_slider.focus()
    slice_slider.press("ArrowRight")
    slice_slider.press("ArrowRight")
    expect(page).to_have_url(re.compile(f"slice={first + 2}"))

    page.get_by_role("button", name="Copy link").click()
    expect(page.get_by_text("Link copied.")).to_be_visible()
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == page.url and f"sample={volume['image']}" in link and "presenter=1" in link
    context.close()

    fresh = browser.new_context(viewport=PROJECTOR)
    page = fresh.new_page()
    page.goto(link)
    settled(page)
    expect(page.get_by_role("button", name=re.compile("Exit presenter mode"))).to_be_visible()
    expect(page.get_by_role("heading", name=volume["image"])).to_be_visible()
    expect(page.locator("canvas.overlay")).to_have_attribute("data-threshold", target)
    assert slice_number(page) == first + 2
    fresh.close()


# The smallest font on the page: every visible text node (inside components' shadow roots too), SVG text (Plotly
# charts, the Graphviz diagram) at its rendered scale. Returns [size in px, the text].
SMALLEST_FONT = """() => {
  let smallest = [Infinity, ''];
  const visit = (root) => {
    for (const element of root.querySelectorAll('*')) {
      if (element.shadowRoot) visit(element.shadowRoot);
      const text = [...element.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('').trim();
      if (!text) continue;
      const box = element.getBoundingClientRect(), style = getComputedStyle(element);
      // Hidden, or only for screen readers (clipped to nothing, or placed off the page).
      if (box.width <= 2 || box.height <= 2 || box.right < 0 || box.bottom < 0 || style.visibility === 'hidden'
          || Number(style.opacity) === 0 || style.clip.startsWith('rect(0') || style.clipPath.includes('inset(50%')) {
        continue;
      }
      let size = parseFloat(style.fontSize);
      if (element instanceof SVGElement) {
        const matrix = element.getScreenCTM();
        size *= Math.hypot(matrix.a, matrix.b);
      }
      if (size < smallest[0]) smallest = [size, text.slice(0, 60)];
    }
  };
  visit(document);
  return smallest;
}"""
PAGE_HEIGHT = "() => document.querySelector('[data-testid=stMain]').scrollHeight"


def check_screen(page, name: str, *shown) -> dict:
    """Screenshot the projector's screen to docs/presenter/``name``.png; assert that every locator in ``shown``
    (the page's picture, chart, numbers) lies within it and that no text is under 18 px."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(500)  # Plotly lays its text out after the chart's element appears
    page.screenshot(path=str(REPO_ROOT / "docs" / "presenter" / f"{name}.png"))
    size, text = page.evaluate(SMALLEST_FONT)
    height = page.evaluate(PAGE_HEIGHT)
    print(f"{name}: smallest font {size:.1f} px ({text!r}), page height {height} px")
    for locator in shown:
        box = locator.bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PROJECTOR["height"] + 1 \
            and box["x"] + box["width"] <= PROJECTOR["width"] + 1, (name, locator, box)
    assert size >= 18, (name, size, text)
    return {"smallest": size, "height": height}


def step(page, name: str) -> None:
    """Show one part of a page in presenter mode (its segmented control) and wait for its run to finish."""
    from playwright.sync_api import expect

    page.get_by_test_id("stButtonGroup").get_by_text(name, exact=True).click()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)


def test_every_page_fits_a_projector_and_reads_from_the_back_row(server, browser, volume, sample_index):
    from playwright.sync_api import expect

    single = next(e for e in sample_index if e["category"] == "medium")
    page = browser.new_page(viewport=PROJECTOR)
    page.goto(f"{server}/?presenter=1&sample={single['image']}")
    expect(page.locator("canvas.overlay")).to_have_count(1)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    metric = page.get_by_test_id("stMetricValue").first
    check_screen(page, "segment", page.locator("canvas.overlay"), metric)

    page.goto(f"{server}/?presenter=1&tta=1&sample={volume['image']}")
    settled(page)
    check_screen(page, "segment-volume-uncertainty", page.locator("canvas.overlay"), metric)
    step(page, "Uncertainty")
    check_screen(page, "segment-uncertainty", page.get_by_test_id("stImage").last, metric)
    step(page, "Slices")
    check_screen(page, "segment-volume-slices", page.locator(".st-key-slice_chart"))
    step(page, "Three planes and 3D")
    viewer = page.locator("canvas[data-ready='1']")
    expect(viewer).to_have_count(1, timeout=60_000)
    check_screen(page, "segment-volume-viewer", viewer, page.get_by_text(re.compile(r"^Tumour at threshold .* voxels")))

    page.get_by_role("link", name="Compare with ground truth").click()
    step(page, "Threshold lesson")
    page.get_by_text("Play (steps down to the lowest threshold)").click()
    page.wait_for_timeout(3000)
    lesson_picture = page.get_by_test_id("stImage").filter(has_text="Error map at threshold")
    dice = page.get_by_test_id("stMetric").filter(has_text="Dice")
    check_screen(page, "compare-lesson-playing", lesson_picture, page.locator(".st-key-lesson_curve"), dice)

    page.get_by_role("link", name="Metrics").click()
    for name, chart in (("This case", "case_curve"), ("Validation patients", "sweep"),
                        ("Calibration and sites", "reliability"), ("Training", "training_curves")):
        step(page, name)
        check_screen(page, f"metrics-{chart}", page.locator(f".st-key-{chart}"))

    page.get_by_role("link", name="How it works").click()
    step(page, "The U-Net")
    check_screen(page, "how-it-works-diagram", page.get_by_test_id("stGraphVizChart"))
    step(page, "Feature maps")
    check_screen(page, "how-it-works-feature-maps", page.get_by_test_id("stImage").last)
    step(page, "The loss")
    check_screen(page, "how-it-works-loss")
    page.close()


LAPTOP = {"width": 1280, "height": 800}
# Text cut by an ellipsis that holds a digit (a number), inside components' shadow roots too.
CUT_NUMBERS = """() => {
  const cut = [];
  const visit = (root) => {
    for (const element of root.querySelectorAll('*')) {
      if (element.shadowRoot) visit(element.shadowRoot);
      const style = getComputedStyle(element);
      // Cut text with digits, unless the element gives its whole text on hover (a long file name's title).
      if (style.textOverflow === 'ellipsis' && element.scrollWidth > element.clientWidth + 1
          && /\\d/.test(element.textContent) && element.title !== element.textContent)
        cut.push(element.textContent.slice(0, 80));
    }
  };
  visit(document);
  return cut;
}"""


def nifti(tif: Path, path: Path) -> Path:
    """The gallery's TIFF stack ``tif`` as a NIfTI file with 0.9 mm pixels and 3 mm slices (so sizes come in mm² and
    mL, the longest numbers the pages show)."""
    import nibabel as nib
    import numpy as np

    from mriseg.data.io import read_volume

    pixels = read_volume(tif.read_bytes(), tif.name).pixels
    ras = np.ascontiguousarray(np.transpose(pixels[:, ::-1, ::-1], (2, 1, 0)))
    nib.save(nib.Nifti1Image(ras, np.diag([0.9, 0.9, 3.0, 1.0])), path)
    return path


def test_a_laptop_cuts_no_number_and_shows_a_volume_with_its_slider(server, browser, volume, tmp_path):
    from playwright.sync_api import expect

    long_name = "TCGA_CS_4942_19970222_axial_FLAIR_whole_head_series_7_reconstructed_by_the_scanner_at_3T.nii.gz"
    scan = nifti(SAMPLES / volume["image"], tmp_path / long_name)
    mask = nifti(SAMPLES / volume["mask"], tmp_path / "TCGA_CS_4942_19970222_flair_mask.nii.gz")
    page = browser.new_page(viewport=LAPTOP)
    page.goto(server)
    page.get_by_text("Upload a file").click()
    page.locator("input[type=file]").set_input_files(str(scan))
    settled(page)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(REPO_ROOT / "docs" / "presenter" / "laptop-volume-upload.png"))
    for locator in (page.locator("canvas.overlay"), page.locator("input#threshold")):
        box = locator.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= LAPTOP["height"], (locator, box)
    assert page.evaluate(CUT_NUMBERS) == []
    # A long file name ends in an ellipsis on one line, the whole name on hover.
    title = page.locator("h3.case-name")
    assert title.get_attribute("title") == long_name and title.inner_text() == long_name
    assert title.evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).textOverflow === 'ellipsis'")
    box = title.bounding_box()
    assert box["x"] + box["width"] <= LAPTOP["width"] and box["height"] < 60, box
    page.get_by_role("link", name="Compare with ground truth").click()
    expect(page.get_by_text("Ground-truth mask (optional)")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    page.locator("input[type=file]").set_input_files(str(mask))
    expect(page.get_by_test_id("stMetric").filter(has_text="Volume difference")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    assert page.evaluate(CUT_NUMBERS) == []
    page.get_by_role("link", name="Metrics").click()
    expect(page.locator(".st-key-training_curves")).to_be_visible()
    assert page.evaluate(CUT_NUMBERS) == []
    page.close()
