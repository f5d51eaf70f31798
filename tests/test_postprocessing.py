import numpy as np

from mriseg.postprocessing import (
    PostprocessingConfig,
    binarize,
    keep_main_components,
    remove_small_components,
    removed_regions,
)


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


def test_removed_regions_say_what_each_filter_dropped_and_why():
    probabilities = np.zeros((6, 100, 100), np.float32)
    probabilities[1:5, 10:40, 10:40] = 0.7  # the main mass, 3,600 voxels
    probabilities[3:5, 70:75, 70:75] = 0.95  # a confident blob of 50 voxels: under 20% of the mass
    probabilities[0, 90:92, 90:92] = 0.9  # a 4-pixel speck: under 0.2% of the slice (20 px)
    config = PostprocessingConfig(threshold=0.5, min_component_fraction=0.002, min_volume_fraction=0.2)
    regions = removed_regions(probabilities, config)
    assert regions == [
        {"first_slice": 3, "last_slice": 4, "voxels": 50, "peak": np.float32(0.95), "reason": "volume"},
        {"first_slice": 0, "last_slice": 0, "voxels": 4, "peak": np.float32(0.9), "reason": "speck"},
    ]
    kept = binarize(probabilities, config)
    assert int(kept.sum()) + sum(r["voxels"] for r in regions) == int((probabilities >= 0.5).sum())
    assert removed_regions(probabilities, config, threshold=0.96) == []
    # One slice: no 3D filter, so only the speck goes.
    assert [r["reason"] for r in removed_regions(probabilities[3:4], config)] == []
    assert [r["reason"] for r in removed_regions(probabilities[:1], config)] == ["speck"]


def _tumour_and_blob(blob_value: float, blob_slices: slice, blob_side: int) -> np.ndarray:
    """A tumour over eight slices (peak 0.95, 1,600 voxels) and a square blob far from it."""
    probabilities = np.zeros((10, 96, 96), np.float32)
    probabilities[1:9, 10:20, 10:30] = 0.8
    probabilities[3:6, 12:18, 15:25] = 0.95
    probabilities[blob_slices, 50 : 50 + blob_side, 50 : 50 + blob_side] = blob_value
    return probabilities


BASELINE = PostprocessingConfig(threshold=0.4, min_component_fraction=0.002, min_volume_fraction=0.2, fill_holes=True)


def test_volume_options_are_off_by_default_and_change_nothing():
    from dataclasses import replace

    from mriseg.postprocessing import fill_enclosed

    assert PostprocessingConfig.from_dict(BASELINE.to_dict() | {"volume_score": "voxels"}) == BASELINE
    assert not BASELINE.judges_volumes
    rng = np.random.default_rng(7)
    for _ in range(5):
        noise = rng.random((6, 64, 64)).astype(np.float32)
        probabilities = np.clip(noise ** 6 + _tumour_and_blob(0.9, slice(2, 3), 8)[2:8, 16:80, 16:80], 0, 1)
        expected = keep_main_components(remove_small_components(
            fill_enclosed(probabilities >= 0.4), round(0.002 * 64 * 64)), 0.2)
        assert np.array_equal(binarize(probabilities, BASELINE), expected)
        # an option set to its off value takes the old path too
        assert np.array_equal(binarize(probabilities, replace(BASELINE, min_peak_probability=0.0)), expected)


def test_a_small_confident_far_blob_goes_by_its_extent_not_by_its_peak():
    # 400 voxels on one slice, a quarter of the tumour: the voxel rule keeps it, and so does any peak level
    probabilities = _tumour_and_blob(0.99, slice(8, 9), 20)
    blob = np.zeros(probabilities.shape, bool)
    blob[8, 50:70, 50:70] = True
    assert binarize(probabilities, BASELINE)[blob].all()
    assert binarize(probabilities, PostprocessingConfig(**BASELINE.to_dict() | {"min_peak_probability": 0.9}))[
        blob].all()
    extent = PostprocessingConfig(**BASELINE.to_dict() | {"volume_score": "mass_x_slices",
                                                           "min_volume_fraction": 0.117})
    kept = binarize(probabilities, extent)
    assert not kept[blob].any()
    assert np.array_equal(kept, binarize(probabilities, BASELINE) & ~blob)  # the tumour is untouched


def test_a_large_faint_blob_goes_by_its_peak_and_no_longer_outweighs_the_tumour():
    # 1,764 voxels at 0.5 on one slice, larger than the 1,600-voxel tumour
    probabilities = _tumour_and_blob(0.5, slice(0, 1), 42)
    tumour = probabilities >= 0.8
    faint = (probabilities > 0.4) & ~tumour
    plain = binarize(probabilities, BASELINE)
    assert plain[faint].all() and plain[tumour].all()  # the tumour is over 20% of the blob: both kept
    peak = PostprocessingConfig(**BASELINE.to_dict() | {"min_peak_probability": 0.9})
    assert np.array_equal(binarize(probabilities, peak), tumour)
    # weighed by probability and extent the tumour is the main component, the blob a small one
    extent = PostprocessingConfig(**BASELINE.to_dict() | {"volume_score": "mass_x_slices",
                                                           "min_volume_fraction": 0.117})
    assert np.array_equal(binarize(probabilities, extent), tumour)
    voxels = PostprocessingConfig(**BASELINE.to_dict() | {"min_volume_fraction": 0.95})
    assert not binarize(probabilities, voxels)[tumour].any()  # what the voxel rule does at that level


def test_attached_specks_keep_a_tumour_tip_and_no_far_speck():
    probabilities = _tumour_and_blob(0.0, slice(0, 1), 1)
    probabilities[9, 12:16, 12:16] = 0.9  # the tumour's 16-pixel tip on the next slice: a speck (< 18 px)
    probabilities[0, 80:84, 80:84] = 0.9  # a far speck
    config = PostprocessingConfig(**BASELINE.to_dict() | {"keep_attached_specks": True})
    kept = binarize(probabilities, config)
    assert kept[9].sum() == 16 and not kept[0].any()
    assert not binarize(probabilities, BASELINE)[9].any()
    assert [r["first_slice"] for r in removed_regions(probabilities, config)] == [0]


def test_volume_options_only_ever_remove_pixels_above_the_threshold():
    from mriseg.postprocessing import VOLUME_SCORES, fill_enclosed

    rng = np.random.default_rng(3)
    probabilities = np.clip(rng.random((8, 48, 48)).astype(np.float32) ** 3 + _tumour_and_blob(
        0.6, slice(0, 2), 10)[1:9, 8:56, 8:56], 0, 1)
    for score in VOLUME_SCORES:
        for peak in (0.0, 0.9):
            for specks in (False, True):
                config = PostprocessingConfig(threshold=0.4, min_component_fraction=0.002, min_volume_fraction=0.2,
                                              fill_holes=True, volume_score=score, min_peak_probability=peak,
                                              keep_attached_specks=specks)
                for threshold in (0.05, 0.4, 0.8):
                    mask = binarize(probabilities, config, threshold)
                    assert not (mask & ~fill_enclosed(probabilities >= threshold)).any()
    try:
        PostprocessingConfig(volume_score="area")
    except ValueError as error:
        assert "volume_score" in str(error)
    else:
        raise AssertionError("an unknown volume_score was accepted")
