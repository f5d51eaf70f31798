"""Copies of LGG patients as other sources deliver brain MRI, to measure whether the model travels.

Each variant turns a skull-on LGG volume and its manual mask into a plausible scan of another kind, on which the
same per-volume Dice is computed (``python -m mriseg evaluate --variant ...``):

- ``skull-stripped``: brain only on an empty background (:mod:`mriseg.data.brain_extraction`);
- ``resampled``: as a 1 mm research volume: in-plane pixels 20 % larger (the head shrinks to 80 %, centred on a
  240x240 grid) and three times as many, thinner slices (linear interpolation between the originals);
- ``brats-like``: both, with the brain's intensities z-scored and the background 0, the layout of the BraTS
  challenge data (float values on both sides of the background).

The mask follows the geometry (nearest-neighbour in-plane, linear between slices, kept at 0.5), so Dice is taken on
the copy's own grid. OpenCV and SciPy are imported when a copy is made: the CLI reads ``VARIANTS`` at start-up.
"""

from __future__ import annotations

import numpy as np

VARIANTS = ("original", "skull-stripped", "resampled", "brats-like")
RESAMPLED_SIDE = 240
IN_PLANE_SCALE = 0.8
SLICE_UPSAMPLING = 3


def _resample_slices(stack: np.ndarray, factor: int) -> np.ndarray:
    """(S, H, W) -> ((S - 1) * factor + 1, H, W), linear between neighbouring slices."""
    positions = np.linspace(0, len(stack) - 1, (len(stack) - 1) * factor + 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, len(stack) - 1)
    weight = (positions - below)[:, None, None]
    return (1 - weight) * stack[below] + weight * stack[above]


def _place_in_plane(image: np.ndarray, interpolation: int, fill: float) -> np.ndarray:
    """Shrink a slice by IN_PLANE_SCALE and centre it on a RESAMPLED_SIDE square."""
    import cv2

    height, width = image.shape
    small = cv2.resize(image, (round(width * IN_PLANE_SCALE), round(height * IN_PLANE_SCALE)),
                       interpolation=interpolation)
    out = np.full((RESAMPLED_SIDE, RESAMPLED_SIDE), fill, dtype=np.float32)
    top, left = (RESAMPLED_SIDE - small.shape[0]) // 2, (RESAMPLED_SIDE - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def resample(volume: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``resampled`` geometry of a volume and its mask (see the module docstring)."""
    import cv2

    background = float(volume.min())
    images = np.stack([_place_in_plane(image, cv2.INTER_AREA, background) for image in volume.astype(np.float32)])
    masks = np.stack([_place_in_plane(mask.astype(np.float32), cv2.INTER_NEAREST, 0.0) for mask in truth])
    if len(volume) > 1:
        images = _resample_slices(images, SLICE_UPSAMPLING)
        masks = _resample_slices(masks, SLICE_UPSAMPLING)
    return images.astype(np.float32), masks >= 0.5


def zscore_brain(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Z-score the voxels in ``brain`` over the volume and set everything else to 0 (the BraTS convention)."""
    values = volume[brain]
    scaled = (volume - values.mean()) / max(float(values.std()), 1e-6)
    return np.where(brain, scaled, 0.0).astype(np.float32)


def make_variant(volume: np.ndarray, truth: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` and ``truth`` turned into ``variant`` (one of :data:`VARIANTS`).

    Example:
        >>> volume = np.zeros((4, 64, 64), np.float32)
        >>> image, mask = make_variant(volume, volume > 0, "resampled")
        >>> image.shape, mask.shape
        ((10, 240, 240), (10, 240, 240))
    """
    from mriseg.data.brain_extraction import strip_skull

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    volume = np.asarray(volume, dtype=np.float32)
    truth = np.asarray(truth, dtype=bool)
    if variant == "original":
        return volume, truth
    if variant in ("skull-stripped", "brats-like"):
        volume, _ = strip_skull(volume, truth)
    if variant == "skull-stripped":
        return volume, truth
    volume, truth = resample(volume, truth)
    if variant == "resampled":
        return volume, truth
    # Stripped slices hold the darkest level outside the brain; slices that kept their skull have a noisy
    # background, which a z-scored volume would not show either.
    brain = volume > volume.min() + 0.02 * (volume.max() - volume.min())
    return zscore_brain(volume, brain), truth
