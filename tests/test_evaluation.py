"""Evaluation on folders in the Kaggle layout (PNG and original 3-channel TIFF)."""

import json

import cv2
import numpy as np
import pytest

from mriseg.evaluation.report import (
    PatientPrediction,
    compare_reports,
    evaluate,
    format_comparison,
    format_report,
    summarize,
    tune_postprocessing,
)
from mriseg.metrics import bootstrap_interval
from mriseg.postprocessing import PostprocessingConfig

REQUIRED_KEYS = ("per_volume_dice", "patients", "positive_slice_dice", "empty_slice_fp_rate", "threshold_sweep",
                 "n_patients", "n_slices")


@pytest.mark.slow
def test_report_on_sample_folder(segmenter, kaggle_folder, slice_samples):
    report = evaluate(kaggle_folder, segmenter)
    for key in REQUIRED_KEYS:
        assert key in report
    assert set(report["per_volume_dice"]) >= {"mean", "median"}
    assert report["n_patients"] == len({e["patient"] for e in slice_samples})
    assert report["n_slices"] == len(slice_samples)
    assert all({"threshold", "per_volume_dice_mean"} <= set(row) for row in report["threshold_sweep"])
    assert np.mean(list(report["patients"].values())) == pytest.approx(report["per_volume_dice"]["mean"])
    low, high = report["per_volume_dice"]["mean_ci95"]
    assert min(report["patients"].values()) <= low <= report["per_volume_dice"]["mean"] <= high
    assert high <= max(report["patients"].values())
    text = format_report(report)
    assert "per-volume Dice mean" in text and f"{low:.4f}-{high:.4f}" in text
    json.dumps(report)  # JSON-ready


@pytest.mark.slow
def test_original_three_channel_tiff_layout_gives_the_same_numbers(segmenter, kaggle_folder, tmp_path):
    tiff_root = tmp_path / "tiff"
    for png in kaggle_folder.glob("*/*.png"):
        target = tiff_root / png.parent.name / png.with_suffix(".tif").name
        target.parent.mkdir(parents=True, exist_ok=True)
        gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        if png.stem.endswith("_mask"):
            cv2.imwrite(str(target), gray)
        else:  # pre-contrast and post-contrast stand-ins around the real FLAIR channel (OpenCV writes BGR)
            cv2.imwrite(str(target), np.stack([255 - gray, gray, gray // 2], axis=-1))
    from_png = evaluate(kaggle_folder, segmenter)
    from_tiff = evaluate(tiff_root, segmenter)
    assert from_tiff["patients"] == pytest.approx(from_png["patients"])


def test_hand_made_predictions_give_hand_computed_numbers():
    truth = np.zeros((4, 32, 32), bool)
    truth[1, 10:20, 10:20] = True  # 100 px on one slice; three empty slices
    probabilities = np.zeros((4, 32, 32), np.float32)
    probabilities[1, 10:20, 10:15] = 0.7  # half the tumour
    probabilities[3, 0:2, 0:2] = 0.6  # a false positive on an empty slice
    report = summarize([PatientPrediction("p1", probabilities, truth)], PostprocessingConfig(threshold=0.5))
    assert report["patients"]["p1"] == pytest.approx(100 / 154)  # tp 50, fp 4, fn 50
    assert report["positive_slice_dice"] == pytest.approx(100 / 150)
    assert report["empty_slice_fp_rate"] == pytest.approx(1 / 3)
    assert report["positive_slice_detection_rate"] == 1.0
    sweep = {row["threshold"]: row["per_volume_dice_mean"] for row in report["threshold_sweep"]}
    assert sweep[0.65] == pytest.approx(100 / 150)  # the 0.6 false positive is gone
    assert sweep[0.75] == 0.0
    bins = {round(row["low"], 1): row for row in report["calibration"]["bins"]}
    assert bins[0.7]["pixels"] == 50 and bins[0.7]["tumour_fraction"] == 1.0  # under-confident: all tumour
    assert bins[0.6]["pixels"] == 4 and bins[0.6]["tumour_fraction"] == 0.0
    # over the 54 pixels at 0.1 or more: 50 * |0.7 - 1| + 4 * |0.6 - 0|
    assert report["calibration"]["ece_from_0.1"] == pytest.approx((50 * 0.3 + 4 * 0.6) / 54, abs=1e-6)


def test_sites_and_missed_tumour_slices():
    truth = np.zeros((3, 32, 32), bool)
    truth[:2, 10:20, 10:20] = True
    found = np.where(truth, 0.9, 0.0).astype(np.float32)
    half = found.copy()
    half[1] = 0.0  # the second tumour slice is missed
    predictions = [PatientPrediction("TCGA_CS_0001_20000101", found, truth),
                   PatientPrediction("TCGA_CS_0002_20000101", half, truth),
                   PatientPrediction("TCGA_HT_0003_20000101", found, truth),
                   PatientPrediction("scan-from-elsewhere", half, truth)]
    report = summarize(predictions, PostprocessingConfig(threshold=0.5))
    assert report["positive_slice_detection_rate"] == pytest.approx(6 / 8)
    assert list(report["per_site"]) == ["CS", "HT", "unknown"]
    assert report["per_site"]["CS"]["n_patients"] == 2
    assert report["per_site"]["CS"]["mean"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert report["per_site"]["CS"]["min"] == pytest.approx(2 / 3)
    assert report["per_site"]["HT"] == {"n_patients": 1, "mean": 1.0, "median": 1.0, "min": 1.0}
    text = format_report(report)
    assert "  CS         2     0.8333 / 0.8333 / 0.6667" in text
    assert "slices with tumour found         75.00%" in text
    assert "0.9-1.0" in text and "0.1-0.2" not in text  # only bins that hold pixels are listed


def test_tuning_finds_the_threshold_and_speck_filter_that_help():
    truth = np.zeros((2, 64, 64), bool)
    truth[0, 20:40, 20:40] = True
    probabilities = np.where(truth, 0.35, 0.0).astype(np.float32)
    probabilities[1, 5, 5] = 0.9  # an isolated speck
    config, score = tune_postprocessing([PatientPrediction("p", probabilities, truth)])
    assert config.threshold <= 0.35 and config.min_component_fraction > 0
    assert score == pytest.approx(1.0)


def test_paired_comparison_sees_a_small_steady_gain_that_separate_intervals_hide():
    hardness = np.linspace(0.4, 0.95, 18)  # patients from hard to easy
    baseline = {"patients": {f"p{i}": float(v) for i, v in enumerate(hardness)}}
    candidate = {"patients": {f"p{i}": float(v) + 0.02 for i, v in enumerate(hardness)}}
    # each model's own interval spans far more than the 0.02 between them
    own_low, own_high = bootstrap_interval(hardness)
    assert own_high - own_low > 0.1
    comparison = compare_reports(baseline, candidate)
    assert comparison["n_patients"] == 18
    assert comparison["mean_difference"] == pytest.approx(0.02)
    assert comparison["mean_difference_ci95"] == pytest.approx([0.02, 0.02])
    assert len(comparison["better"]) == 18 and not comparison["worse"]
    text = format_comparison(comparison)
    assert "the candidate is better" in text and "better by more than 0.005: 18 patients; worse: 0" in text
    assert not compare_reports(baseline, candidate, margin=0.03)["better"]  # 0.02 is within a 0.03 margin


def test_paired_comparison_calls_a_mixed_change_no_difference():
    baseline = {"patients": {f"p{i}": 0.8 for i in range(10)}}
    candidate = {"patients": {f"p{i}": 0.8 + (0.05 if i % 2 else -0.05) for i in range(10)}}
    candidate["patients"]["unseen"] = 0.1  # only patients in both reports count
    comparison = compare_reports(baseline, candidate)
    low, high = comparison["mean_difference_ci95"]
    assert comparison["n_patients"] == 10 and low < 0 < high
    assert len(comparison["better"]) == len(comparison["worse"]) == 5
    assert "no difference that these patients can show" in format_comparison(comparison)
    with pytest.raises(ValueError, match="no patient in common"):
        compare_reports(baseline, {"patients": {"other": 0.9}})


def test_error_list_names_each_false_positive_and_missed_slice():
    from mriseg.evaluation.errors import NO_TUMOUR, error_list, format_errors

    truth = np.zeros((6, 64, 64), bool)
    truth[1:4, 10:30, 10:30] = True  # the tumour, slices 1-3
    truth[4, 10:14, 10:14] = True  # its faint tip, missed
    probabilities = np.where(truth, 0.9, 0.0).astype(np.float32)
    probabilities[4][truth[4]] = 0.2
    probabilities[1, 12:20, 40:60] = 0.7  # beside the tumour on a tumour slice: 160 voxels, 10 px away
    probabilities[5:6, 50:60, 50:60] = 0.95  # below it on a tumour-free slice: 100 voxels
    probabilities[5, 52:56, 52:56] = 0.99
    config = PostprocessingConfig(threshold=0.5)
    errors = error_list([PatientPrediction("TCGA_CS_0001_20000101", probabilities, truth),
                         PatientPrediction("TCGA_HT_0002_20000101", probabilities, np.zeros_like(truth))], config)
    first, second, *rest = [fp for fp in errors["false_positives"] if fp["patient"].startswith("TCGA_CS")]
    assert not rest
    assert (first["first_slice"], first["last_slice"], first["voxels"], first["distance_px"]) == (1, 1, 160, 11.0)
    assert not first["on_tumour_free_slice"] and first["max_probability"] == pytest.approx(0.7)
    assert (second["first_slice"], second["voxels"], second["tumour_free_slices"]) == (5, 100, 1)
    assert second["on_tumour_free_slice"] and second["max_probability"] == pytest.approx(0.99)
    assert second["mean_probability"] == pytest.approx((84 * 0.95 + 16 * 0.99) / 100, abs=1e-3)
    # the patient without tumour: everything predicted is a false positive, with no distance to give
    other = [fp for fp in errors["false_positives"] if fp["patient"].startswith("TCGA_HT")]
    assert len(other) == 3 and {fp["distance_px"] for fp in other} == {NO_TUMOUR}
    assert errors["false_positives"][0]["severity"] == max(fp["severity"] for fp in errors["false_positives"])
    assert errors["missed_slices"] == [{"patient": "TCGA_CS_0001_20000101", "slice": 4, "tumour_pixels": 16,
                                        "max_probability_in_tumour": pytest.approx(0.2), "predicted_pixels": 0,
                                        "removed_by_filters": False}]
    assert errors["counts"]["false_positive_components"] == 5 and errors["counts"]["missed_slices"] == 1
    assert "5 false-positive components" in format_errors(errors) and "1 missed tumour slices" in format_errors(errors)
    json.dumps(errors)


def test_a_missed_slice_says_when_a_filter_emptied_it():
    from mriseg.evaluation.errors import error_list

    truth = np.zeros((3, 100, 100), bool)
    truth[0:2, 10:40, 10:40] = True
    truth[2, 10:14, 10:14] = True
    probabilities = np.where(truth, 0.9, 0.0).astype(np.float32)  # the tip, 16 pixels, is under 0.2% of a slice
    errors = error_list([PatientPrediction("p", probabilities, truth)],
                        PostprocessingConfig(threshold=0.5, min_component_fraction=0.002))
    assert [(m["slice"], m["removed_by_filters"]) for m in errors["missed_slices"]] == [(2, True)]
    assert errors["counts"]["missed_slices_removed_by_filters"] == 1


@pytest.mark.slow
def test_errors_command_writes_the_list(kaggle_folder, tmp_path, capsys):
    from mriseg.cli import main

    out = tmp_path / "errors.json"
    assert main(["errors", "--data", str(kaggle_folder), "--device", "cpu", "--out", str(out)]) == 0
    errors = json.loads(out.read_text())
    assert errors["variant"] == "original" and errors["n_patients"] >= 1
    assert set(errors["counts"]) >= {"false_positive_components", "missed_slices"}
    assert "false-positive components" in capsys.readouterr().out


def test_comparison_reports_false_alarms_and_hd95_beside_dice():
    rows = {f"p{i}": {"hd95": 4.0 + i} for i in range(6)}
    baseline = {"patients": {f"p{i}": 0.8 for i in range(6)}, "empty_slice_fp_rate": 0.03, "hd95_px": 6.5,
                "patient_metrics": rows}
    candidate = {"patients": {f"p{i}": 0.8 for i in range(6)}, "empty_slice_fp_rate": 0.02, "hd95_px": 5.5,
                 "patient_metrics": {name: {"hd95": row["hd95"] - 1} for name, row in rows.items()}}
    comparison = compare_reports(baseline, candidate)
    assert comparison["secondary"]["hd95_difference"] == pytest.approx(-1.0)
    text = format_comparison(comparison)
    assert "false positives on empty slices: baseline 3.00%, candidate 2.00%" in text
    assert "HD95 (pixels, mean): baseline 6.50, candidate 5.50; paired difference -1.00" in text
