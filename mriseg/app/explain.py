"""Looking inside the U-Net: its architecture read from the loaded model, and live feature maps from hooks."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mriseg.inference import Segmenter
from mriseg.model import UNet, UNetEnsemble, unet_members


@dataclass(frozen=True)
class Stage:
    """One block of the U-Net as the class sees it.

    Attributes:
        name: e.g. "encoder 1", "bottleneck", "decoder 2", "head".
        kind: "encoder", "bottleneck", "decoder" or "head".
        in_channels / out_channels: feature maps in and out.
        side: height (= width) of its output on the model grid.
        parameters: learnable numbers in the block.
        receptive_field: side of the input square (grid pixels) that can influence one output pixel.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    side: int
    parameters: int
    receptive_field: int


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _ReceptiveField:
    """Tracks receptive field and pixel spacing ("jump") along the deepest path through the network."""

    def __init__(self) -> None:
        self.size, self.jump = 1, 1.0

    def conv(self, kernel: int, count: int = 2) -> int:
        for _ in range(count):
            self.size += int((kernel - 1) * self.jump)
        return self.size

    def pool(self) -> None:
        self.size += int(self.jump)
        self.jump *= 2

    def upsample(self) -> None:
        self.jump /= 2  # a 2x2 stride-2 transposed conv maps each input pixel to its own 2x2 block


def describe(model: UNet, grid_size: int) -> list[Stage]:
    """Every stage of ``model`` with channels, output size, parameters and receptive field."""
    config = model.config
    field = _ReceptiveField()
    stages = []
    in_channels = config.in_channels
    for level, encoder in enumerate(model.encoders):
        out_channels = encoder[0].out_channels
        stages.append(Stage(f"encoder {level + 1}", "encoder", in_channels, out_channels, grid_size // 2**level,
                            _parameters(encoder), field.conv(3)))
        field.pool()
        in_channels = out_channels
    stages.append(Stage("bottleneck", "bottleneck", in_channels, model.bottleneck[0].out_channels,
                        grid_size // 2**config.depth, _parameters(model.bottleneck), field.conv(3)))
    for index, decoder in enumerate(model.decoders):
        level = config.depth - 1 - index
        field.upsample()
        stages.append(Stage(f"decoder {level + 1}", "decoder", decoder.up.in_channels, decoder.conv[0].out_channels,
                            grid_size // 2**level, _parameters(decoder), field.conv(3)))
    stages.append(Stage("head", "head", model.head.in_channels, model.head.out_channels, grid_size,
                        _parameters(model.head), field.size))
    return stages


# The diagram sits on the app's dark theme: a transparent background, light lines and labels, text as large as the
# page's own, and dark text on the lighter fills (WCAG contrast of 4.5 or more on every box).
DIAGRAM_FILLS = {"encoder": "#4c78a8", "bottleneck": "#b279a2", "decoder": "#f58518", "head": "#54a24b"}
DIAGRAM_TEXT = {"encoder": "white", "bottleneck": "#111111", "decoder": "#111111", "head": "#111111"}
DIAGRAM_LINES = "#d9d9d9"
DIAGRAM_FONT_SIZE = 16
# Points; they size the boxes and spacing. The browser draws the text at the page's size (webapp.PRESENTER_CSS:
# 22 px on a projector), so the boxes leave it room.
PRESENTER_DIAGRAM_FONT_SIZE = 20


def architecture_dot(stages: list[Stage], font_size: int = DIAGRAM_FONT_SIZE) -> str:
    """A Graphviz drawing of the U: encoders down the left, the bottleneck at the bottom, decoders up the right,
    skip connections across and the head beside the last decoder, readable on a dark page.

    The decoder path is written top-down with its arrows turned back, so every level of the U is one row and the
    drawing stays about as wide as it is tall (an upward chain would stack all stages in one tall column).
    ``font_size``: the stages' text in points (the arrows' labels 2 points smaller).
    """
    lines = [
        "digraph unet {",
        'bgcolor="transparent"; rankdir=TB; nodesep=0.4; ranksep=0.35; pad=0.1;',
        f'node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize={font_size}, '
        f'color="{DIAGRAM_LINES}", margin="0.15,0.06"];',
        f'edge [color="{DIAGRAM_LINES}", fontcolor="{DIAGRAM_LINES}", fontname="Helvetica", '
        f"fontsize={font_size - 2}, penwidth=1.5];",
    ]
    for stage in stages:
        label = f"{stage.name}\\n{stage.out_channels} ch, {stage.side}x{stage.side}\\n{stage.parameters:,} params"
        lines.append(f'"{stage.name}" [label="{label}", fillcolor="{DIAGRAM_FILLS[stage.kind]}", '
                     f'fontcolor="{DIAGRAM_TEXT[stage.kind]}"];')
    encoders = [s.name for s in stages if s.kind == "encoder"]
    decoders = [s.name for s in stages if s.kind == "decoder"]  # deepest first, the order data flows
    bottleneck = next(s.name for s in stages if s.kind == "bottleneck")
    heads = [s.name for s in stages if s.kind == "head"]
    for upper, lower in zip(encoders, encoders[1:] + [bottleneck], strict=True):
        lines.append(f'"{upper}" -> "{lower}";')
    for lower, upper in zip([bottleneck] + decoders, decoders, strict=False):  # drawn downwards, arrow pointing up
        lines.append(f'"{upper}" -> "{lower}" [dir=back];')
    for name in heads:
        lines.append(f'"{decoders[-1]}" -> "{name}";')
    for name in encoders:
        lines.append(f'"{name}" -> "decoder {name.split()[-1]}" [style=dashed, label="skip", constraint=false];')
    for name in encoders:
        same_row = [f'"decoder {name.split()[-1]}"'] + [f'"{head}"' for head in heads if name == encoders[0]]
        lines.append(f'{{rank=same; "{name}"; {"; ".join(same_row)};}}')
    lines.append("}")
    return "\n".join(lines)


@dataclass
class FeatureMaps:
    """Activations of one slice, per stage; decoders also keep the two inputs that meet at the skip.

    Attributes:
        maps: stage name -> (channels, h, w) float32. Names: "encoder N", "bottleneck", "decoder N",
            "decoder N: up-sampled" (the path from below) and "decoder N: skip" (the encoder output joined to it).
    """

    maps: dict[str, np.ndarray]

    def strongest_channels(self, name: str, count: int = 4) -> list[int]:
        """The channels with the largest mean activation: usually the most telling ones to show."""
        activation = self.maps[name].reshape(len(self.maps[name]), -1).mean(axis=1)
        return [int(i) for i in np.argsort(activation)[::-1][:count]]


def member_normalization(segmenter: Segmenter, member: int = 0) -> str:
    """Over what U-Net ``member`` of the loaded model sees intensities z-scored: "slice" or "volume"."""
    preprocessing = segmenter.preprocessor.config
    first_channels = getattr(segmenter.model.config, "member_channels", None)
    if first_channels is None:
        return preprocessing.normalizations[0]
    return preprocessing.normalizations[first_channels[member] // preprocessing.channels_per_normalization]


@torch.inference_mode()
def feature_maps(segmenter: Segmenter, volume: np.ndarray, index: int = 0, member: int = 0) -> FeatureMaps:
    """Run one slice through the model with forward hooks on every stage.

    Args:
        segmenter: the loaded model and its preprocessing.
        volume: (S, H, W) or (H, W) raw intensities (a volume, so a 2.5D model gets the slice's neighbours).
        index: the slice to look at.
        member: which U-Net of an ensemble to look inside (0 for a single U-Net).
    """
    # Hooks go on a private copy: the shared model keeps serving other sessions untouched meanwhile.
    model = copy.deepcopy(unet_members(segmenter.model)[member])
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            captured[name] = output.detach().float().cpu()
        return hook

    for level, encoder in enumerate(model.encoders):
        encoder.register_forward_hook(keep(f"encoder {level + 1}"))
    model.bottleneck.register_forward_hook(keep("bottleneck"))
    depth = model.config.depth
    for position, decoder in enumerate(model.decoders):
        level = depth - position
        decoder.up.register_forward_hook(keep(f"decoder {level}: up-sampled"))
        decoder.register_forward_hook(keep(f"decoder {level}"))
    volume = np.asarray(volume, dtype=np.float32)
    model_input = segmenter.preprocessor.slice_input(volume[None] if volume.ndim == 2 else volume, index)
    batch = torch.from_numpy(model_input)[None].to(segmenter.device)
    if isinstance(segmenter.model, UNetEnsemble):  # a member trained on a coarser grid sees the slice shrunk to it
        batch = segmenter.model.member_input(member, batch)
    model(batch.contiguous(memory_format=segmenter.memory_format))
    maps = {name: tensor[0].numpy() for name, tensor in captured.items()}
    for level in range(1, depth + 1):
        maps[f"decoder {level}: skip"] = maps[f"encoder {level}"]
    return FeatureMaps(maps)
