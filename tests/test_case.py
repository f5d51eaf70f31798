import csv
import io

import numpy as np
import pytest

from mriseg.app.case import (
    CURVE_THRESHOLDS,
    case_from_bytes,
    count_labels,
    highest_probability_in_truth,
    load_sample,
    mask_fit_warning,
    measurements_csv,
    missed_tumour_note,
    rescue_threshold,
    slice_agreement,
    threshold_curve,
    with_truth,
)
from mriseg.data.io import mask_to_png
from mriseg.errors import InputError
from mriseg.metrics import dice
from mriseg.postprocessing import PostprocessingConfig, binarize


def gallery(sample_index, image: str) -> dict:
    return next(entry for entry in sample_index if entry["image"] == image)


# Gallery slices the tests below lean on: a large tumour the model finds, a small one it misses at every threshold
# (its highest probability inside the manual mask is far below 0.05), and a medium one elsewhere in another head.
LARGE, MISSED, OTHER = ("TCGA_HT_8563_19981209_11.png", "TCGA_DU_A5TP_19970614_33.png",
                        "TCGA_HT_7686_19950629_10.png")


def test_samples_load_with_ground_truth(sample_index):
    for entry in sample_index:
        case = load_sample(entry)
        assert case.truth is not None and case.truth.shape == case.volume.shape
        assert int(case.truth.sum()) == entry["tumour_pixels"]


def test_same_content_same_digest(slice_samples):
    from conftest import SAMPLES

    data = (SAMPLES / slice_samples[0]["image"]).read_bytes()
    assert case_from_bytes(data, "a.png").digest == case_from_bytes(data, "b.png").digest


def test_uploaded_truth_must_match(slice_samples):
    case = load_sample(slice_samples[0])
    good = with_truth(case, mask_to_png(case.truth[0]), "mine.png")
    assert good.truth_source == "uploaded mask mine.png"
    with pytest.raises(InputError, match="must match"):
        with_truth(case, mask_to_png(np.zeros((128, 128), bool)), "small.png")


def test_uploaded_label_mask_counts_every_label_until_others_are_chosen(slice_samples):
    import cv2

    case = load_sample(slice_samples[0])
    labels = np.zeros((256, 256), np.uint8)
    labels[40:120, 40:120], labels[60:100, 60:100], labels[75:85, 75:85] = 2, 4, 1
    uploaded = with_truth(case, cv2.imencode(".png", labels)[1].tobytes(), "seg.png")
    assert uploaded.truth_label_values == (1, 2, 4) and uploaded.truth_counted == (1, 2, 4)
    np.testing.assert_array_equal(uploaded.truth[0], labels > 0)
    core = count_labels(uploaded, [4, 1])
    assert core.truth_counted == (1, 4) and int(core.truth.sum()) == 40 * 40
    binary = with_truth(core, mask_to_png(labels > 0), "binary.png")  # a new binary mask forgets the labels
    assert binary.truth_labels is None and binary.truth_counted == () and int(binary.truth.sum()) == 80 * 80


def test_threshold_curve_is_monotone_in_area():
    probabilities = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    truth = probabilities > 0.5
    rows = threshold_curve(probabilities, truth, PostprocessingConfig())
    areas = [row["predicted_pixels"] for row in rows]
    assert areas == sorted(areas, reverse=True)
    assert max(row["dice"] for row in rows) == pytest.approx(1.0)
    assert "dice" not in threshold_curve(probabilities, None, PostprocessingConfig())[0]


def test_measurements_csv(slice_samples):
    case = load_sample(slice_samples[0])
    rows = list(csv.DictReader(io.StringIO(measurements_csv(case, case.truth, 0.5))))
    assert rows[-1]["slice"] == "all" and int(rows[-1]["tumour_pixels"]) == int(case.truth.sum())
    assert rows[-1]["tumour_area_mm2"] == ""  # PNG records no spacing


def test_slice_agreement_names_misses_and_false_alarms():
    truth = np.zeros((4, 8, 8), bool)
    truth[0, 2:6, 2:6] = True  # 16 px, half found
    truth[1, 3:5, 3:5] = True  # 4 px, missed
    mask = np.zeros_like(truth)
    mask[0, 2:6, 2:4] = True
    mask[2, 0, 0] = True  # a false alarm on a tumour-free slice
    rows = slice_agreement(mask, truth)
    assert [row["slice"] for row in rows] == [1, 2, 3, 4]
    assert [row["verdict"] for row in rows] == ["overlap", "missed", "false alarm", "both empty"]
    assert [row["truth_pixels"] for row in rows] == [16, 4, 0, 0]
    assert [row["predicted_pixels"] for row in rows] == [8, 0, 1, 0]
    assert rows[0]["dice"] == pytest.approx(16 / 24)
    assert [row["dice"] for row in rows[1:]] == [0.0, 0.0, 1.0]


def test_volume_measurements_give_mm2_per_slice_and_ml_not_a_summed_area():
    import nibabel as nib

    pixels = np.zeros((40, 40, 3), np.float32)
    pixels[5:35, 5:35, :] = 100.0
    image = nib.Nifti1Image(pixels, np.diag([0.5, 0.5, 2.0, 1.0]))
    case = case_from_bytes(image.to_bytes(), "head.nii")
    mask = np.zeros(case.volume.shape, bool)
    mask[0, 10:20, 10:20] = True  # 100 px = 25 mm² on one slice
    mask[1, 10:30, 10:30] = True  # 400 px = 100 mm²
    rows = list(csv.DictReader(io.StringIO(measurements_csv(case, mask, 0.5))))
    assert [row["tumour_area_mm2"] for row in rows[:-1]] == ["25.00", "100.00", "0.00"]
    assert rows[-1]["tumour_area_mm2"] == ""
    assert float(rows[-1]["tumour_volume_ml"]) == pytest.approx(500 * 0.5 * 0.5 * 2.0 / 1000)


@pytest.mark.slow
def test_measurements_csv_with_ground_truth_adds_truth_pixels_and_dice(segmenter, sample_index):
    case = load_sample(gallery(sample_index, "TCGA_CS_4942_19970222_volume.tif"))
    mask = binarize(segmenter.predict(case.volume.pixels).mean, segmenter.postprocessing, 0.5)
    rows = list(csv.DictReader(io.StringIO(measurements_csv(case, mask, 0.5))))
    assert len(rows) == case.volume.n_slices + 1
    for index, row in enumerate(rows[:-1]):
        assert int(row["tumour_pixels"]) == int(mask[index].sum())  # the existing columns stay
        assert int(row["truth_pixels"]) == int(case.truth[index].sum())
        assert float(row["dice"]) == pytest.approx(dice(mask[index], case.truth[index]), abs=1e-4)
    assert rows[-1]["slice"] == "all" and int(rows[-1]["truth_pixels"]) == int(case.truth.sum())
    assert float(rows[-1]["dice"]) == pytest.approx(dice(mask, case.truth), abs=1e-4)  # per-volume, pooled
    assert 0 < float(rows[-1]["dice"]) < 1


def test_measurements_csv_without_ground_truth_has_no_truth_columns(slice_samples):
    from conftest import SAMPLES

    case = case_from_bytes((SAMPLES / slice_samples[0]["image"]).read_bytes(), "upload.png")
    header = measurements_csv(case, np.zeros(case.volume.shape, bool), 0.5).splitlines()[0]
    assert header == "file,slice,threshold,tumour_pixels,tumour_area_mm2,tumour_volume_ml"


def test_rescue_threshold_on_gallery_samples(segmenter, sample_index):
    found = load_sample(gallery(sample_index, LARGE))
    probabilities = segmenter.predict(found.volume.pixels).mean
    assert rescue_threshold(probabilities, found.truth, segmenter.postprocessing) == max(CURVE_THRESHOLDS)
    assert rescue_threshold(probabilities[0], found.truth[0], segmenter.postprocessing) == max(CURVE_THRESHOLDS)

    missed = load_sample(gallery(sample_index, MISSED))
    probabilities = segmenter.predict(missed.volume.pixels).mean
    highest = highest_probability_in_truth(probabilities, missed.truth)
    assert highest < min(CURVE_THRESHOLDS)
    assert rescue_threshold(probabilities, missed.truth, segmenter.postprocessing) is None
    assert all(row["dice"] == 0 for row in threshold_curve(probabilities, missed.truth, segmenter.postprocessing))
    note = missed_tumour_note(probabilities, missed.truth, segmenter.postprocessing)
    assert note.startswith("No threshold rescues this miss") and f"{highest:.2g}" in note
    assert "below even the lowest threshold, 0.05" in note
    assert missed_tumour_note(probabilities, np.zeros_like(missed.truth), segmenter.postprocessing) is None


def test_rescue_threshold_is_the_highest_step_that_touches_the_truth():
    truth = np.zeros((1, 64, 64), bool)
    truth[0, 20:40, 20:40] = True
    probabilities = np.zeros((1, 64, 64), np.float32)
    probabilities[0, 20:40, 20:30] = 0.42  # half the tumour at 0.42
    probabilities[0, 5:10, 50:60] = 0.9  # a confident false alarm elsewhere does not count
    config = PostprocessingConfig(min_component_fraction=0.0, min_volume_fraction=0.0)
    assert rescue_threshold(probabilities, truth, config) == 0.4
    # Post-processing can drop what the threshold keeps: a tiny island inside the truth is no rescue.
    speck = np.zeros_like(probabilities)
    speck[0, 30, 30] = 0.8
    removes_specks = PostprocessingConfig(min_component_fraction=0.001, min_volume_fraction=0.0)
    assert rescue_threshold(speck, truth, removes_specks) is None
    note = missed_tumour_note(speck, truth, removes_specks)
    assert "0.8" in note and "removed by post-processing" in note


def test_mask_fit_warning_questions_a_mask_of_another_scan(segmenter, sample_index):
    case = load_sample(gallery(sample_index, LARGE))
    probabilities = segmenter.predict(case.volume.pixels).mean
    assert mask_fit_warning(case.volume.pixels, case.truth, probabilities) is None  # its own mask

    other = load_sample(gallery(sample_index, OTHER)).truth  # same 256x256 size, so with_truth accepts it
    uploaded = with_truth(case, mask_to_png(other[0]), "other.png")
    assert dice(binarize(probabilities, segmenter.postprocessing), uploaded.truth) == 0
    warning = mask_fit_warning(case.volume.pixels, uploaded.truth, probabilities)
    assert warning is not None and "belongs to this scan" in warning

    corner = np.zeros_like(case.truth)
    corner[0, :12, :40] = True  # drawn on the empty background above the head
    warning = mask_fit_warning(case.volume.pixels, corner, probabilities)
    assert warning is not None and "100% of this mask lies on the image background" in warning

    assert mask_fit_warning(case.volume.pixels, np.zeros_like(case.truth), probabilities) is None  # "no tumour"
