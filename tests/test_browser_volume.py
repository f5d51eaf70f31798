"""A BraTS-size volume uploaded in Chromium: the middle slice's overlay comes before every slice is segmented, and
the final masks equal those of ``mriseg predict``."""

from __future__ import annotations

import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from browser_helpers import REPO_ROOT
from volume_helpers import BRATS_SLICES, write_brats_size_nifti

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_first_overlay_before_every_slice_then_the_cli_masks(server, browser, tmp_path):
    from playwright.sync_api import expect

    scan = write_brats_size_nifti(tmp_path / "brats_size.nii.gz")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server)
    page.get_by_text("Upload a file").click()
    page.locator("input[type=file]").set_input_files(str(scan))
    preview = page.locator("canvas.overlay[data-preliminary=true]")
    expect(preview).to_have_attribute("data-threshold", re.compile(r"\d\.\d\d"), timeout=120_000)
    progress = page.get_by_text(re.compile(rf"Segmenting slice \d+ of {BRATS_SLICES}"))
    done = int(re.search(r"slice (\d+) of", progress.inner_text()).group(1))
    assert done < BRATS_SLICES  # the overlay is on screen while slices are still being segmented
    expect(page.get_by_text("Preliminary: the 3D filter runs when every slice is done.")).to_be_visible()

    final = page.locator("canvas.overlay[data-preliminary=false]")
    expect(final).to_have_attribute("data-threshold", re.compile(r"\d\.\d\d"), timeout=120_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Mask (NIfTI)").click()
    app_mask = tmp_path / "app_mask.nii.gz"
    download.value.save_as(app_mask)
    page.close()

    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "mriseg", "predict", str(scan), "--out", str(out), "--no-progress"],
                   cwd=REPO_ROOT, check=True, timeout=300)
    (cli_mask,) = out.glob("*.nii.gz")
    shown = np.asarray(nib.load(app_mask).dataobj) > 0
    expected = np.asarray(nib.load(cli_mask).dataobj) > 0
    assert shown.any() and np.array_equal(shown, expected)


def plane_counts(mask: np.ndarray, crosshair: list[int]) -> dict[str, int]:
    """Tumour voxels of ``mask`` (axial slices) on the crosshair's axial, coronal and sagittal planes (RAS voxel:
    x from the image's right edge, y from its bottom, z the slice)."""
    _, height, width = mask.shape
    x, y, z = crosshair
    return {"axial": int(mask[z].sum()), "coronal": int(mask[:, height - 1 - y, :].sum()),
            "sagittal": int(mask[:, :, width - 1 - x].sum())}


def test_viewer_scrolls_each_plane_and_moves_the_threshold_in_the_browser(server, browser, segmenter,
                                                                         sample_index):
    import json

    from playwright.sync_api import expect

    from mriseg.app.case import load_sample
    from mriseg.app.threshold_view import THRESHOLD_STEPS
    from mriseg.postprocessing import binarize

    entry = next(e for e in sample_index if e["category"] == "volume")
    probabilities = segmenter.predict(load_sample(entry).volume.pixels).mean

    def mask_at(step: int) -> np.ndarray:
        return binarize(probabilities, segmenter.postprocessing, THRESHOLD_STEPS[step])

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server}/?sample={entry['image']}")
    canvas = page.locator("canvas[data-ready]")
    expect(canvas).to_have_attribute("data-ready", "1", timeout=120_000)
    canvas.scroll_into_view_if_needed()
    state = canvas.evaluate("c => ({...c.dataset})")
    step, crosshair = int(state["step"]), [int(v) for v in state["crosshair"].split(",")]
    assert int(state["voxels"]) == int(mask_at(step).sum()) > 0
    assert json.loads(state["planeCounts"]) == plane_counts(mask_at(step), crosshair)
    page.screenshot(path=str(REPO_ROOT / "docs" / "presenter" / "laptop-volume-viewer.png"))

    # The mouse wheel over each plane moves the crosshair through that plane's slices, drawn in the browser.
    box = canvas.bounding_box()
    tiles = {tile["plane"]: tile["box"] for tile in json.loads(state["tiles"])}
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        left, top, width, height = tiles[plane]
        page.mouse.move(box["x"] + left + width / 2, box["y"] + top + height / 2)
        before = canvas.get_attribute("data-crosshair")
        page.mouse.wheel(0, 120)
        expect(canvas).not_to_have_attribute("data-crosshair", before)
        moved = [int(v) for v in canvas.get_attribute("data-crosshair").split(",")]
        changed = [i for i in range(3) if moved[i] != crosshair[i]]
        assert changed == [axis] and abs(moved[axis] - crosshair[axis]) == 1, (plane, crosshair, moved)
        crosshair = moved
        assert json.loads(canvas.get_attribute("data-plane-counts")) == plane_counts(mask_at(step), crosshair)

    # The viewer's own threshold slider redraws the mask in the browser, then the page follows it.
    slider = page.locator("input.threshold")
    slider.focus()
    for _ in range(10):
        slider.press("ArrowRight")
    expect(canvas).to_have_attribute("data-step", str(step + 10))
    assert int(canvas.get_attribute("data-voxels")) == int(mask_at(step + 10).sum())
    assert json.loads(canvas.get_attribute("data-plane-counts")) == plane_counts(mask_at(step + 10), crosshair)
    expect(page.get_by_text(f"Tumour at threshold {THRESHOLD_STEPS[step + 10]:.2f}:")).to_be_visible()
    expect(page.locator("[data-testid='stSidebar'] input[type=range]").first).to_have_value(
        str(THRESHOLD_STEPS[step + 10]), timeout=60_000)

    # The page's own slice slider moves the viewer's crosshair to that slice.
    page_slice = int(state["crosshair"].split(",")[2])
    slice_slider = page.get_by_role("slider", name="Slice")
    slice_slider.focus()
    slice_slider.press("ArrowRight")
    expect(canvas).to_have_attribute("data-crosshair", re.compile(rf",{page_slice + 1}$"), timeout=60_000)
    page.close()
