import numpy as np

from mriseg.postprocessing import PostprocessingConfig, binarize, keep_main_components, remove_small_components


def test_small_components_are_removed_large_kept():
    mask = np.zeros((2, 50, 50), bool)
    mask[0, 5:25, 5:25] = True  # 400 px
    mask[0, 40, 40] = True  # a speck
    mask[1, 30:33, 30:33] = True  # 9 px
    cleaned = remove_small_components(mask, min_area=10)
    assert cleaned[0, 5:25, 5:25].all()
    assert not cleaned[0, 40, 40]
    assert not cleaned[1].any()


def test_binarize_threshold_override_and_fraction():
    probabilities = np.zeros((1, 100, 100), np.float32)
    probabilities[0, 10:30, 10:30] = 0.6  # 400 px
    probabilities[0, 70:72, 70:72] = 0.9  # 4 px
    config = PostprocessingConfig(threshold=0.5, min_component_fraction=0.001)  # 10 px
    mask = binarize(probabilities, config)
    assert mask.sum() == 400
    assert binarize(probabilities, config, threshold=0.7).sum() == 0
    assert binarize(probabilities, PostprocessingConfig(threshold=0.5)).sum() == 404


def test_3d_filter_keeps_the_main_mass_and_big_satellites():
    mask = np.zeros((6, 40, 40), bool)
    mask[1:5, 10:25, 10:25] = True  # main mass, 900 px
    mask[0, 35:38, 35:38] = True  # a stray blob on another slice, 9 px (1 %)
    mask[3:5, 30:40, 0:5] = True  # a satellite, 100 px (11 %)
    kept = keep_main_components(mask, 0.05)
    assert kept[1:5, 10:25, 10:25].all() and kept[3:5, 30:40, 0:5].all() and not kept[0].any()
    assert keep_main_components(mask, 0.2).sum() == 900
    assert keep_main_components(mask, 0.0).sum() == mask.sum()
    single_slice = mask[:1] | mask[1:2]
    assert (keep_main_components(single_slice, 0.5) == single_slice).all()  # 2D input is left alone


def test_binarize_applies_the_3d_filter_only_when_configured():
    probabilities = np.zeros((3, 30, 30), np.float32)
    probabilities[0:2, 5:15, 5:15] = 0.9
    probabilities[2, 25:28, 25:28] = 0.9
    assert binarize(probabilities, PostprocessingConfig(min_volume_fraction=0.2)).sum() == 200
    assert binarize(probabilities, PostprocessingConfig()).sum() == 209


def test_enclosed_core_filled_only_when_configured():
    probabilities = np.zeros((1, 60, 60), np.float32)
    probabilities[0, 10:40, 10:40] = 0.9
    probabilities[0, 20:30, 20:30] = 0.1  # a dark core the network leaves out
    assert not binarize(probabilities, PostprocessingConfig()).any(axis=0)[25, 25]
    filled = binarize(probabilities, PostprocessingConfig(fill_holes=True))
    assert filled[0, 25, 25] and filled.sum() == 900
