"""The numbers the app shows are the right ones (issue 31): label masks counted as the user chooses, a region the
filters remove said so, an out-of-domain file's area shown as not meaningful, and the scan, its source and the slice
kept through every order of pages. Files are made here; expected numbers come from mriseg, not from the pages."""

from __future__ import annotations

import gzip

import cv2
import nibabel as nib
import numpy as np
import pytest
from app_helpers import expected_mask, metric, open_sample, start, upload
from helpers import SAMPLES
from scipy import ndimage

from mriseg.app.case import load_sample, sample_index
from mriseg.data.io import read_volume
from mriseg.metrics import compare
from mriseg.postprocessing import removed_regions

pytestmark = pytest.mark.slow

LARGE = "TCGA_HT_8563_19981209_11.png"
VOLUME = "TCGA_CS_4942_19970222_volume.tif"


def entry(image: str) -> dict:
    return next(e for e in sample_index() if e["image"] == image)


def brats_labels(truth: np.ndarray) -> np.ndarray:
    """The manual mask split the BraTS way: oedema (2) outside, enhancing tumour (4) within, necrosis (1) inside."""
    labels = np.where(truth, 2, 0)
    labels[ndimage.binary_erosion(truth, iterations=6)] = 4
    labels[ndimage.binary_erosion(truth, iterations=12)] = 1
    return labels.astype(np.uint8)


def test_brats_label_mask_counts_the_whole_tumour_and_the_labels_chosen(segmenter):
    case = load_sample(entry(LARGE))
    labels = brats_labels(case.truth[0])
    at = open_sample(start(), LARGE)
    at.switch_page("pages/compare.py").run()
    upload(at, "truth_upload", "seg.png", cv2.imencode(".png", labels)[1].tobytes())
    mask = expected_mask(segmenter, case.volume.pixels, at.slider(key="threshold").value)
    assert any(c.value == "This mask holds labels 1, 2, 4 (BraTS-style): counting labels 1, 2, 4 as tumour (whole "
               "tumour)." for c in at.caption)
    whole = compare(mask, labels[None] > 0).dice
    assert metric(at, "Dice") == f"{whole:.3f}"  # not the midpoint cut, which counted label 4 only

    at.multiselect(key="truth_labels_counted").set_value([4]).run()
    enhancing = compare(mask, labels[None] == 4).dice
    assert metric(at, "Dice") == f"{enhancing:.3f}" and enhancing < whole
    assert any("counting label 4 as tumour (enhancing tumour)" in c.value for c in at.caption)
    at.switch_page("pages/metrics.py").run()
    at.switch_page("pages/compare.py").run()  # the choice comes back with the page
    assert at.multiselect(key="truth_labels_counted").value == [4] and metric(at, "Dice") == f"{enhancing:.3f}"


def test_a_region_the_3d_filter_removes_is_said_so(segmenter):
    case = load_sample(entry(VOLUME))
    at = open_sample(start(), VOLUME)
    at.slider(key="threshold").set_value(0.2).run()
    regions = removed_regions(segmenter.predict(case.volume.pixels).mean, segmenter.postprocessing, 0.2)
    region = next(r for r in regions if r["reason"] == "volume")  # the premise: a confident region goes
    assert region["peak"] > 0.9
    at.slider(key="slice").set_value(region["first_slice"] + 1).run()
    assert not at.exception, at.exception
    note = next(c.value for c in at.caption if "is not outlined" in c.value)
    assert note.startswith(f":material/filter_alt: A region of {region['voxels']:,} px (peak probability "
                           f"{region['peak']:.2f}) on slices {region['first_slice'] + 1}-{region['last_slice'] + 1} "
                           "is not outlined: the 3D filter " + segmenter.postprocessing.volume_filter_rule() + ".")


def test_colour_photograph_gets_no_meaningful_area():
    photo = np.zeros((128, 128, 3), np.uint8)
    photo[:, :, 0] = np.linspace(40, 250, 128)[None]  # a red-to-blue sky over a green field
    photo[:, :, 2] = np.linspace(250, 40, 128)[:, None]
    photo[80:, :, 1] = 200
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", "holiday.png", cv2.imencode(".png", photo)[1].tobytes())
    assert any("colour photograph" in w.value for w in at.warning)
    assert metric(at, "Tumour area, this slice") == "not meaningful"
    assert any("Outline and area not meaningful: this file is not brain FLAIR." in c.value for c in at.caption)


def volume_nifti() -> bytes:
    pixels = read_volume((SAMPLES / VOLUME).read_bytes(), VOLUME).pixels
    ras = np.ascontiguousarray(np.transpose(pixels[:, ::-1, ::-1], (2, 1, 0)))
    return gzip.compress(nib.Nifti1Image(ras, np.diag([0.9, 0.9, 3.0, 1.0])).to_bytes())


@pytest.mark.parametrize("pages", [
    ("compare", "metrics", "segment"),
    ("metrics", "segment", "compare", "segment"),
    ("how_it_works", "compare", "metrics", "segment"),
])
def test_upload_source_and_slice_survive_every_order_of_pages(pages):
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", "flair.nii.gz", volume_nifti())
    at.slider(key="slice").set_value(6).run()
    for page in pages:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    assert at.radio(key="source").value == "Upload a file"
    assert at.slider(key="slice").value == 6
    assert any("Showing your upload **flair.nii.gz**" in c.value for c in at.caption)


def test_gallery_volume_keeps_its_slice_and_a_new_case_starts_afresh():
    at = open_sample(start(), VOLUME)
    start_slice = at.slider(key="slice").value
    at.slider(key="slice").set_value(3).run()
    at.switch_page("pages/compare.py").run()
    at.slider(key="compare_slice").set_value(7).run()
    at.switch_page("pages/metrics.py").run()
    at.switch_page("pages/segment.py").run()
    assert at.radio(key="source").value == "Sample gallery" and at.slider(key="slice").value == 3
    at.switch_page("pages/compare.py").run()
    assert at.slider(key="compare_slice").value == 7
    at.switch_page("pages/segment.py").run()
    open_sample(at, LARGE)
    open_sample(at, VOLUME)
    assert at.slider(key="slice").value == start_slice
