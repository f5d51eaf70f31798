"""The app's memory budget per session, measured on the app process (``tests/app_memory.py``) for the worst files:
the largest volume mriseg accepts, with the uncertainty toggle on, and hostile files that must be refused cheaply."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import nibabel as nib
import numpy as np
import pytest
from helpers import (
    REPO_ROOT,
    SAMPLES,
    dicom_declaring,
    png_with_chunk,
    tiff_pages,
    write_nifti_gz,
    write_zip_of_zeros,
)

from mriseg.data.io import MAX_VOXELS, SESSION_MEMORY_BUDGET, read_volume

pytestmark = pytest.mark.slow

BUDGET_MIB = SESSION_MEMORY_BUDGET >> 20
# A refused file costs the session its own bytes and little more.
REFUSAL_MIB = 160


def app_memory(*paths, tta: bool = False) -> list[dict]:
    command = [sys.executable, str(REPO_ROOT / "tests" / "app_memory.py"), *map(str, paths)]
    run = subprocess.run(command + (["--tta"] if tta else []), capture_output=True, text=True, timeout=900,
                         cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def brain_volume_at_the_limit(path) -> None:
    """The gallery patient stretched to 512x512 and as many slices as the voxel limit allows: a real brain, so the
    model marks a real tumour through many slices."""
    stack = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume.tif").read_bytes(), "volume.tif").pixels
    slices = MAX_VOXELS // (512 * 512)
    positions = np.linspace(0, len(stack) - 1, slices).round().astype(int)
    volume = np.stack([cv2.resize(stack[index], (512, 512)) for index in positions]).astype(np.int16)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), np.diag([0.45, 0.45, 1.0, 1.0])),
             str(path))


def test_the_largest_volume_accepted_stays_within_the_session_budget(tmp_path):
    path = tmp_path / "largest.nii.gz"
    brain_volume_at_the_limit(path)
    [result] = app_memory(path, tta=True)
    assert result["error"] is None and not result["exception"], result
    assert result["peak_over_idle_mib"] <= BUDGET_MIB, result


def test_hostile_files_are_refused_before_they_cost_the_server(tmp_path):
    files = {
        "frames.dcm": dicom_declaring(256, 256, 999, 100),
        "wide.dcm": dicom_declaring(4096, 4096, 1, 100),
        "pages.tif": tiff_pages([13000] * 5 + [64]),
        "chunk.png": png_with_chunk(b"zTXt", 200 << 20),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_nifti_gz(tmp_path / "big.nii.gz", (512, 512, 256))
    write_zip_of_zeros(tmp_path / "series.zip", 1 << 30)
    paths = [tmp_path / name for name in (*files, "big.nii.gz", "series.zip")]
    for path, result in zip(paths, app_memory(*paths), strict=True):
        assert result["error"] and result["error"].startswith(path.name), result
        assert not result["exception"], result
        assert result["peak_over_idle_mib"] <= REFUSAL_MIB, result
