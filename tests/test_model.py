"""The U-Net: shapes, configuration, clear errors."""

import pytest
import torch

from mriseg.model import UNet, UNetConfig, create_model


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
