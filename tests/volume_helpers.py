"""A BraTS-size volume for the volume tests and benchmark: a gallery validation patient made BraTS-like."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
PATIENT = REPO_ROOT / "samples" / "TCGA_CS_4942_19970222_volume.tif"
BRATS_SLICES = 155


def brats_size_volume() -> np.ndarray:
    """(155, 240, 240) float32: the gallery's 20-slice patient skull-stripped, resampled to 1 mm and z-scored
    (:func:`mriseg.evaluation.robustness.make_variant` "brats-like"), its slices interpolated to BraTS's 155."""
    from mriseg.data.io import read_volume
    from mriseg.evaluation.robustness import make_variant

    pixels = read_volume(PATIENT.read_bytes(), PATIENT.name).pixels
    volume, _ = make_variant(pixels, np.zeros(pixels.shape, bool), "brats-like")
    positions = np.linspace(0, len(volume) - 1, BRATS_SLICES)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, len(volume) - 1)
    weight = (positions - below)[:, None, None]
    return ((1 - weight) * volume[below] + weight * volume[above]).astype(np.float32)


def write_brats_size_nifti(path: Path) -> Path:
    """The BraTS-size volume as a 1 mm NIfTI (x, y, z order: slices along the last axis), as BraTS ships it."""
    nib.save(nib.Nifti1Image(brats_size_volume().transpose(2, 1, 0), np.eye(4)), str(path))
    return path
