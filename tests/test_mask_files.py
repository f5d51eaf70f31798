"""Mask files in and out: label masks (BraTS) read with the labels chosen, and NIfTI masks written in the input's
own voxel order, so numpy comparisons of input and mask line up voxel for voxel."""

from __future__ import annotations

import gzip
import io

import cv2
import nibabel as nib
import numpy as np
import pytest
from helpers import SAMPLES, head_phantom
from PIL import Image

from mriseg.data.io import labels_to_mask, mask_to_nifti, read_label_mask, read_mask, read_volume
from mriseg.errors import InputError
from mriseg.metrics import dice

LPS = np.diag([-0.9, -1.1, 2.0, 1.0])  # how BraTS stores its volumes: x and y run the other way from RAS+


def brats_labels(shape=(48, 40, 12)) -> np.ndarray:
    """A (x, y, z) BraTS-style label volume: oedema (2) around an enhancing rim (4) around a necrotic core (1)."""
    x, y, z = np.indices(shape)
    distance = np.sqrt((x - 20) ** 2 + (y - 22) ** 2 + ((z - 6) * 2.5) ** 2)
    return np.select([distance < 4, distance < 8, distance < 13], [1, 4, 2], 0).astype(np.uint8)


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def loaded(data: bytes, tmp_path, name: str) -> nib.Nifti1Image:
    """The file as a challenge script opens it: from disk, with nib.load."""
    path = tmp_path / name
    path.write_bytes(data)
    return nib.load(path)


class TestLabelMasks:
    def test_brats_label_file_counts_the_whole_tumour(self):
        labels_xyz = brats_labels()
        data = nifti_bytes(labels_xyz, LPS)
        labels, values = read_label_mask(data, "seg.nii.gz")
        assert values == (1, 2, 4)
        whole = read_mask(data, "seg.nii.gz")
        assert int(whole.sum()) == int((labels_xyz > 0).sum())  # not only labels 3-4, as a midpoint cut gave
        assert int(labels_to_mask(labels, (1, 4)).sum()) == int(np.isin(labels_xyz, (1, 4)).sum())
        assert int(labels_to_mask(labels, (4,)).sum()) == int((labels_xyz == 4).sum())

    def test_labels_0_to_4_in_a_png(self):
        labels_2d = np.zeros((64, 64), np.uint8)
        for value in range(1, 5):
            labels_2d[8 * value : 8 * value + 6, 10:50] = value
        labels, values = read_label_mask(cv2.imencode(".png", labels_2d)[1].tobytes(), "labels.png", (1, 64, 64))
        assert values == (1, 2, 3, 4)
        np.testing.assert_array_equal(labels[0], labels_2d)

    def test_binary_mask_with_jpeg_noise_reads_as_before(self):
        mask = np.zeros((96, 96), bool)
        mask[30:60, 20:70] = True
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, "JPEG", quality=70)
        labels, values = read_label_mask(buffer.getvalue(), "mask.jpg")
        assert values == (1,)
        assert dice(labels[0] > 0, mask) > 0.99

    @pytest.mark.parametrize("top", [40, 255])
    def test_grey_picture_is_still_refused(self, top):
        picture = np.tile(np.linspace(0, top, 64).round().astype(np.uint8), (64, 1))  # small whole numbers too
        with pytest.raises(InputError, match="not a binary mask"):
            read_label_mask(cv2.imencode(".png", picture)[1].tobytes(), "grey.png")
        with pytest.raises(InputError, match="not a binary mask"):
            read_mask(cv2.imencode(".png", (head_phantom(64) * 255).astype(np.uint8))[1].tobytes(), "head.png")


def sagittal_stored() -> np.ndarray:
    """Voxel axes (i, j, k) along (anterior, superior, left): a sagittal acquisition, not oblique."""
    return np.array([[0, 0, -1.2, 10], [0.9, 0, 0, -20], [0, 1.1, 0, 5], [0, 0, 0, 1]], float)


class TestMaskVoxelOrder:
    @pytest.mark.parametrize(("affine", "shape"), [
        (LPS, (48, 40, 12)),
        (sagittal_stored(), (40, 14, 36)),
        (np.diag([1.0, 1.0, 3.0, 1.0]), (48, 40, 12)),  # RAS+: as before
        (LPS, (48, 40)),  # one slice, stored 2D
        (LPS, (48, 40, 12, 1)),  # 4D with one volume
    ])
    def test_mask_lines_up_with_the_input_array(self, tmp_path, affine, shape):
        scan = np.random.default_rng(0).random(shape).astype(np.float32)
        volume = read_volume(nifti_bytes(scan, affine), "flair.nii.gz")
        written = loaded(mask_to_nifti(volume.pixels > 0.8, volume), tmp_path, "flair_mask.nii.gz")
        source = loaded(nifti_bytes(scan, affine), tmp_path, "flair.nii.gz")
        assert written.shape == source.shape
        np.testing.assert_array_equal(written.get_fdata() > 0, source.get_fdata() > 0.8)
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.header["descrip"].item() == b"mriseg mask, voxel order and affine of the input"

    def test_brats_truth_and_mask_agree_in_numpy(self, tmp_path):
        """A mask predicted to be exactly the label file's tumour scores Dice 1 against it, array against array."""
        labels_xyz = brats_labels()
        scan = nifti_bytes(np.where(labels_xyz > 0, 900.0, 100.0).astype(np.float32), LPS)
        volume = read_volume(scan, "flair.nii.gz")
        truth = read_mask(nifti_bytes(labels_xyz, LPS), "seg.nii.gz", volume.shape)
        written = loaded(mask_to_nifti(truth, volume), tmp_path, "mask.nii.gz")
        assert dice(written.get_fdata() > 0, labels_xyz > 0) == 1.0

    def test_dicom_and_raster_masks_stay_in_ras_order(self, tmp_path):
        volume = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume.tif").read_bytes(), "volume.tif")
        written = loaded(mask_to_nifti(volume.pixels > 100, volume), tmp_path, "mask.nii.gz")
        assert written.header["descrip"].item() == b"mriseg mask, RAS+ voxel order (axial slices)"
        assert nib.aff2axcodes(written.affine) == ("R", "A", "S")


@pytest.mark.slow  # the model, in a subprocess
def test_predict_writes_the_mask_of_an_lps_nifti_in_its_voxel_order(tmp_path, sample_volume):
    from test_cli import mriseg

    pixels, truth = sample_volume
    # The gallery patient stored as BraTS stores volumes: (x, y, z) running left, posterior, superior.
    to_lps = (slice(None, None, -1), slice(None, None, -1), slice(None))
    scan_xyz = np.transpose(pixels, (2, 1, 0))[:, ::-1, ::-1][to_lps]
    truth_xyz = np.transpose(truth, (2, 1, 0))[:, ::-1, ::-1][to_lps]
    (tmp_path / "flair.nii.gz").write_bytes(nifti_bytes(np.ascontiguousarray(scan_xyz), LPS))
    result = mriseg("predict", str(tmp_path / "flair.nii.gz"), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    written = nib.load(tmp_path / "out" / "flair_mask.nii.gz")
    assert written.shape == scan_xyz.shape
    np.testing.assert_allclose(written.affine, nib.load(tmp_path / "flair.nii.gz").affine)
    assert dice(written.get_fdata() > 0, truth_xyz) > 0.7  # as a challenge script compares them, no reorienting
