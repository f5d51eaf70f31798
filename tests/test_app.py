"""The Streamlit app through AppTest: every page, uploads, the shared threshold, bad input.

Shown numbers are checked against what mriseg computes for the same file and threshold.
"""

from __future__ import annotations

import gzip
import json
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from app_helpers import expected_mask, metric, open_sample, start, upload
from helpers import REPO_ROOT, SAMPLES
from streamlit import config as streamlit_config

from mriseg.app.case import load_sample
from mriseg.inference import native_bf16
from mriseg.metrics import compare, dice
from mriseg.weights.bundle import read_config

pytestmark = pytest.mark.slow

def largest_sample(sample_index):
    return max((e for e in sample_index if e["category"] == "large"), key=lambda e: e["tumour_pixels"])


def test_home_shows_gallery_and_sidebar():
    at = start()
    assert at.title[0].value == "Segment a brain MRI"
    assert len([b for b in at.button if b.key and b.key.startswith("sample-")]) == 9
    sidebar_text = " ".join(c.value for c in at.sidebar.caption)
    cpu_label = "CPU, bfloat16" if native_bf16(torch.device("cpu")) else "CPU"
    assert f"Running on **{cpu_label}**" in sidebar_text or "GPU" in sidebar_text
    assert "not a medical device" in sidebar_text and "bundled weights" in sidebar_text
    assert at.slider(key="threshold").value == pytest.approx(read_config(REPO_ROOT / "weights")["postprocessing"]
                                                             ["threshold"])


def test_sample_area_follows_threshold(segmenter, sample_index):
    entry = largest_sample(sample_index)
    at = open_sample(start(), entry["image"])
    case = load_sample(entry)
    for threshold in (at.slider(key="threshold").value, 0.8):
        at.slider(key="threshold").set_value(threshold).run()
        expected = int(expected_mask(segmenter, case.volume.pixels, threshold).sum())
        assert metric(at, "Tumour area, this slice") == f"{expected:,} px"
    assert len(at.get("download_button")) == 3


def test_upload_png_then_bad_file_then_good_file(segmenter, slice_samples):
    entry = slice_samples[2]
    data = (SAMPLES / entry["image"]).read_bytes()
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", entry["image"], data)
    threshold = at.slider(key="threshold").value
    expected = int(expected_mask(segmenter, load_sample(entry).volume.pixels, threshold).sum())
    assert metric(at, "Tumour area, this slice") == f"{expected:,} px"

    upload(at, "upload", "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert "broken.png" in at.error[0].value and "Traceback" not in at.error[0].value
    assert not any(m.label == "Tumour area, this slice" for m in at.metric)

    upload(at, "upload", entry["image"], data)
    assert not at.error
    assert metric(at, "Tumour area, this slice") == f"{expected:,} px"


@pytest.mark.parametrize(("name", "data", "message"), [
    ("fmri.nii", nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 4, 2)).astype(np.float32),
                                 np.eye(4)).to_bytes(), "4 dimensions"),
    ("empty.png", b"", "empty"),
    ("flat.png", None, "same value"),
])
def test_bad_uploads_get_their_own_message(name, data, message):
    if data is None:
        import cv2

        data = cv2.imencode(".png", np.full((64, 64), 9, np.uint8))[1].tobytes()
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", name, data)
    assert message in at.error[0].value


def test_file_over_the_upload_cap_is_refused():
    streamlit_config.set_option("server.maxUploadSize", 1)
    try:
        at = start()
        at.radio(key="source").set_value("Upload a file").run()
        upload(at, "upload", "huge.nii.gz", gzip.compress(b"\x00" * 10) + b"\x00" * (2 * 1024 * 1024))
        assert "over the upload limit of 1 MB" in at.error[0].value
    finally:
        streamlit_config.set_option("server.maxUploadSize", 200)


def test_volume_sample_starts_on_largest_predicted_slice(segmenter, sample_index):
    entry = next(e for e in sample_index if e["category"] == "volume")
    at = open_sample(start(), entry["image"])
    case = load_sample(entry)
    mask = expected_mask(segmenter, case.volume.pixels, at.slider(key="threshold").value)
    largest = int(np.argmax(mask.reshape(len(mask), -1).sum(axis=1)))
    assert at.slider(key="slice").value == largest + 1
    assert metric(at, "Tumour, all slices") == f"{int(mask.sum()):,} px"
    assert metric(at, "Tumour volume") == "—"


@pytest.mark.parametrize(("category", "threshold"), [("large", 0.5), ("small", 0.95), ("tumour-free", 0.05),
                                                    ("tumour-free", 0.5)])
def test_segment_page_says_how_the_slice_compares_with_the_manual_mask(segmenter, sample_index, category,
                                                                       threshold):
    """A sample with a manual mask gets one sentence on this slice: overlap (with its Dice), a miss, a false alarm,
    or both empty; the extreme thresholds push small tumours into misses and tumour-free slices into false alarms."""
    entry = min((e for e in sample_index if e["category"] == category), key=lambda e: e["tumour_pixels"])
    at = open_sample(start(), entry["image"])
    at.slider(key="threshold").set_value(threshold).run()
    case = load_sample(entry)
    mask = expected_mask(segmenter, case.volume.pixels, threshold)[0]
    truth = case.truth[0]
    note = next(m.value for m in at.markdown if "manual mask marks" in m.value)
    if truth.any() and mask.any():
        assert f"marks {int(truth.sum()):,} px on this slice, the model {int(mask.sum()):,} px" in note
        assert f"Dice {dice(mask, truth):.2f};" in note
    elif truth.any():
        assert f"marks {int(truth.sum()):,} px of tumour" in note and f"at threshold {threshold:.2f}" in note
        assert "**a miss**" in note
    elif mask.any():
        assert f"the model marks {int(mask.sum()):,} px: **a false alarm**" in note
    else:
        assert "and neither does the model" in note


def test_compare_page_shows_mriseg_dice(segmenter, sample_index):
    entry = largest_sample(sample_index)
    at = open_sample(start(), entry["image"])
    at.slider(key="threshold").set_value(0.6).run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    case = load_sample(entry)
    report = compare(expected_mask(segmenter, case.volume.pixels, 0.6), case.truth)
    assert metric(at, "Dice") == f"{report.dice:.3f}"
    assert metric(at, "IoU") == f"{report.iou:.3f}"
    assert at.slider(key="threshold").value == 0.6  # shared across pages
    legend = next(m.value for m in at.markdown if m.value.startswith("Error map"))
    assert all(name in legend for name in ("true positive", "false positive", "false negative"))


def test_compare_volume_slice_by_slice(segmenter, sample_index):
    entry = next(e for e in sample_index if e["category"] == "volume")
    at = open_sample(start(), entry["image"])
    at.slider(key="threshold").set_value(0.7).run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    case = load_sample(entry)
    mask = expected_mask(segmenter, case.volume.pixels, 0.7)
    chart = json.loads(next(c for c in at.get("plotly_chart") if "per slice" in c.proto.spec).proto.spec)
    truth_bars, predicted_bars = chart["data"][:2]
    assert truth_bars["y"] == case.truth.reshape(len(case.truth), -1).sum(axis=1).tolist()
    assert predicted_bars["y"] == mask.reshape(len(mask), -1).sum(axis=1).tolist()
    with_tumour = int(case.truth.reshape(len(case.truth), -1).any(axis=1).sum())
    missed = int((case.truth.reshape(len(case.truth), -1).any(axis=1) & ~mask.reshape(len(mask), -1).any(axis=1)).sum())
    assert any(caption.value.startswith(f"{with_tumour} slices hold tumour in the ground truth; at threshold 0.70 "
                                        f"the prediction misses {missed or 'none'} of them") for caption in at.caption)
    # the chart marks the slice the slider shows, and follows it
    at.slider(key="compare_slice").set_value(3).run()
    chart = json.loads(next(c for c in at.get("plotly_chart") if "per slice" in c.proto.spec).proto.spec)
    assert chart["layout"]["shapes"][0]["x0"] == 3


def test_compare_rejects_wrong_shape_and_non_binary_masks(slice_samples):
    import cv2

    at = open_sample(start(), slice_samples[0]["image"])
    at.switch_page("pages/compare.py").run()
    upload(at, "truth_upload", "small_mask.png", cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes())
    assert "must match the image" in at.error[0].value
    gradient = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    upload(at, "truth_upload", "gray.png", cv2.imencode(".png", gradient)[1].tobytes())
    assert "not a binary mask" in at.error[0].value
    assert metric(at, "Dice")  # the sample's own ground truth still shows


def test_compare_without_case_points_to_segment():
    at = start()
    at.switch_page("pages/compare.py").run()
    assert "No scan yet" in at.info[0].value


def test_metrics_page_for_case_and_model(slice_samples):
    at = open_sample(start(), slice_samples[0]["image"])
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, at.exception
    report = json.loads((REPO_ROOT / "weights" / "evaluation.json").read_text())
    assert metric(at, "Per-volume Dice, mean") == f"{report['per_volume_dice']['mean']:.3f}"
    low, high = report["per_volume_dice"]["mean_ci95"]
    assert any(f"95% interval of the mean: **{low:.3f}-{high:.3f}**" in caption.value for caption in at.caption)
    assert any(f"{report['n_patients']} validation patients" in m.value for m in at.markdown)
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # case curve, per-patient strip, sweep, training curves
    strip = json.loads(next(chart for chart in charts if "Per-patient Dice" in chart.proto.spec).proto.spec)
    mean_trace = next(trace for trace in strip["data"] if trace.get("x") == ["mean, 95% interval"])
    assert mean_trace["y"][0] - mean_trace["error_y"]["arrayminus"][0] == pytest.approx(low)
    assert mean_trace["y"][0] + mean_trace["error_y"]["array"][0] == pytest.approx(high)
    reliability = json.loads(next(chart for chart in charts if "mean 80%" in chart.proto.spec).proto.spec)
    observed = next(trace for trace in reliability["data"] if trace["name"] == "this model")["y"]
    assert observed == pytest.approx([row["tumour_fraction"] for row in report["calibration"]["bins"]
                                      if row["pixels"]])
    sites = json.loads(next(chart for chart in charts if "by scanner site" in chart.proto.spec).proto.spec)
    assert sites["data"][0]["x"] == list(report["per_site"])
    assert any(f"{report['calibration']['ece_from_0.1']:.3f} on average" in caption.value for caption in at.caption)
    copies = at.dataframe[0].value  # the shipped model's numbers on every copy, as in its card
    assert list(copies["copy"]) == ["original (skull on, as trained)", "skull-stripped",
                                    "resampled (1 mm-like, thin slices)", "BraTS-like (stripped, resampled, z-scored)"]
    stripped = report["robustness"]["skull-stripped"]
    assert copies["per-volume Dice (95% interval)"][1].startswith(f"{stripped['per_volume_dice_mean']:.3f} (")
    assert copies["false positives on empty slices"][1] == f"{stripped['empty_slice_fp_rate']:.1%}"
    assert copies["HD95 (px)"][3] == f"{report['robustness']['brats-like']['hd95_px']:.1f}"


def test_single_slice_nifti_mask_downloads_as_nifti(slice_samples):
    import cv2

    pixels = cv2.imread(str(SAMPLES / slice_samples[0]["image"]), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    data = nib.Nifti1Image(pixels.T[:, ::-1, None].copy(), np.diag([0.9, 0.9, 5.0, 1.0])).to_bytes()
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", "slice.nii", data)
    labels = [button.proto.label for button in at.get("download_button")]
    assert "Mask (NIfTI)" in labels and "Mask (PNG)" not in labels


@pytest.mark.parametrize("anonymised", [False, True])
def test_a_dicom_series_offers_its_mask_as_dicom_seg(anonymised):
    from dicom_helpers import PLANES, blob_volume, series_zip, stack
    from pydicom.uid import generate_uid

    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}
    if not anonymised:
        uids["FrameOfReferenceUID"] = generate_uid()
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", "series.zip", series_zip(*stack(blob_volume(), *PLANES["sagittal"]), **uids))
    for _ in range(120):  # a volume is segmented in the background; the page shows the result once it is done
        if at.get("download_button"):
            break
        time.sleep(0.5)
        at.run()
    labels = [button.proto.label for button in at.get("download_button")]
    assert "Mask (NIfTI)" in labels
    assert ("Mask (DICOM SEG)" in labels) != anonymised
    assert any("No DICOM SEG: the series has no FrameOfReferenceUID" in c.value for c in at.caption) == anonymised
