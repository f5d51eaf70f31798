"""Preprocessing shared by training, evaluation, the CLI and the app.

Every parameter lives in :class:`PreprocessingConfig`, which is stored in ``weights/config.json`` beside the
weights, so inference cannot drift from training: whatever intensity scale a file arrives in (8-bit PNG,
16-bit DICOM, float NIfTI, a skull-stripped scan z-scored around a 0 background), each slice is clipped to robust
percentiles of the head and z-scored over the head (its own, or the head in the whole volume), padded to a square
and resized to the model grid. Probabilities are mapped back to the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mriseg.config import DictConfig

NORMALIZE_OVER = ("slice", "volume", "slice+volume")


@dataclass(frozen=True)
class PreprocessingConfig(DictConfig):
    """How a slice is turned into model input.

    Args:
        grid_size: side of the square grid the model sees (slices are padded to square, then resized).
        clip_low: lower percentile of head intensities kept before z-scoring.
        clip_high: upper percentile of head intensities kept before z-scoring.
        head_fraction: a pixel belongs to the head when it lies this fraction of the way from the background
            level to the bright end of the slice; statistics are taken over the head only, because the black
            background (half of a typical slice) would otherwise dominate them.
        context_slices: neighbouring slices on each side fed with a slice as extra input channels ("2.5D"):
            whether a faint patch is tumour is much clearer when the slices above and below show it too. 0: the
            slice alone. Where a volume ends, and for a lone 2D image, a slice stands in for its missing
            neighbours.
        normalize_over: ``"slice"``: clip and z-score each slice by its own head; ``"volume"``: by the head in all
            slices of the volume together, so that a slice near the top of the head, where tumour fills much of a
            small head, keeps the contrast its tumour has in the rest of the volume instead of being z-scored
            against itself. A lone 2D image is its own volume either way. ``"slice+volume"``: both, one after the
            other as input channels (for an ensemble whose members were trained one way and the other).
    """

    grid_size: int = 128
    clip_low: float = 0.5
    clip_high: float = 99.5
    head_fraction: float = 0.1
    context_slices: int = 0
    normalize_over: str = "slice"

    def __post_init__(self) -> None:
        if self.normalize_over not in NORMALIZE_OVER:
            raise ValueError(f"normalize_over must be one of {NORMALIZE_OVER}, got {self.normalize_over!r}")

    @property
    def normalizations(self) -> tuple[str, ...]:
        """The normalisations the input holds, in channel order: ``("slice",)``, ``("volume",)`` or both."""
        return tuple(self.normalize_over.split("+"))

    @property
    def channels_per_normalization(self) -> int:
        """The slice and its neighbours on both sides."""
        return 1 + 2 * self.context_slices

    @property
    def input_channels(self) -> int:
        """Channels of the model input: the slice and its neighbours, once per normalisation."""
        return len(self.normalizations) * self.channels_per_normalization


def masked_background(image: np.ndarray, min_share: float = 0.05) -> float | None:
    """The constant value outside the brain of a skull-stripped (masked) slice whose background is not its darkest
    level, or None.

    Stripped volumes set everything outside the brain to one value, often 0 after z-scoring, with brain tissue on
    both sides of it. Such a slice is recognised by one exact value along most of its border that fills a solid
    region of at least ``min_share`` of it, with many darker pixels. A skull-on slice's background is its darkest
    level, or noise scattered around a level, and gives None.

    Example:
        >>> zscored = np.zeros((64, 64), np.float32)
        >>> zscored[16:48, 16:48] = np.random.default_rng(0).normal(0, 1, (32, 32))
        >>> masked_background(zscored)
        0.0
        >>> masked_background(np.where(zscored != 0, zscored + 10, 0)) is None  # background darkest: ordinary
        True
    """
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    values, counts = np.unique(border, return_counts=True)
    fill_value = values[counts.argmax()]
    if counts.max() < 0.5 * border.size or fill_value <= image.min():
        return None
    fill = image == fill_value
    darker = int((image < fill_value).sum())
    # Brain tissue z-scored around the fill value lies on both sides of it: many pixels darker than the fill.
    if fill.sum() < min_share * image.size or darker < 0.25 * (image.size - fill.sum()):
        return None
    # A mask fills a solid region with its value; in a noisy background that value is scattered.
    solid = fill[1:-1, 1:-1] & fill[:-2, 1:-1] & fill[2:, 1:-1] & fill[1:-1, :-2] & fill[1:-1, 2:]
    return float(fill_value) if solid.sum() >= 0.8 * fill.sum() else None


def darken_masked_background(volume: np.ndarray) -> np.ndarray:
    """(S, H, W) slices with a masked background (see :func:`masked_background`) set to the volume's darkest
    level outside the brain, as in a stripped scan stored with a dark background; other volumes unchanged.

    Without this, the background of a z-scored stripped scan (0, the brain's mean) would look mid-grey to the model
    and be counted as head. The fill value is found on the slices that show it clearly and then taken from every
    slice whose border it fills (a slice through the top of a tumour may hold few darker pixels).
    """
    volume = np.asarray(volume, dtype=np.float32)
    fills = [fill for fill in (masked_background(image) for image in volume) if fill is not None]
    if not fills:
        return volume
    values, counts = np.unique(fills, return_counts=True)
    fill = values[counts.argmax()]
    darkest = float(volume.min())
    darkened = volume.copy()
    for image in darkened:
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        if (border == fill).mean() >= 0.5:
            image[image == fill] = darkest
    return darkened


def find_head(image: np.ndarray, head_fraction: float = 0.1) -> np.ndarray | None:
    """Pixels bright enough to be head rather than background; None when too few are (a blank slice)."""
    background = np.percentile(image, 1.0)
    bright = np.percentile(image, 99.0)
    mask = image > background + head_fraction * (bright - background)
    return None if mask.sum() < 0.01 * image.size else mask


class RobustNormalize:
    """Clip a slice to head percentiles and z-score it over the head.

    The result does not change when the intensities are scaled or shifted (a positive affine map), which is
    what makes an 8-bit PNG and a rescaled 16-bit DICOM of the same slice look the same to the model.

    Example:
        >>> image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
        >>> np.allclose(RobustNormalize()(image), RobustNormalize()(image * 300 + 7), atol=1e-4)
        True
    """

    def __init__(self, config: PreprocessingConfig = PreprocessingConfig()) -> None:
        self.config = config

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.volume(np.asarray(image, dtype=np.float32)[None])[0]

    def heads(self, slices: np.ndarray) -> list[np.ndarray | None]:
        """Each slice's head (see :func:`find_head`); found once, they serve both kinds of normalisation."""
        return [find_head(image, self.config.head_fraction) for image in slices]

    def volume(self, slices: np.ndarray, heads: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Normalise (S, H, W) slices together: percentiles, mean and spread over the head of every slice.

        Each slice finds its own head (the background level differs from slice to slice), and their pixels are
        pooled for the statistics. Blank slices (beyond the head, common at the ends of a 3D scan) add nothing;
        when no slice shows a head, all pixels count. ``heads``: the slices' heads when already found.
        """
        slices = np.asarray(slices, dtype=np.float32)
        if heads is None:
            heads = self.heads(slices)
        found = [image[head] for image, head in zip(slices, heads, strict=True) if head is not None]
        head_values = np.concatenate(found) if found else slices.ravel()
        low, high = np.percentile(head_values, [self.config.clip_low, self.config.clip_high])
        head_values = np.clip(head_values, low, high)
        std = float(head_values.std())
        if std < 1e-6:
            std = 1.0
        return ((np.clip(slices, low, high) - float(head_values.mean())) / std).astype(np.float32)


@dataclass(frozen=True)
class GridPlacement:
    """Where an original slice sits inside the model grid, so probabilities can be mapped back."""

    height: int
    width: int
    pad_top: int
    pad_left: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape == (side, side):
        return image
    shrinking = side < image.shape[0]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class ToGrid:
    """Pad a 2D array to a centred square and resize it to the model grid.

    Args:
        grid_size: side of the output.
    """

    def __init__(self, grid_size: int) -> None:
        self.grid_size = grid_size

    def placement(self, height: int, width: int) -> GridPlacement:
        side = max(height, width)
        return GridPlacement(height, width, (side - height) // 2, (side - width) // 2)

    def __call__(self, image: np.ndarray, fill: float = 0.0) -> np.ndarray:
        place = self.placement(*image.shape)
        square = np.full((place.side, place.side), fill, dtype=np.float32)
        square[place.pad_top : place.pad_top + place.height, place.pad_left : place.pad_left + place.width] = image
        return _resize(square, self.grid_size)

    def restore(self, grid_image: np.ndarray, place: GridPlacement) -> np.ndarray:
        """Map a grid-sized array (probabilities) back to the original slice size."""
        square = _resize(np.asarray(grid_image, dtype=np.float32), place.side)
        return square[place.pad_top : place.pad_top + place.height, place.pad_left : place.pad_left + place.width]


def stack_context(grid: np.ndarray, context_slices: int) -> np.ndarray:
    """Each slice of a (S, G, G) stack with its neighbours as channels: (S, 1 + 2 * context_slices, G, G).

    Channel ``context_slices`` is the slice itself, lower channels the slices before it, higher ones those after
    it. At the ends of the stack the nearest existing slice repeats, so a single slice becomes its own context.

    Example:
        >>> stack_context(np.arange(3, dtype=np.float32)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    offsets = np.arange(-context_slices, context_slices + 1)
    neighbours = np.clip(np.arange(len(grid))[:, None] + offsets[None, :], 0, len(grid) - 1)
    return np.ascontiguousarray(grid[neighbours], dtype=np.float32)


class Preprocessor:
    """Turns slices into model input and model output back into slice-sized probability maps.

    Args:
        config: the preprocessing parameters stored with the weights.

    Example:
        >>> pre = Preprocessor(PreprocessingConfig(grid_size=64))
        >>> pre.slice_to_grid(np.random.default_rng(0).random((100, 80))).shape
        (64, 64)
    """

    def __init__(self, config: PreprocessingConfig = PreprocessingConfig()) -> None:
        self.config = config
        self.normalize = RobustNormalize(config)
        self.to_grid = ToGrid(config.grid_size)

    def slice_to_grid(self, image: np.ndarray) -> np.ndarray:
        """(H, W) slice -> (G, G) normalised grid (a lone slice is normalised the same by slice and by volume)."""
        return self.volume_to_grids(np.asarray(image)[None])[0][0]

    def mask_to_grid(self, mask: np.ndarray) -> np.ndarray:
        """Resize a binary mask to the grid as a soft (area-fraction) target for training."""
        return self.to_grid(np.asarray(mask, dtype=np.float32), fill=0.0)

    def normalize_volume(self, volume: np.ndarray, over: str = "slice",
                         heads: list[np.ndarray | None] | None = None) -> np.ndarray:
        """(S, H, W) slices -> (S, H, W) intensities normalised ``over`` each slice or the whole volume."""
        volume = np.asarray(volume, dtype=np.float32)
        if heads is None:
            heads = self.normalize.heads(volume)
        if over == "volume":
            return self.normalize.volume(volume, heads)
        return np.stack([self.normalize.volume(image[None], [head])[0] for image, head in zip(volume, heads,
                                                                                               strict=True)])

    def volume_to_grids(self, volume: np.ndarray) -> list[np.ndarray]:
        """(S, H, W) slices -> one (S, G, G) normalised grid stack per configured normalisation."""
        volume = darken_masked_background(volume)
        heads = self.normalize.heads(volume)
        grids = []
        for over in self.config.normalizations:
            normalized = self.normalize_volume(volume, over, heads)
            # Padding takes the darkest (clipped) level, the background's.
            grids.append(np.stack([self.to_grid(image, fill=float(image.min())) for image in normalized]))
        return grids

    def volume_to_input(self, volume: np.ndarray) -> np.ndarray:
        """(S, H, W) slices -> (S, C, G, G) model input: normalised grids with their neighbouring slices."""
        context = self.config.context_slices
        return np.concatenate([stack_context(grid, context) for grid in self.volume_to_grids(volume)], axis=1)

    def slice_input(self, volume: np.ndarray, index: int) -> np.ndarray:
        """(C, G, G) model input of slice ``index`` of a (S, H, W) volume, preparing only the slices it needs.

        Normalised by the volume, it still needs the statistics of every slice.
        """
        if "volume" in self.config.normalizations:
            return self.volume_to_input(volume)[index]
        context = self.config.context_slices
        start = max(0, index - context)
        window = self.volume_to_input(volume[start : index + context + 1])
        return window[index - start]

    def grid_to_volume(self, grid_maps: np.ndarray, height: int, width: int) -> np.ndarray:
        """(S, G, G) probabilities -> (S, H, W) at the original resolution."""
        place = self.to_grid.placement(height, width)
        return np.stack([self.to_grid.restore(grid_map, place) for grid_map in grid_maps]).astype(np.float32)
