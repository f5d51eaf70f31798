"""The 2D U-Net (Ronneberger et al. 2015) used by mriseg.

Encoder blocks of (Conv2d, BatchNorm, ReLU) x2 followed by max-pooling, a bottleneck, decoder blocks that
up-sample with ConvTranspose2d, concatenate the matching encoder output (the skip connection) and apply
(Conv2d, BatchNorm, ReLU) x2, then a 1x1 convolution to one logit channel.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm folded into the convolution before it.

    In eval mode a BatchNorm is a fixed scale and shift per channel, which the convolution before it absorbs
    (weights scaled, bias added): the same outputs, to float rounding, for less work (on 2 CPU cores 4-8% of a
    slice's time). The copy is for inference only: it cannot be trained, and the original keeps the layout that
    training, the saved weights and the architecture view expect.

    Example:
        >>> model = UNet(UNetConfig(base_width=4, depth=2)).eval()
        >>> folded = fold_batchnorm(model)
        >>> any(isinstance(layer, nn.BatchNorm2d) for layer in folded.modules())
        False
        >>> x = torch.randn(1, 1, 32, 32)
        >>> torch.allclose(folded(x), model(x), atol=1e-5)
        True
    """
    folded = copy.deepcopy(model).eval()
    for block in list(folded.modules()):  # a list: the loop replaces layers inside the tree it walks
        if isinstance(block, DoubleConv):
            for conv_index in (0, 3):  # (Conv2d, BatchNorm, ReLU) twice
                block[conv_index] = fuse_conv_bn_eval(block[conv_index], block[conv_index + 1])
                block[conv_index + 1] = nn.Identity()
    return folded


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


def widen_input(model: UNet, in_channels: int) -> UNet:
    """A copy of a one-channel U-Net taking ``in_channels`` channels, whose centre channel is the old input.

    The new channels (neighbouring slices, see ``PreprocessingConfig.context_slices``) start with zero weights,
    so the widened network computes exactly what the old one did; training can then learn how much the
    neighbours should count.
    """
    if model.config.in_channels != 1:
        raise ValueError(f"only a one-channel U-Net can be widened, this one takes {model.config.in_channels} channels")
    state = model.state_dict()
    key = "encoders.0.0.weight"
    old = state[key]
    state[key] = old.new_zeros(old.shape[0], in_channels, *old.shape[2:])
    state[key][:, in_channels // 2] = old[:, 0]
    widened = UNet(replace(model.config, in_channels=in_channels))
    widened.load_state_dict(state)
    return widened



def narrow_input(model: UNet) -> UNet:
    """The one-channel U-Net inside one made by :func:`widen_input`: the first convolution's centre channel.

    Exact only while the weights for the other channels are still zero (an ensemble widens its one-slice members
    that way and never trains them), so a U-Net that learned to use its neighbouring slices is refused.
    """
    key = "encoders.0.0.weight"
    state = model.state_dict()
    weight = state[key]
    centre = weight.shape[1] // 2
    neighbours = torch.cat([weight[:, :centre], weight[:, centre + 1:]], dim=1)
    if model.config.in_channels == 1 or bool(neighbours.any()):
        raise ValueError(f"this U-Net reads {model.config.in_channels} channels and uses them all: it was not "
                         "widened from a one-slice U-Net, so it cannot be narrowed back to one")
    state[key] = weight[:, centre:centre + 1].clone()
    narrowed = UNet(replace(model.config, in_channels=1))
    narrowed.load_state_dict(state)
    return narrowed

@dataclass(frozen=True)
class EnsembleConfig:
    """Architecture of a :class:`UNetEnsemble`: one :class:`UNetConfig` per member, each member's grid and input.

    Stored in ``config.json`` as ``{"members": [{...}, {...}], "member_grids": [128, 192],
    "member_channels": [0, 1]}``; without ``member_grids`` every member works on the ensemble's own input grid,
    without ``member_channels`` every member takes all input channels. ``member_channels[i]`` is the first input
    channel of member ``i``, which takes as many as its ``in_channels``.
    """

    members: tuple[UNetConfig, ...]
    member_grids: tuple[int, ...] | None = None
    member_channels: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        values: dict = {"members": [member.to_dict() for member in self.members]}
        if self.member_grids is not None:
            values["member_grids"] = list(self.member_grids)
        if self.member_channels is not None:
            values["member_channels"] = list(self.member_channels)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> EnsembleConfig:
        grids, channels = values.get("member_grids"), values.get("member_channels")
        return cls(tuple(UNetConfig.from_dict(member) for member in values["members"]),
                   None if grids is None else tuple(int(grid) for grid in grids),
                   None if channels is None else tuple(int(channel) for channel in channels))


class UNetEnsemble(nn.Module):
    """Several U-Nets trained apart; returns the logit of their mean probability.

    Independently trained networks make different mistakes (one misses a faint slice another catches), so the
    mean of their probabilities is more reliable than any one of them. The output is a logit like a single
    :class:`UNet`'s, so everything downstream (sigmoid, threshold, uncertainty) treats both alike.

    Members may have been trained on grids of different sizes (networks that saw the anatomy at another scale
    err differently too). The ensemble's input is then on the finest of those grids; a member trained on a
    coarser one gets the input shrunk to its own scale (area averaging, as the preprocessing shrinks slices) and
    its probabilities are resized back (bilinear) before they are averaged.

    Members may also have been trained on differently normalised input (see ``PreprocessingConfig.normalize_over``):
    the input then holds each normalisation as its own channels, and each member takes its own.

    Args:
        members: the trained U-Nets; without ``member_channels`` they must take the same input channels.
        member_grids: each member's grid side, or None when all share the input's grid.
        member_channels: the first input channel of each member, or None when all take the whole input.

    Example:
        >>> ensemble = UNetEnsemble([UNet(UNetConfig(base_width=4, depth=2)), UNet(UNetConfig(base_width=8))])
        >>> ensemble(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(self, members: Sequence[UNet], member_grids: Sequence[int] | None = None,
                 member_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two U-Nets, got {len(members)}")
        for name, values in (("grids", member_grids), ("channels", member_channels)):
            if values is not None and len(values) != len(members):
                raise ValueError(f"{len(values)} member {name} given for {len(members)} U-Nets")
        self.members = nn.ModuleList(members)
        self.config = EnsembleConfig(tuple(member.config for member in members),
                                     None if member_grids is None else tuple(member_grids),
                                     None if member_channels is None else tuple(member_channels))

    @property
    def size_multiple(self) -> int:
        return max(member.size_multiple for member in self.members)

    def member_grid(self, index: int, grid: int) -> int:
        """Side of the grid member ``index`` works on when the ensemble's input is ``grid`` wide."""
        grids = self.config.member_grids
        return grid if grids is None else round(grid * grids[index] / max(grids))

    def member_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` (on the ensemble's grid): the channels member ``index`` takes, at the scale it was trained on."""
        if self.config.member_channels is not None:
            first = self.config.member_channels[index]
            x = x[:, first : first + self.config.members[index].in_channels]
        size = [self.member_grid(index, side) for side in x.shape[-2:]]
        return x if size == list(x.shape[-2:]) else nn.functional.interpolate(x, size=size, mode="area")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = []
        for index, member in enumerate(self.members):
            probability = torch.sigmoid(member(self.member_input(index, x)).float())
            if probability.shape[-2:] != x.shape[-2:]:
                probability = nn.functional.interpolate(probability, size=x.shape[-2:], mode="bilinear")
            probabilities.append(probability)
        probability = torch.stack(probabilities).mean(0)
        # float32 keeps logit(sigmoid(z)) exact enough; eps bounds the logit where every member is certain
        return torch.logit(probability, eps=1e-7)


Segmentation = UNet | UNetEnsemble


def unet_members(model: Segmentation) -> list[UNet]:
    """The U-Nets inside ``model``: itself, or an ensemble's members."""
    return list(model.members) if isinstance(model, UNetEnsemble) else [model]


def unet_grid(model: Segmentation, member: int, grid: int) -> int:
    """Side of the grid U-Net ``member`` of ``model`` (see :func:`unet_members`) works on for a ``grid``-wide input."""
    return model.member_grid(member, grid) if isinstance(model, UNetEnsemble) else grid


def create_model(config: UNetConfig | EnsembleConfig | dict | None = None) -> Segmentation:
    """Build a U-Net (or an ensemble of them) from its config, a plain dict as in ``config.json``, or defaults."""
    if isinstance(config, dict):
        config = EnsembleConfig.from_dict(config) if "members" in config else UNetConfig.from_dict(config)
    if isinstance(config, EnsembleConfig):
        return UNetEnsemble([UNet(member) for member in config.members], config.member_grids,
                            config.member_channels)
    return UNet(config or UNetConfig())
