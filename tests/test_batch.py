"""``predict`` on whole folders (``mriseg.batch``): an archive built here of NIfTI volumes, PNG slices, loose DICOM
series and a corrupt file, segmented with the shipped model, in one process and on a local Dask cluster."""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import REPO_ROOT, SAMPLES, WEIGHTS, head_phantom, make_dicom

from mriseg.batch import (
    NIFTI_SUFFIX,
    OK,
    SUMMARY_COLUMNS,
    find_cases,
    mask_stem,
    segment_case,
)
from mriseg.data.io import read_dicom_files, read_mask, read_volume

SERIES_A = "1.2.826.0.1.3680043.8.498.101"  # the loose FLAIR series, files without extension
SERIES_B = "1.2.826.0.1.3680043.8.498.202"  # a second series in the same folder, .dcm files
# Series A has the study and frame of reference a DICOM SEG references; series B, anonymised, has neither.
STUDY_A, FRAME_OF_REFERENCE_A = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"
SPACING = (0.8, 0.8, 3.0)


def mriseg(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MRISEG_HF_REPO="")
    return subprocess.run([sys.executable, "-m", "mriseg", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=900)


def nifti_bytes(slices: np.ndarray) -> bytes:
    """Axial slices (as mriseg shows them) as a NIfTI image in RAS+, with ``SPACING``."""
    ras = np.ascontiguousarray(np.transpose(slices[:, ::-1, ::-1], (2, 1, 0)))
    return nib.Nifti1Image(ras.astype(np.int16), np.diag([*SPACING, 1.0])).to_bytes()


def series_files(slices: np.ndarray, uid: str, number: int | None = None, description: str | None = None,
                 **attributes) -> list[bytes]:
    """One DICOM file per slice of one series (pydicom), placed 3 mm apart, with ``attributes`` in each."""
    files = []
    for index, image in enumerate(slices):
        dataset = pydicom.dcmread(io.BytesIO(make_dicom(image, spacing=SPACING[:2], instance=index + 1, series=uid,
                                                        position=(-100.0, -100.0, SPACING[2] * index),
                                                        **attributes)))
        if number is not None:
            dataset.SeriesNumber = number
        if description is not None:
            dataset.SeriesDescription = description
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_volume, slice_samples) -> Path:
    """archive/
        flair_a.nii.gz         4 slices of the gallery patient
        sub/flair_b.nii        5 other slices
        pngs/<two slices>.png  real PNG slices of the gallery
        pngs/colour.png        a colour picture: segmented, with the input check's warning
        dicom/IM0001..IM0004   a loose series without file extensions (series 3, "AX FLAIR")
        dicom/b_001..003.dcm   a second series (no number or description, no study or frame of reference)
        broken.nii.gz          not gzip at all
        notes.txt              no scan: skipped
    """
    root = tmp_path_factory.mktemp("batch") / "archive"
    (root / "sub").mkdir(parents=True)
    (root / "pngs").mkdir()
    (root / "dicom").mkdir()
    pixels = sample_volume[0]
    (root / "flair_a.nii.gz").write_bytes(gzip.compress(nifti_bytes(pixels[8:12])))
    (root / "sub" / "flair_b.nii").write_bytes(nifti_bytes(pixels[12:17]))
    for entry in slice_samples[:2]:
        shutil.copy(SAMPLES / entry["image"], root / "pngs" / entry["image"])
    phantom = head_phantom(128, 3)
    cv2.imwrite(str(root / "pngs" / "colour.png"), np.dstack([phantom * 0.3, phantom, phantom * 2]).clip(0, 255)
                .astype(np.uint8))
    for index, content in enumerate(series_files(pixels[9:13], SERIES_A, 3, "AX FLAIR", StudyInstanceUID=STUDY_A,
                                                 FrameOfReferenceUID=FRAME_OF_REFERENCE_A), start=1):
        (root / "dicom" / f"IM{index:04d}").write_bytes(content)
    phantom = np.stack([head_phantom(96, seed) * 20 for seed in range(3)])
    for index, content in enumerate(series_files(phantom, SERIES_B), start=1):
        (root / "dicom" / f"b_{index:03d}.dcm").write_bytes(content)
    (root / "broken.nii.gz").write_bytes(b"this is not a gzip file")
    (root / "notes.txt").write_text("scanned on the 3T\n")
    return root


def expected_masks(slice_samples) -> set[str]:
    return {"flair_a_mask.nii.gz", "sub/flair_b_mask.nii.gz", "dicom/series3_AX-FLAIR_mask.nii.gz",
            f"dicom/series_{SERIES_B}_mask.nii.gz",
            "pngs/colour_mask.png", *(f"pngs/{mask_stem(entry['image'])}_mask.png" for entry in slice_samples[:2])}


def masks_under(out: Path) -> dict[str, np.ndarray]:
    """Every mask under ``out``, decoded, by its path relative to ``out``."""
    masks = {}
    for path in sorted(out.rglob("*_mask.*")):
        name = path.relative_to(out).as_posix()
        masks[name] = (np.asarray(nib.load(path).dataobj) if name.endswith(NIFTI_SUFFIX)
                       else read_mask(path.read_bytes(), path.name))
    return masks


def summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        return {(row["input"] + "#" + row["series_uid"]) if row["series_uid"] else row["input"]: row
                for row in reader}


@pytest.fixture(scope="module")
def first_run(archive, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("first") / "out"
    return out, mriseg("predict", str(archive), "--out", str(out), "--device", "cpu")


def test_find_cases_sorts_the_archive_into_cases(archive):
    cases = {case.key: case for case in find_cases([archive])}
    pngs = [f"pngs/{mask_stem(name)}" for name in os.listdir(archive / "pngs")]
    assert set(cases) == {"flair_a", "sub/flair_b", *pngs, "dicom/series3_AX-FLAIR", f"dicom/series_{SERIES_B}",
                          "broken", "notes.txt"}
    series = cases["dicom/series3_AX-FLAIR"]
    assert series.dicom and series.series_uid == SERIES_A and len(series.files) == 4
    assert series.input == str(archive / "dicom")
    assert len(cases[f"dicom/series_{SERIES_B}"].files) == 3
    assert cases["notes.txt"].skipped and not cases["broken"].skipped


def test_loose_series_reads_like_the_zip_of_it(archive):
    files = [(path.name, path.read_bytes()) for path in sorted((archive / "dicom").glob("IM*"))]
    loose = read_dicom_files(files, "dicom")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, content in files:
            zipped.writestr(name + ".dcm", content)
    zipped_volume = read_volume(buffer.getvalue(), "series.zip")
    np.testing.assert_array_equal(loose.pixels, zipped_volume.pixels)
    np.testing.assert_allclose(loose.affine, zipped_volume.affine)
    assert loose.spacing == pytest.approx(SPACING)
    # A DICOM file without an extension is known by its preamble, on its own too.
    assert read_volume(files[0][1], files[0][0]).shape == (1, 256, 256)


@pytest.mark.slow  # the model, or the CLI in a subprocess
def test_segment_case_is_a_pure_function_of_bytes(archive):
    png = next((archive / "pngs").iterdir())
    result = segment_case(png.read_bytes(), png.name, weights=str(WEIGHTS), threshold=0.5, device="cpu")
    assert result.status == OK and result.mask_suffix == "_mask.png" and result.slices == 1
    assert int(read_mask(result.mask, "mask.png").sum()) == result.tumour_voxels
    failed = segment_case(b"not an image", "notes.png", weights=str(WEIGHTS), device="cpu")
    assert failed.status == "failed" and failed.message.startswith("notes.png: not a readable image")
    assert failed.mask is None


@pytest.mark.slow  # the model, or the CLI in a subprocess
def test_predict_segments_a_folder_into_a_mirrored_tree_with_a_summary(first_run, archive, slice_samples):
    out, result = first_run
    assert result.returncode == 1, result.stderr  # the broken file failed, the run went on
    assert "\n1 case(s) failed, listed in" in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {archive / 'broken.nii.gz'}: the gzip data is corrupt or truncated"]
    assert "8 case(s): 7 segmented, 0 already done, 1 failed; 1 file(s) skipped" in result.stdout
    colour = archive / "pngs" / "colour.png"
    assert f"warning: {colour}: This looks like a colour photograph" in result.stderr  # as predict on a file
    masks = masks_under(out)
    assert set(masks) == expected_masks(slice_samples)

    rows = summary(out)
    assert set(rows) == {str(archive / "flair_a.nii.gz"), str(archive / "sub" / "flair_b.nii"),
                         *(str(archive / "pngs" / entry["image"]) for entry in slice_samples[:2]),
                         str(archive / "pngs" / "colour.png"),
                         f"{archive / 'dicom'}#{SERIES_A}", f"{archive / 'dicom'}#{SERIES_B}",
                         str(archive / "broken.nii.gz"), str(archive / "notes.txt")}
    broken = rows[str(archive / "broken.nii.gz")]
    assert broken["status"] == "failed" and "gzip data is corrupt" in broken["message"] and not broken["mask"]
    assert rows[str(archive / "notes.txt")]["status"] == "skipped"
    for row in rows.values():
        if row["status"] != OK:
            continue
        mask = masks[row["mask"]]
        assert int(row["tumour_voxels"]) == int((mask > 0).sum()) and float(row["seconds"]) > 0
        assert row["message"] == ""
    assert rows[str(archive / "pngs" / "colour.png")]["warnings"].startswith("This looks like a colour photograph")
    # Volumes: NIfTI in scanner space, the volume in mL from the spacing; a PNG slice has no volume.
    flair_b = rows[str(archive / "sub" / "flair_b.nii")]
    assert flair_b["slices"] == "5" and masks["sub/flair_b_mask.nii.gz"].shape == (256, 256, 5)
    assert float(flair_b["volume_ml"]) == pytest.approx(int(flair_b["tumour_voxels"]) * 0.8 * 0.8 * 3 / 1000, abs=1e-3)
    assert rows[str(archive / "pngs" / slice_samples[0]["image"])]["volume_ml"] == ""
    series = rows[f"{archive / 'dicom'}#{SERIES_A}"]
    assert series["slices"] == "4" and series["mask"] == "dicom/series3_AX-FLAIR_mask.nii.gz"
    files = [(path.name, path.read_bytes()) for path in sorted((archive / "dicom").glob("IM*"))]
    written = nib.load(out / series["mask"])
    np.testing.assert_allclose(written.affine, read_dicom_files(files, "series").affine)
    assert int(series["tumour_voxels"]) > 0  # the FLAIR slices hold the gallery patient's tumour


def test_a_dicom_series_gets_a_dicom_seg_beside_its_nifti_mask(first_run, archive):
    import highdicom as hd

    out, result = first_run
    seg = hd.seg.segread(out / "dicom" / "series3_AX-FLAIR_seg.dcm")
    assert f"-> {out / 'dicom' / 'series3_AX-FLAIR_mask.nii.gz'} and {out / 'dicom' / 'series3_AX-FLAIR_seg.dcm'}" \
        in result.stdout
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (STUDY_A, FRAME_OF_REFERENCE_A)
    assert {series for _, series, _ in seg.get_source_image_uids()} == {SERIES_A}
    nifti = np.asarray(nib.load(out / "dicom" / "series3_AX-FLAIR_mask.nii.gz").dataobj) > 0
    assert int(seg.pixel_array.sum()) == int(nifti.sum()) > 0
    # The anonymised series: its NIfTI mask, no SEG, and a warning that says why.
    assert not list((out / "dicom").glob(f"series_{SERIES_B}_seg.dcm"))
    assert f"series_{SERIES_B}_mask.nii.gz" in {path.name for path in (out / "dicom").iterdir()}
    assert "no DICOM SEG: the series has no StudyInstanceUID, FrameOfReferenceUID" in result.stderr


@pytest.mark.slow  # the model, or the CLI in a subprocess
def test_a_second_run_skips_the_cases_done(first_run, tmp_path, archive):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*_mask.*")}
    (out / "flair_a_mask.nii.gz").unlink()  # a mask gone: its case is done again
    result = mriseg("predict", str(archive), "--out", str(out), "--device", "cpu", "--no-progress")
    assert result.returncode == 1  # the broken file is tried again, and fails again
    assert "8 case(s): 1 segmented, 6 already done, 1 failed" in result.stdout
    assert "6 case(s) already done" in result.stderr
    after = {path: path.stat().st_mtime_ns for path in out.rglob("*_mask.*")}
    assert set(after) == set(before)
    assert [path.name for path in after if after[path] != before[path]] == ["flair_a_mask.nii.gz"]
    assert summary(out).keys() == summary(first_run[0]).keys()
    assert summary(out)[str(archive / "flair_a.nii.gz")]["status"] == OK

    result = mriseg("predict", str(archive), "--out", str(out), "--device", "cpu", "--no-progress", "--overwrite")
    assert result.returncode == 1 and "8 case(s): 7 segmented, 0 already done, 1 failed" in result.stdout
    redone = {path: path.stat().st_mtime_ns for path in out.rglob("*_mask.*")}
    assert all(redone[path] != after[path] for path in after)
    assert {name: mask.tolist() for name, mask in masks_under(out).items()} == \
        {name: mask.tolist() for name, mask in masks_under(first_run[0]).items()}


@pytest.mark.slow  # the model, or the CLI in a subprocess
def test_a_local_dask_cluster_writes_the_same_masks(first_run, tmp_path, archive):
    out = tmp_path / "out"
    result = mriseg("predict", str(archive), "--out", str(out), "--device", "cpu", "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert "Dask scheduler: tcp://" in result.stderr and "\n1 case(s) failed, listed in" in result.stderr
    assert "8 case(s): 7 segmented, 0 already done, 1 failed" in result.stdout
    local, distributed = masks_under(first_run[0]), masks_under(out)
    assert set(distributed) == set(local)
    for name, mask in local.items():
        np.testing.assert_array_equal(distributed[name], mask, err_msg=name)
    rows, local_rows = summary(out), summary(first_run[0])
    assert rows.keys() == local_rows.keys()
    for key, row in rows.items():
        for column in ("mask", "slices", "tumour_voxels", "volume_ml", "status", "message"):
            assert row[column] == local_rows[key][column], (key, column)


def test_find_cases_leaves_out_the_output_folder_and_refuses_one_mask_for_two_cases(tmp_path):
    from pydicom.dataset import Dataset

    (tmp_path / "out" / "pngs").mkdir(parents=True)
    (tmp_path / "out" / "pngs" / "old_mask.png").write_bytes(b"a mask of an earlier run")
    (tmp_path / "scan.nii").write_bytes(b"a volume")
    (tmp_path / "scan.png").write_bytes(b"a slice")
    directory = Dataset()  # a DICOMDIR-like object: DICOM, but no image
    directory.SOPClassUID = "1.2.840.10008.1.3.10"
    buffer = io.BytesIO()
    directory.save_as(buffer, implicit_vr=False, little_endian=True)
    (tmp_path / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + buffer.getvalue())
    cases = {case.input: case for case in find_cases([tmp_path], exclude=tmp_path / "out")}
    assert set(cases) == {str(tmp_path / name) for name in ("scan.nii", "scan.png", "DICOMDIR")}
    assert cases[str(tmp_path / "scan.nii")].problem is None
    assert "its mask would overwrite the one of" in cases[str(tmp_path / "scan.png")].problem
    assert cases[str(tmp_path / "DICOMDIR")].skipped


@pytest.mark.slow  # the model, or the CLI in a subprocess
def test_predict_sends_the_cases_to_a_running_dask_scheduler(first_run, tmp_path, archive):
    from distributed import LocalCluster

    out = tmp_path / "out"
    # Workers as threads of this process; over TCP, so the command (another process) reaches the scheduler.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = mriseg("predict", str(archive / "pngs"), "--out", str(out), "--device", "cpu",
                        "--scheduler", cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    assert f"Dask scheduler: {cluster.scheduler_address} (1 workers now)" in result.stderr
    local = {name.removeprefix("pngs/"): mask for name, mask in masks_under(first_run[0]).items()
             if name.startswith("pngs/")}
    remote = masks_under(out)
    assert set(remote) == set(local) and len(remote) == 3
    for name, mask in local.items():
        np.testing.assert_array_equal(remote[name], mask, err_msg=name)
