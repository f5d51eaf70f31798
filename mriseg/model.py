"""The 2D U-Net (Ronneberger et al. 2015) used by mriseg.

Encoder blocks of (Conv2d, BatchNorm, ReLU) x2 followed by max-pooling, a bottleneck, decoder blocks that
up-sample with ConvTranspose2d, concatenate the matching encoder output (the skip connection) and apply
(Conv2d, BatchNorm, ReLU) x2, then a 1x1 convolution to one logit channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mriseg.config import DictConfig


@dataclass(frozen=True)
class UNetConfig(DictConfig):
    """Architecture of a :class:`UNet`.

    Args:
        in_channels: image channels fed to the network (1: FLAIR).
        out_channels: logit channels produced (1: tumour).
        base_width: channels of the first encoder level; each deeper level doubles it.
        depth: number of down-sampling steps; the input side must be divisible by ``2**depth``.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_width: int = 16
    depth: int = 4


class DoubleConv(nn.Sequential):
    """(Conv2d 3x3, BatchNorm, ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Up-sample by 2 with a transposed convolution, join the skip connection, then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """2D U-Net returning one logit map per input image.

    Args:
        config: the architecture; see :class:`UNetConfig`.

    Example:
        >>> net = UNet(UNetConfig(base_width=8, depth=3))
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        in_channels = config.in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(in_channels, width))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1])
        self.decoders = nn.ModuleList(
            DecoderBlock(widths[level + 1], widths[level], widths[level]) for level in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """The input height and width must be multiples of this."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects a batch shaped (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(
                f"UNet input height and width must be multiples of {self.size_multiple}, got {tuple(x.shape[-2:])}; "
                "pad the image (mriseg.preprocessing does this for you)"
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(x, skip)
        return self.head(x)


def create_model(config: UNetConfig | dict | None = None) -> UNet:
    """Build a U-Net from a :class:`UNetConfig`, a plain dict (as stored in ``config.json``) or defaults."""
    if isinstance(config, dict):
        config = UNetConfig.from_dict(config)
    return UNet(config or UNetConfig())
