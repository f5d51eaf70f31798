"""The masks of every threshold step, packed for the browser: exactly binarize's masks, in bounded memory."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from mriseg.app.threshold_view import THRESHOLD_STEPS, threshold_masks, unpack_step
from mriseg.postprocessing import PostprocessingConfig, binarize

POSTPROCESSING = PostprocessingConfig(threshold=0.4, min_component_fraction=0.002, min_volume_fraction=0.2,
                                      fill_holes=True)


def tumour_like(slices: int = 6, side: int = 96) -> np.ndarray:
    """Probabilities with what the filters act on: a graded blob with a dark core (a hole to fill), a small far
    blob (dropped by the 3D filter) and specks (dropped by the 2D filter)."""
    z, y, x = np.mgrid[:slices, :side, :side]
    distance = np.sqrt(((z - slices / 2) * 8) ** 2 + (y - 40) ** 2 + (x - 44) ** 2)
    probabilities = np.clip(1.0 - distance / 30, 0, 1)
    probabilities[np.abs(distance - 4) < 2] = np.maximum(probabilities[np.abs(distance - 4) < 2], 0.95)
    probabilities[distance < 3] = 0.02  # the core, below every step
    probabilities[1:3, 80:84, 80:84] = 0.9  # far, small
    probabilities[4, 5, 5] = 0.99  # a speck
    return probabilities.astype(np.float32)


def test_every_step_of_every_slice_is_binarize_at_that_threshold():
    probabilities = tumour_like()
    masks = threshold_masks(probabilities, POSTPROCESSING)
    for step in (0, 10, 35, 45, 60, 90):
        expected = binarize(probabilities, POSTPROCESSING, THRESHOLD_STEPS[step])
        for index in range(len(probabilities)):
            picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(masks.slice_png(index), np.uint8),
                                                cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert np.array_equal(unpack_step(picture, masks.tiles, step), expected[index]), (step, index)
            assert masks.slice_counts[index, step] == expected[index].sum()
    assert masks.volume_counts[45] == binarize(probabilities, POSTPROCESSING, 0.5).sum()


def test_filled_hole_and_dropped_blob_are_what_the_browser_draws():
    probabilities = tumour_like()
    masks = threshold_masks(probabilities, POSTPROCESSING)
    middle = masks.slice_picture(3)
    step = THRESHOLD_STEPS.index(0.5)
    assert unpack_step(middle, masks.tiles, step)[40, 44]  # the core, filled
    assert not unpack_step(masks.slice_picture(1), masks.tiles, step)[80:84, 80:84].any()  # the far blob, dropped


def test_an_empty_prediction_gives_empty_pictures_of_the_slice_size():
    masks = threshold_masks(np.zeros((3, 40, 50), np.float32), POSTPROCESSING)
    assert masks.box is None and not masks.slice_counts.any()
    assert masks.slice_picture(2).shape == (40, 50 * masks.tiles, 3) and not masks.slice_picture(2).any()


@pytest.mark.parametrize("probability", [0.9, 0.5])
def test_memory_is_bytes_a_voxel_not_a_mask_per_step(probability):
    """A model firing everywhere (a hostile or out-of-domain volume) must not cost one mask per threshold step:
    91 bytes a voxel would take a 33 M-voxel volume to 3 GiB."""
    probabilities = np.full((8, 160, 160), probability, np.float32)
    voxels = probabilities.size
    tracemalloc.start()
    try:
        masks = threshold_masks(probabilities, POSTPROCESSING)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert masks.volume_counts[0] == voxels
    assert peak / voxels < 30, f"{peak / voxels:.1f} bytes a voxel"
    assert masks.nbytes / voxels < 13
