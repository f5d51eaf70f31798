"""Metric functions against hand-computed cases."""

import numpy as np
import pytest

from mriseg.metrics import ReliabilityCounts, bootstrap_interval, compare, dice, hd95, iou, precision, recall


def masks_from(*rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_empty_versus_empty_is_perfect():
    empty = np.zeros((8, 8), bool)
    assert dice(empty, empty) == iou(empty, empty) == precision(empty, empty) == recall(empty, empty) == 1.0
    assert hd95(empty, empty) is None


def test_prediction_on_empty_truth_scores_zero():
    truth = np.zeros((8, 8), bool)
    prediction = truth.copy()
    prediction[3, 3] = True
    assert dice(prediction, truth) == 0.0
    assert precision(prediction, truth) == 0.0
    assert recall(prediction, truth) == 1.0


def test_one_pixel_match():
    one = np.zeros((8, 8), bool)
    one[2, 5] = True
    assert dice(one, one) == 1.0
    assert hd95(one, one) == 0.0


def test_hand_computed_overlap():
    prediction = masks_from("##..", "##..", "....")
    truth = masks_from(".##.", ".##.", "....")
    # tp = 2, fp = 2, fn = 2
    assert dice(prediction, truth) == pytest.approx(0.5)
    assert iou(prediction, truth) == pytest.approx(2 / 6)
    assert precision(prediction, truth) == pytest.approx(0.5)
    assert recall(prediction, truth) == pytest.approx(0.5)


def test_hd95_of_shifted_square_is_the_shift():
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    shifted = np.roll(truth, 3, axis=1)
    assert hd95(shifted, truth) == pytest.approx(3.0)
    assert hd95(shifted, truth, spacing=(0.5, 0.5)) == pytest.approx(1.5)


def test_volume_dice_pools_slices():
    truth = np.zeros((3, 10, 10), bool)
    truth[1, 2:6, 2:6] = True  # 16 pixels, one slice
    prediction = truth.copy()
    prediction[2, 0, 0] = True  # one false positive on an empty slice
    assert dice(prediction, truth) == pytest.approx(32 / 33)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_compare_reports_everything():
    truth = np.zeros((10, 10), bool)
    truth[2:5, 2:5] = True
    report = compare(truth, truth)
    assert report.dice == 1.0 and report.truth_pixels == 9 and report.predicted_pixels == 9


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_patients():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0.4, 1.0, 18), rng.uniform(0.4, 1.0, 400)
    low, high = bootstrap_interval(few)
    assert low < few.mean() < high
    # the mean of 18 values spread over 0.4-1.0 is uncertain by several hundredths; of 400, by much less
    assert 0.08 < high - low < 0.25
    many_low, many_high = bootstrap_interval(many)
    assert many_high - many_low < (high - low) / 3
    assert bootstrap_interval(few) == (low, high)  # seeded: a report is reproducible
    assert bootstrap_interval([0.7, 0.7]) == pytest.approx((0.7, 0.7))
    # a wider confidence, a wider interval
    wide_low, wide_high = bootstrap_interval(few, confidence=0.99)
    assert wide_low < low and wide_high > high


def test_bootstrap_interval_needs_values():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_reliability_counts_by_hand():
    counts = ReliabilityCounts(bins=4)
    counts.add(np.array([0.1, 0.1, 0.6, 0.6, 0.9, 1.0]), np.array([0, 0, 1, 0, 1, 1]))
    rows = counts.table()
    assert [row["pixels"] for row in rows] == [2, 0, 2, 2]  # 1.0 falls in the last bin
    assert rows[1]["mean_probability"] is None and rows[1]["tumour_fraction"] is None
    assert rows[2]["mean_probability"] == pytest.approx(0.6) and rows[2]["tumour_fraction"] == 0.5
    assert rows[3]["mean_probability"] == pytest.approx(0.95) and rows[3]["tumour_fraction"] == 1.0
    # |0.2 - 0| + |1.2 - 1| + |1.9 - 2| over 6 pixels
    assert counts.expected_calibration_error() == pytest.approx(0.5 / 6)
    assert counts.expected_calibration_error(from_probability=0.5) == pytest.approx(0.3 / 4)


def test_reliability_tells_calibrated_from_overconfident():
    rng = np.random.default_rng(0)
    probabilities = rng.random(200_000)
    calibrated, overconfident = ReliabilityCounts(), ReliabilityCounts()
    calibrated.add(probabilities, rng.random(probabilities.size) < probabilities)
    # the truth is much less often tumour than the probability says, except at the extremes
    overconfident.add(probabilities, rng.random(probabilities.size) < probabilities**2)
    assert calibrated.expected_calibration_error() < 0.01
    assert overconfident.expected_calibration_error() > 0.1
    # volume by volume gives the same counts as all at once
    halves = ReliabilityCounts()
    halves.add(probabilities[:1000], probabilities[:1000] > 0.5)
    halves.add(probabilities[1000:2000], probabilities[1000:2000] > 0.5)
    whole = ReliabilityCounts()
    whole.add(probabilities[:2000], probabilities[:2000] > 0.5)
    for part, together in zip(halves.table(), whole.table(), strict=True):
        assert part == pytest.approx(together)


def test_reliability_refuses_mismatched_input():
    with pytest.raises(ValueError, match="ground-truth"):
        ReliabilityCounts().add(np.zeros(4), np.zeros(5))
    assert ReliabilityCounts().expected_calibration_error() is None
