"""Architecture description and feature maps, checked against the model's own layers."""

import re

import numpy as np
import pytest
from helpers import DARK_BACKGROUND, contrast

from mriseg.app.explain import architecture_dot, describe, feature_maps
from mriseg.model import UNetConfig, create_model, unet_grid, unet_members


@pytest.mark.parametrize("config", [UNetConfig(), UNetConfig(base_width=8, depth=3)])
def test_describe_matches_the_model(config):
    model = create_model(config)
    stages = describe(model, 128)
    assert sum(s.parameters for s in stages) == sum(p.numel() for p in model.parameters())
    assert [s.name for s in stages][: config.depth] == [f"encoder {i + 1}" for i in range(config.depth)]
    assert stages[config.depth].out_channels == config.base_width * 2**config.depth
    assert stages[-1].out_channels == 1 and stages[-1].side == 128
    fields = [s.receptive_field for s in stages]
    assert fields == sorted(fields)  # the field only grows along the path


def test_receptive_field_by_hand():
    # depth 1: conv3, conv3 (5) -> pool (6, jump 2) -> bottleneck conv3 x2 (+4+4 = 14) -> up (jump 1)
    # -> decoder conv3 x2 (+2+2 = 18)
    stages = describe(create_model(UNetConfig(base_width=4, depth=1)), 64)
    assert [s.receptive_field for s in stages] == [5, 14, 18, 18]


def test_dot_has_every_stage_and_the_skips():
    dot = architecture_dot(describe(create_model(UNetConfig(base_width=4, depth=2)), 64))
    assert dot.count('style=dashed, label="skip"') == 2 and '"bottleneck"' in dot


def test_dot_reads_on_the_dark_theme():
    stages = describe(create_model(UNetConfig()), 256)
    dot = architecture_dot(stages)
    assert 'bgcolor="transparent"' in dot  # not a white box on the dark page
    assert int(re.search(r"node \[[^]]*fontsize=(\d+)", dot).group(1)) >= 14
    edge = re.search(r"edge \[([^]]*)\]", dot).group(1)
    for colour in re.findall(r'color="(#[0-9a-f]{6})"', edge):  # lines and the "skip" labels, on the page itself
        assert contrast(colour, DARK_BACKGROUND) >= 4.5
    nodes = re.findall(r'"([^"]+)" \[label="[^"]*", fillcolor="(#[0-9a-f]{6})", fontcolor="([^"]+)"\]', dot)
    assert [name for name, _, _ in nodes] == [stage.name for stage in stages]
    names = {"white": "#ffffff"}
    for name, fill, text in nodes:  # each box's text against its own fill
        assert contrast(names.get(text, text), fill) >= 4.5, name


def test_dot_draws_a_u_as_wide_as_it_is_deep():
    """Each encoder shares a row with its decoder (the decoder chain is written downwards, arrows turned back),
    so the drawing has depth + 1 rows, not one tall column of every stage."""
    depth = 4
    dot = architecture_dot(describe(create_model(UNetConfig(depth=depth)), 256))
    for level in range(1, depth + 1):
        assert re.search(rf'{{rank=same; "encoder {level}"; "decoder {level}"', dot)
    upward = re.findall(r'"(decoder \d|bottleneck)" -> "(decoder \d|bottleneck)"(.*);', dot)
    assert len(upward) == depth and all("dir=back" in attributes for _, _, attributes in upward)


def test_feature_maps_have_the_layer_shapes(segmenter):
    maps = feature_maps(segmenter, np.random.default_rng(0).random((256, 256)).astype(np.float32))
    grid = unet_grid(segmenter.model, 0, segmenter.preprocessor.config.grid_size)
    for stage in describe(unet_members(segmenter.model)[0], grid):
        if stage.kind == "head":
            continue
        assert maps.maps[stage.name].shape == (stage.out_channels, stage.side, stage.side)
        if stage.kind == "decoder":
            up, skip = maps.maps[f"{stage.name}: up-sampled"], maps.maps[f"{stage.name}: skip"]
            assert up.shape == skip.shape == (stage.out_channels, stage.side, stage.side)
    strongest = maps.strongest_channels("encoder 1", 3)
    means = maps.maps["encoder 1"].mean(axis=(1, 2))
    assert means[strongest[0]] == means.max() and len(strongest) == 3


def test_feature_maps_leave_the_shared_model_without_hooks(segmenter):
    feature_maps(segmenter, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert all(not module._forward_hooks for module in segmenter.model.modules())


def test_feature_maps_of_a_2_5d_model_see_the_slice_with_its_neighbours():
    from mriseg.inference import Segmenter
    from mriseg.preprocessing import PreprocessingConfig

    model = create_model(UNetConfig(in_channels=3, base_width=4, depth=2))
    segmenter = Segmenter(model, PreprocessingConfig(grid_size=64, context_slices=1), device="cpu")
    volume = np.random.default_rng(0).random((4, 80, 80)).astype(np.float32)
    first, last = feature_maps(segmenter, volume, 0), feature_maps(segmenter, volume, 3)
    assert first.maps["encoder 1"].shape == (4, 64, 64)
    assert not np.allclose(first.maps["encoder 1"], last.maps["encoder 1"])
    assert feature_maps(segmenter, volume[0]).maps["decoder 1"].shape == (4, 64, 64)  # a lone 2D slice


def test_feature_maps_of_a_coarse_ensemble_member_are_on_its_own_grid():
    from mriseg.inference import Segmenter
    from mriseg.model import UNetEnsemble
    from mriseg.preprocessing import PreprocessingConfig

    coarse, fine = create_model(UNetConfig(base_width=4, depth=2)), create_model(UNetConfig(base_width=4, depth=2))
    ensemble = UNetEnsemble([coarse, fine], member_grids=(64, 96))
    segmenter = Segmenter(ensemble, PreprocessingConfig(grid_size=96), device="cpu")
    image = np.random.default_rng(0).random((120, 120)).astype(np.float32)
    assert feature_maps(segmenter, image, member=0).maps["decoder 1"].shape == (4, 64, 64)
    assert feature_maps(segmenter, image, member=1).maps["decoder 1"].shape == (4, 96, 96)
