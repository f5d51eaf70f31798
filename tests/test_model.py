"""The U-Net: shapes, configuration, clear errors."""

import pytest
import torch

from mriseg.model import (
    EnsembleConfig,
    UNet,
    UNetConfig,
    UNetEnsemble,
    create_model,
    narrow_input,
    unet_members,
    widen_input,
)


class BaseUNetTest:
    config = UNetConfig()

    def test_output_has_input_size_and_one_channel(self):
        model = create_model(self.config).eval()
        side = 2**self.config.depth * 3
        with torch.inference_mode():
            out = model(torch.randn(2, self.config.in_channels, side, 2 * side))
        assert out.shape == (2, 1, side, 2 * side)

    def test_width_sets_first_level(self):
        model = create_model(self.config)
        assert model.encoders[0][0].out_channels == self.config.base_width
        assert len(model.encoders) == len(model.decoders) == self.config.depth

    def test_size_not_multiple_is_explained(self):
        model = create_model(self.config)
        with pytest.raises(ValueError, match=f"multiples of {2**self.config.depth}"):
            model(torch.randn(1, 1, 2**self.config.depth * 2 + 1, 2**self.config.depth * 2))


class TestDefaultUNet(BaseUNetTest):
    config = UNetConfig()


class TestNarrowShallowUNet(BaseUNetTest):
    config = UNetConfig(base_width=4, depth=2)


class TestWideDeepUNet(BaseUNetTest):
    config = UNetConfig(base_width=8, depth=5)


def test_create_model_from_config_dict_ignores_unknown_keys():
    model = create_model({"base_width": 8, "depth": 3, "comment": "from config.json"})
    assert isinstance(model, UNet) and model.config == UNetConfig(base_width=8, depth=3)


def test_wrong_channel_count_is_explained():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        create_model(UNetConfig(base_width=4, depth=2))(torch.randn(1, 3, 16, 16))


@pytest.mark.slow
def test_ensemble_probability_is_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [create_model(UNetConfig(base_width=4, depth=2)).eval(), create_model(UNetConfig(base_width=8)).eval()]
    ensemble = UNetEnsemble(members).eval()
    x = torch.randn(3, 1, 32, 48)
    with torch.inference_mode():
        expected = torch.stack([torch.sigmoid(member(x)) for member in members]).mean(0)
        assert torch.allclose(torch.sigmoid(ensemble(x)), expected, atol=1e-5)
    assert ensemble.size_multiple == 16
    assert unet_members(ensemble) == members and unet_members(members[0]) == [members[0]]


def test_ensemble_config_round_trips_through_a_dict():
    config = EnsembleConfig((UNetConfig(base_width=4, depth=2), UNetConfig(base_width=8)))
    model = create_model(config.to_dict())
    assert isinstance(model, UNetEnsemble) and model.config == config
    assert [member.config.base_width for member in unet_members(model)] == [4, 8]


@pytest.mark.slow
def test_a_member_on_a_coarser_grid_sees_the_input_at_its_own_scale():
    torch.manual_seed(0)
    coarse, fine = create_model(UNetConfig(base_width=4, depth=2)).eval(), create_model(UNetConfig(base_width=4)).eval()
    ensemble = UNetEnsemble([coarse, fine], member_grids=(32, 64)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        shrunk = torch.nn.functional.avg_pool2d(x, 2)  # 64 -> 32 by area averaging
        coarse_probability = torch.nn.functional.interpolate(torch.sigmoid(coarse(shrunk)), size=(64, 64),
                                                             mode="bilinear")
        expected = (coarse_probability + torch.sigmoid(fine(x))) / 2
        assert torch.allclose(torch.sigmoid(ensemble(x)), expected, atol=1e-5)
    assert ensemble.member_grid(0, 192) == 96 and ensemble.member_grid(1, 192) == 192
    config = ensemble.config.to_dict()
    assert config["member_grids"] == [32, 64] and create_model(config).config == ensemble.config
    with pytest.raises(ValueError, match="1 member grids given for 2 U-Nets"):
        UNetEnsemble([coarse, fine], member_grids=(32,))


def test_an_ensemble_of_one_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        UNetEnsemble([create_model(UNetConfig(base_width=4, depth=2))])


def test_widened_unet_starts_as_the_one_slice_unet():
    torch.manual_seed(0)
    narrow = create_model(UNetConfig(base_width=4, depth=2)).eval()
    wide = widen_input(narrow, 3).eval()
    assert wide.config == UNetConfig(in_channels=3, base_width=4, depth=2)
    centre = torch.randn(2, 1, 32, 32)
    neighbours = torch.randn(2, 2, 32, 32)  # whatever the neighbours hold, they start with no say
    with torch.inference_mode():
        assert torch.allclose(wide(torch.cat([neighbours[:, :1], centre, neighbours[:, 1:]], 1)), narrow(centre),
                              atol=1e-6)
    with pytest.raises(ValueError, match="only a one-channel U-Net"):
        widen_input(wide, 5)


def test_narrowing_a_widened_unet_gives_back_the_one_slice_unet_and_refuses_a_trained_one():
    torch.manual_seed(0)
    one_slice = create_model(UNetConfig(base_width=4, depth=2)).eval()
    narrowed = narrow_input(widen_input(one_slice, 3)).eval()
    assert narrowed.config == one_slice.config
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(narrowed(x), one_slice(x))
    trained = create_model(UNetConfig(in_channels=3, base_width=4, depth=2))  # random weights on every channel
    with pytest.raises(ValueError, match="cannot be narrowed"):
        narrow_input(trained)
    with pytest.raises(ValueError, match="cannot be narrowed"):
        narrow_input(one_slice)
