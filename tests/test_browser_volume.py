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
