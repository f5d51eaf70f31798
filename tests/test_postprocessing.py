import numpy as np

from mriseg.postprocessing import PostprocessingConfig, binarize, remove_small_components


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
