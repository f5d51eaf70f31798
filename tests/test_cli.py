"""``python -m mriseg`` end to end on real sample files, in a fresh process like a user's."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, SAMPLES, make_dicom

from mriseg.data.io import read_volume
from mriseg.inference import native_bf16

pytestmark = pytest.mark.slow


def mriseg(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MRISEG_HF_REPO="")
    return subprocess.run([sys.executable, "-m", "mriseg", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO_ROOT, timeout=600)


def test_predict_writes_masks_and_reports_sizes(tmp_path, sample_index):
    slice_entry = next(e for e in sample_index if e["category"] == "large")
    volume_entry = next(e for e in sample_index if e["category"] == "volume")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = mriseg("predict", str(SAMPLES / slice_entry["image"]), str(SAMPLES / volume_entry["image"]), str(bad),
                    "--out", str(tmp_path / "out"), "--threshold", "0.5", "--device", "cpu")
    assert result.returncode == 1  # one input was bad
    assert "notes.png: not a readable image" in result.stderr
    assert "Traceback" not in result.stderr
    png_mask = tmp_path / "out" / (slice_entry["image"].removesuffix(".png") + "_mask.png")
    assert png_mask.exists()
    nifti_mask = tmp_path / "out" / (volume_entry["image"].removesuffix(".tif") + "_mask.nii.gz")
    assert nib.load(nifti_mask).shape == (256, 256, volume_entry["slices"])
    line = next(line for line in result.stdout.splitlines() if line.startswith(slice_entry["image"]))
    assert int(line.split("tumour ")[1].split(" px")[0]) > 0


def test_predict_writes_scanner_space_nifti_for_dicom_and_2d_nifti(tmp_path, sample_index):
    volume_entry = next(e for e in sample_index if e["category"] == "volume")
    slice_entry = next(e for e in sample_index if e["category"] == "large")
    series = tmp_path / "series.zip"
    pixels = read_volume((SAMPLES / volume_entry["image"]).read_bytes(), volume_entry["image"]).pixels
    with zipfile.ZipFile(series, "w") as archive:
        for index, image in enumerate(pixels):
            archive.writestr(f"IM{index:04d}.dcm", make_dicom(image, spacing=(0.5, 0.5), instance=index + 1,
                                                              position=(-64, -64, 3.0 * index)))
    two_d = tmp_path / "slice.nii"
    image = read_volume((SAMPLES / slice_entry["image"]).read_bytes(), slice_entry["image"]).pixels[0]
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image.T[::-1, ::-1]), affine), two_d)  # RAS+: reads as the PNG
    out = tmp_path / "out"
    result = mriseg("predict", str(series), str(two_d), "--out", str(out), "--threshold", "0.5", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["series_mask.nii.gz", "slice_mask.nii.gz"]

    series_mask = nib.load(out / "series_mask.nii.gz")
    assert series_mask.shape == (256, 256, volume_entry["slices"])
    np.testing.assert_allclose(series_mask.affine, read_volume(series.read_bytes(), series.name).affine)
    tumour = np.asarray(series_mask.dataobj) > 0
    per_slice = tumour.sum(axis=(0, 1))
    line = next(line for line in result.stdout.splitlines() if line.startswith("series.zip"))
    assert f"largest {per_slice.max() * 0.25:.1f} mm² on slice {per_slice.argmax() + 1}," in line
    assert f"volume {tumour.sum() * 0.5 * 0.5 * 3.0 / 1000:.2f} mL" in line
    assert line.count("mm²") == 1  # the largest slice's area, never one summed over slices

    slice_mask = nib.load(out / "slice_mask.nii.gz")
    assert slice_mask.shape == (256, 256)  # the input's own shape: a 2D file's mask is 2D too
    np.testing.assert_allclose(slice_mask.affine, affine)
    pixels = int((np.asarray(slice_mask.dataobj) > 0).sum())
    line = next(line for line in result.stdout.splitlines() if line.startswith("slice.nii"))
    assert pixels > 0 and f"tumour {pixels} px, {pixels * 0.64:.1f} mm² ->" in line


def test_evaluate_writes_the_json_report(tmp_path, kaggle_folder):
    report_path = tmp_path / "report.json"
    result = mriseg("evaluate", "--data", str(kaggle_folder), "--out", str(report_path), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert {"per_volume_dice", "patients", "positive_slice_dice", "empty_slice_fp_rate", "threshold_sweep",
            "n_patients", "n_slices"} <= set(report)
    assert "per-volume Dice mean" in result.stdout
    # the samples are validation patients: no warning about training patients
    assert report["patients_seen_in_training"] == 0 and "warning" not in result.stderr
    assert report["tta"] is False


def test_compare_reports_pairs_two_models_on_the_same_patients(tmp_path, kaggle_folder):
    reports = {}
    for name, extra in (("plain", ()), ("mirrored", ("--tta",))):
        reports[name] = tmp_path / f"{name}.json"
        result = mriseg("evaluate", "--data", str(kaggle_folder), "--out", str(reports[name]), "--device", "cpu",
                        *extra)
        assert result.returncode == 0, result.stderr
    result = mriseg("compare-reports", str(reports["plain"]), str(reports["mirrored"]))
    assert result.returncode == 0, result.stderr
    plain, mirrored = (json.loads(path.read_text()) for path in reports.values())
    assert f"patients in both reports: {plain['n_patients']}" in result.stdout
    assert (f"baseline {plain['per_volume_dice']['mean']:.4f}, candidate {mirrored['per_volume_dice']['mean']:.4f}"
            in result.stdout)
    assert "95% interval" in result.stdout and "paired bootstrap over patients" in result.stdout
    not_a_report = tmp_path / "notes.json"
    for text in ('{"mean": 0.9}', '{"patients": 3}', "[1, 2]"):
        not_a_report.write_text(text)
        result = mriseg("compare-reports", str(reports["plain"]), str(not_a_report))
        assert result.returncode == 2 and "has no per-patient Dice" in result.stderr, text
        assert "Traceback" not in result.stderr
    result = mriseg("compare-reports", str(reports["plain"]), str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "no report at" in result.stderr


def test_weights_tuned_with_tta_are_evaluated_with_it(tmp_path, kaggle_folder):
    weights = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "weights", weights)
    config = json.loads((weights / "config.json").read_text())
    (weights / "config.json").write_text(json.dumps(dict(config, tta_default=True)))
    report_path = tmp_path / "report.json"
    result = mriseg("evaluate", "--data", str(kaggle_folder), "--weights", str(weights), "--out", str(report_path),
                    "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads(report_path.read_text())["tta"] is True


def test_evaluate_scores_another_postprocessing_on_request(tmp_path, kaggle_folder):
    report_path = tmp_path / "report.json"
    result = mriseg("evaluate", "--data", str(kaggle_folder), "--out", str(report_path), "--device", "cpu",
                    "--postprocessing", "threshold=0.9", "--postprocessing", "min_volume_fraction=0")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["threshold"] == 0.9 and report["min_volume_fraction"] == 0.0
    at_09 = next(row for row in report["threshold_sweep"] if row["threshold"] == 0.9)
    assert at_09["per_volume_dice_mean"] == pytest.approx(report["per_volume_dice"]["mean"])
    for setting, message in (("colour=red", "KEY one of threshold"), ("fill_holes=maybe", "true or false"),
                             ("threshold=high", "needs a float")):
        result = mriseg("evaluate", "--data", str(kaggle_folder), "--postprocessing", setting)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--workers", "-1", "--workers: -1 is negative"), ("--workers", "two", "--workers: 'two' is not a whole number"),
    ("--minutes", "-5", "--minutes: -5.0 is negative"), ("--minutes", "soon", "--minutes: 'soon' is not a number")])
def test_train_refuses_a_negative_or_unreadable_budget_or_worker_count(tmp_path, option, value, message):
    result = mriseg("train", "--data", str(tmp_path), option, value)
    assert result.returncode == 2 and message in result.stderr


def test_train_refuses_a_recall_weight_outside_0_1(tmp_path):
    result = mriseg("train", "--data", str(tmp_path), "--recall-weight", "1.5")
    assert result.returncode == 2 and "--recall-weight: 1.5 is outside (0, 1)" in result.stderr


def test_evaluate_missing_folder_is_a_clear_error(tmp_path):
    result = mriseg("evaluate", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_predict_in_float32_on_request(tmp_path, sample_index):
    entry = next(e for e in sample_index if e["category"] == "large")
    image = str(SAMPLES / entry["image"])
    runs = {flags: mriseg("predict", image, "--out", str(tmp_path / "out"), "--device", "cpu", *flags)
            for flags in ((), ("--fp32",))}
    assert "device: CPU\n" in runs[("--fp32",)].stderr
    assert ("device: CPU, bfloat16" in runs[()].stderr) == native_bf16(torch.device("cpu"))
    areas = [int(run.stdout.split("tumour ")[1].split(" px")[0]) for run in runs.values()]
    assert abs(areas[0] - areas[1]) <= 0.02 * areas[1]


def test_bench_prints_latency():
    result = mriseg("bench", "--repeats", "3", "--slices", "4")
    assert result.returncode == 0, result.stderr
    assert "latency per 256x256 slice" in result.stdout and "slices/s" in result.stdout
    # where the CPU computes bfloat16 natively, both number formats are timed side by side
    assert ("CPU, bfloat16" in result.stdout) == native_bf16(torch.device("cpu"))


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_train_smoke(tmp_path, kaggle_folder, slice_samples, extra):
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:2], "validation": patients[2:3]}))
    result = mriseg("train", "--data", str(kaggle_folder), "--split", str(split), "--out", str(tmp_path / "run"),
                    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "4", "--depth", "2",
                    "--grid", "64", "--device", "cpu", *extra)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    done = next(line for line in result.stdout.splitlines() if line.startswith("done:"))
    assert 0.0 <= float(done.split("per-volume Dice ")[1].split()[0]) <= 1.0


def test_the_parser_builds_without_torch_or_opencv():
    # The train flags name no defaults (the recipe's dataclasses hold them), so --help and a typo stay instant.
    code = ("import sys; from mriseg.cli import build_parser; build_parser().parse_args(['train', '--data', 'd']); "
            "print(sorted({'torch', 'cv2'} & set(sys.modules)))")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
