"""Skull-stripped training copies: on a real LGG volume the brain is kept, the scalp goes, the tumour stays."""

import numpy as np

from mriseg.data.brain_extraction import brain_mask, strip_skull


def test_most_slices_through_the_brain_are_stripped(sample_volume):
    volume, truth = sample_volume
    stripped, done = strip_skull(volume, truth)
    middle = slice(len(volume) // 4, 3 * len(volume) // 4)
    assert done[middle].mean() >= 0.8
    # Unstripped slices are returned as they were.
    np.testing.assert_array_equal(stripped[~done], volume[~done])


def test_scalp_removed_brain_and_tumour_kept(sample_volume):
    volume, truth = sample_volume
    stripped, done = strip_skull(volume, truth)
    index = int(np.argmax(truth.sum(axis=(1, 2)) * done))
    image, kept = volume[index], stripped[index] != volume.min()
    head = image > 0.1 * image.max()
    rows, cols = np.nonzero(head)
    # The head's outermost pixels (the scalp) are gone, the centre of the head stays.
    assert not kept[rows.min(), cols[rows == rows.min()][0]]
    assert kept[(rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2]
    assert 0.3 < kept.sum() / head.sum() < 0.9
    assert kept[truth[index]].all()
    np.testing.assert_array_equal(stripped[index][truth[index]], image[truth[index]])


def test_blank_slice_has_no_brain():
    assert brain_mask(np.zeros((128, 128), np.float32)) is None
