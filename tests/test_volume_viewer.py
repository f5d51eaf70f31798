"""The volume viewer's files: the masks' code volume gives every threshold step's mask exactly, on the scan's grid
and in the RAS order and affine of the NIfTI the browser reads."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
from helpers import SAMPLES

from mriseg.app.threshold_view import THRESHOLD_STEPS, threshold_masks, unpack_step
from mriseg.app.volume_viewer import UNKNOWN_SLICE_STRETCH, slice_codes, viewer_files
from mriseg.data.io import read_volume, slices_to_ras
from mriseg.postprocessing import binarize

VOLUME = SAMPLES / "TCGA_CS_4942_19970222_volume.tif"


def step_intervals(masks) -> tuple[np.ndarray, int]:
    """Every slice's code stacked, and the voxels whose steps are no interval."""
    codes = list(slice_codes(masks))
    return np.stack([code for code, _ in codes]), sum(count for _, count in codes)


def decode(code: np.ndarray, step: int) -> np.ndarray:
    """What volume_viewer.js draws at ``step``."""
    first, end = code & 255, code >> 8
    return (code != 0) & (first <= step) & (step < end)


def test_the_code_gives_every_steps_mask_of_the_gallery_volume(segmenter):
    volume = read_volume(VOLUME.read_bytes(), VOLUME.name)
    probabilities = segmenter.predict(volume.pixels).mean
    masks = threshold_masks(probabilities, segmenter.postprocessing)
    code, inexact = step_intervals(masks)
    assert inexact == 0
    for step, threshold in enumerate(THRESHOLD_STEPS):
        expected = binarize(probabilities, segmenter.postprocessing, threshold)
        np.testing.assert_array_equal(decode(code, step), expected, err_msg=f"step {step}")
    index = int(np.argmax(masks.slice_counts[:, 40]))
    np.testing.assert_array_equal(decode(code, 40)[index], unpack_step(masks.slice_picture(index), masks.tiles, 40))


def test_a_voxel_dropped_at_a_middle_step_is_counted_as_inexact():
    from mriseg.app.threshold_view import STEP_BYTES, ThresholdMasks

    on = np.zeros((len(THRESHOLD_STEPS), 1, 1, 2), bool)
    on[:30, 0, 0, 0] = True  # an interval: exact
    on[:10, 0, 0, 1] = on[20:30, 0, 0, 1] = True  # dropped at steps 10-19: no interval
    bits = np.packbits(on, axis=0)[:STEP_BYTES]
    masks = ThresholdMasks((1, 1, 2), (slice(0, 1), slice(0, 1), slice(0, 2)), bits,
                           on.sum(axis=(2, 3)).T.astype(np.int64))
    code, inexact = step_intervals(masks)
    assert inexact == 1
    assert decode(code, 29)[0, 0].tolist() == [True, True] and not decode(code, 30)[0, 0].any()


def test_files_are_the_scan_and_code_in_ras_order_on_one_affine(segmenter):
    volume = read_volume(VOLUME.read_bytes(), VOLUME.name)
    masks = threshold_masks(segmenter.predict(volume.pixels).mean, segmenter.postprocessing)
    files = viewer_files(volume, masks)
    scan = nib.Nifti1Image.from_bytes(gzip.decompress(files.scan))
    code = nib.Nifti1Image.from_bytes(gzip.decompress(files.code))
    assert scan.shape == code.shape == slices_to_ras(volume.pixels).shape
    np.testing.assert_array_equal(scan.affine, code.affine)
    # A TIFF records no spacing: square pixels, slices drawn 4 pixels apart.
    np.testing.assert_array_equal(np.diag(scan.affine)[:3], [1.0, 1.0, UNKNOWN_SLICE_STRETCH])
    assert np.asarray(scan.dataobj).dtype == np.uint8
    # The brightest voxels of the scan lie where the input's do, in RAS order.
    brightest = np.unravel_index(np.argmax(volume.pixels), volume.shape)
    ras = slices_to_ras(np.arange(volume.pixels.size).reshape(volume.shape))
    assert np.asarray(scan.dataobj)[np.nonzero(ras == np.ravel_multi_index(brightest, volume.shape))][0] == 255
    np.testing.assert_array_equal(np.asarray(code.dataobj), slices_to_ras(step_intervals(masks)[0]))
