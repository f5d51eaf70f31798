import csv
import io

import numpy as np
import pytest

from mriseg.case import (
    case_from_bytes,
    load_sample,
    measurements_csv,
    slice_agreement,
    threshold_curve,
    with_truth,
)
from mriseg.errors import InputError
from mriseg.io import mask_to_png
from mriseg.postprocessing import PostprocessingConfig


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
