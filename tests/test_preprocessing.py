"""Preprocessing: intensity-scale invariance, grid placement, and PNG/DICOM parity through the real model."""

import numpy as np
import pytest
from helpers import SAMPLES, head_phantom, make_dicom

from mriseg.data.io import read_mask, read_volume
from mriseg.metrics import dice
from mriseg.preprocessing import PreprocessingConfig, Preprocessor, RobustNormalize, ToGrid, stack_context


def test_normalisation_ignores_intensity_scale_and_offset():
    image = head_phantom(128)
    normalize = RobustNormalize()
    np.testing.assert_allclose(normalize(image), normalize(image * 37.5 + 1000), atol=1e-4)


def test_head_statistics_not_background():
    image = head_phantom(128)
    normalized = RobustNormalize()(image)
    head = image > 50
    assert abs(float(normalized[head].mean())) < 0.05
    # The background is clipped to the darkest head level, not allowed to stretch the scale.
    assert normalized[~head].max() <= normalized[head].min() + 1e-6


def test_constant_slice_does_not_divide_by_zero():
    assert np.all(np.isfinite(RobustNormalize()(np.zeros((64, 64), np.float32))))


@pytest.mark.parametrize("shape", [(256, 256), (200, 173), (97, 300)])
def test_grid_round_trip_restores_original_size(shape):
    to_grid = ToGrid(128)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    grid = to_grid(image)
    assert grid.shape == (128, 128)
    restored = to_grid.restore(grid, to_grid.placement(*shape))
    assert restored.shape == shape


def test_mask_to_grid_keeps_area():
    mask = np.zeros((256, 256), np.float32)
    mask[100:140, 60:120] = 1
    grid_mask = Preprocessor(PreprocessingConfig(grid_size=128)).mask_to_grid(mask)
    assert grid_mask.sum() * 4 == pytest.approx(mask.sum(), rel=0.01)


@pytest.mark.slow
def test_png_and_rescaled_16bit_dicom_give_the_same_mask(segmenter, slice_samples):
    """The classic drift bug: the same slice stored two ways must segment the same."""
    entry = max(slice_samples, key=lambda e: e["tumour_pixels"])
    png = (SAMPLES / entry["image"]).read_bytes()
    png_volume = read_volume(png, entry["image"])
    stored = (png_volume.pixels[0] * 97 + 13).astype(np.uint16)  # a 16-bit range with an offset
    dicom_volume = read_volume(make_dicom(stored, slope=0.25, intercept=-50), "same_slice.dcm")
    png_mask = segmenter.segment(png_volume.pixels)
    dicom_mask = segmenter.segment(dicom_volume.pixels)
    truth = read_mask((SAMPLES / entry["mask"]).read_bytes(), entry["mask"])
    assert png_mask.sum() > 0.3 * truth.sum(), "the model should find this large tumour"
    assert dice(png_mask, dicom_mask) >= 0.95


def test_context_stacks_neighbours_and_repeats_at_the_ends():
    grid = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    stacked = stack_context(grid, 2)
    assert stacked.shape == (4, 5, 8, 8)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    assert stack_context(grid[:1], 1)[0, :, 0, 0].tolist() == [0, 0, 0]  # a lone slice is its own context
    assert stack_context(grid, 0).shape == (4, 1, 8, 8)


def test_slice_input_matches_the_whole_volume_input():
    volume = np.stack([head_phantom(96, seed=seed) for seed in range(5)])
    preprocessor = Preprocessor(PreprocessingConfig(grid_size=64, context_slices=1))
    whole = preprocessor.volume_to_input(volume)
    assert whole.shape == (5, 3, 64, 64)
    for index in (0, 2, 4):
        np.testing.assert_array_equal(preprocessor.slice_input(volume, index), whole[index])


def test_configs_from_before_context_read_as_one_slice():
    config = PreprocessingConfig.from_dict({"grid_size": 128, "clip_low": 0.5, "clip_high": 99.5, "head_fraction": 0.1})
    assert config.context_slices == 0 and config.input_channels == 1


def test_volume_normalisation_keeps_a_brighter_slice_brighter():
    """By slice, every slice is z-scored against itself; by volume, a slice keeps its place in the volume."""
    volume = np.stack([head_phantom(96, seed=seed) for seed in range(3)])
    volume[2] *= 1.5
    head = volume[0] > 50
    preprocessor = Preprocessor(PreprocessingConfig(grid_size=96))
    by_slice, by_volume = preprocessor.normalize_volume(volume), preprocessor.normalize_volume(volume, "volume")
    assert by_slice[2][head].mean() == pytest.approx(by_slice[0][head].mean(), abs=0.05)
    assert by_volume[2][head].mean() > by_volume[0][head].mean() + 0.5
    # Still blind to the file's intensity scale, now as a whole volume.
    np.testing.assert_allclose(RobustNormalize().volume(volume), RobustNormalize().volume(volume * 9 + 4), atol=1e-4)
    # Blank slices beyond the head (a 3D scan's ends) do not shift the statistics of the others.
    padded = np.concatenate([np.zeros((4, 96, 96), np.float32), volume, np.zeros((2, 96, 96), np.float32)])
    np.testing.assert_allclose(RobustNormalize().volume(padded)[4:7], RobustNormalize().volume(volume), atol=1e-5)


def test_a_lone_slice_is_its_own_volume():
    image = head_phantom(80)
    by_volume = Preprocessor(PreprocessingConfig(grid_size=64, normalize_over="volume"))
    np.testing.assert_allclose(by_volume.slice_to_grid(image), Preprocessor(PreprocessingConfig(grid_size=64))
                               .slice_to_grid(image), atol=1e-5)


def test_slice_input_normalised_by_the_volume_sees_every_slice():
    volume = np.stack([head_phantom(96, seed=seed) * (1 + seed) for seed in range(5)])
    preprocessor = Preprocessor(PreprocessingConfig(grid_size=64, context_slices=1, normalize_over="volume"))
    whole = preprocessor.volume_to_input(volume)
    for index in (0, 2, 4):
        np.testing.assert_array_equal(preprocessor.slice_input(volume, index), whole[index])


def test_unknown_normalisation_is_named():
    with pytest.raises(ValueError, match="normalize_over.*'patient'"):
        PreprocessingConfig(normalize_over="patient")
    assert PreprocessingConfig.from_dict({"grid_size": 128}).normalize_over == "slice"


def test_slice_and_volume_normalisation_side_by_side():
    volume = np.stack([head_phantom(96, seed=seed) * (1 + seed) for seed in range(3)])
    both = Preprocessor(PreprocessingConfig(grid_size=64, context_slices=1, normalize_over="slice+volume"))
    assert both.config.input_channels == 6
    stacked = both.volume_to_input(volume)
    for part, over in enumerate(("slice", "volume")):
        alone = Preprocessor(PreprocessingConfig(grid_size=64, context_slices=1, normalize_over=over))
        np.testing.assert_array_equal(stacked[:, 3 * part : 3 * part + 3], alone.volume_to_input(volume))
