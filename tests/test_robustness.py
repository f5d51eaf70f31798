"""Robustness copies of LGG patients (skull-stripped, resampled, BraTS-like) and evaluation on them."""

import numpy as np
import pytest

from mriseg.data.brain_extraction import strip_skull
from mriseg.evaluation.report import evaluate
from mriseg.evaluation.robustness import make_variant
from mriseg.preprocessing import PreprocessingConfig, Preprocessor, darken_masked_background, masked_background


def test_resampled_copy_keeps_the_tumour_in_physical_size(sample_volume):
    volume, truth = sample_volume
    image, mask = make_variant(volume, truth, "resampled")
    assert image.shape == ((len(volume) - 1) * 3 + 1, 240, 240) == mask.shape
    # 0.8 x 0.8 in-plane and three slices per original slice.
    assert mask.sum() / truth.sum() == pytest.approx(0.8 * 0.8 * 3, rel=0.1)


def test_brats_like_copy_is_z_scored_brain_on_zero(sample_volume):
    volume, truth = sample_volume
    image, mask = make_variant(volume, truth, "brats-like")
    middle = image[len(image) // 2]
    assert masked_background(middle) == 0.0
    brain = image != 0
    assert abs(float(image[brain].mean())) < 0.05 and float(image[brain].std()) == pytest.approx(1.0, abs=0.05)
    assert (image[mask] != 0).mean() > 0.99


def test_masked_background_reads_as_dark_like_a_stripped_scan(sample_volume):
    volume, truth = sample_volume
    stripped, done = strip_skull(volume, truth)
    stripped = stripped[done]
    brain = stripped != stripped.min()
    zscored = np.where(brain, (stripped - stripped[brain].mean()) / stripped[brain].std(), 0.0).astype(np.float32)
    darkened = darken_masked_background(zscored)
    assert (darkened[~brain] == darkened.min()).all()
    # The model sees the z-scored copy as it sees the stripped one: normalisation is scale- and offset-free.
    pre = Preprocessor(PreprocessingConfig(grid_size=128, normalize_over="volume"))
    np.testing.assert_allclose(pre.volume_to_input(zscored), pre.volume_to_input(stripped), atol=0.05)


def test_ordinary_volume_is_left_alone(sample_volume):
    volume, _ = sample_volume
    assert darken_masked_background(volume) is not None
    np.testing.assert_array_equal(darken_masked_background(volume), volume)


@pytest.mark.slow
def test_evaluate_scores_a_variant(kaggle_folder, segmenter):
    report = evaluate(kaggle_folder, segmenter, patients=["TCGA_HT_8563_19981209"], variant="skull-stripped")
    assert report["variant"] == "skull-stripped"
    assert report["n_patients"] == 1 and 0.0 <= report["per_volume_dice"]["mean"] <= 1.0
    with pytest.raises(ValueError, match="variant must be one of"):
        make_variant(np.zeros((1, 64, 64)), np.zeros((1, 64, 64), bool), "sideways")
