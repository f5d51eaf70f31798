"""Skull-stripped copies of skull-on FLAIR slices, for training and for testing robustness (never used by the app).

Much public glioma MRI (the BraTS layout) arrives skull-stripped: brain only, on an empty background. A model
trained only on skull-on slices learns that a bright rim at the edge of the head is scalp, and so leaves the
brightest part of a lesion unmarked where it touches the edge of a stripped brain. Training on stripped copies of
its own slices removes that shortcut.

The method is classical morphology on each axial slice (thick-slice volumes like the LGG set's give a 3D surface
model such as BET little to hold on to), in four steps:

1. the head: Otsu threshold of the slice, holes filled, largest component;
2. tissue candidates: head pixels brighter than half the Otsu level of the head and more than 3 px inside it, with
   a small opening to cut the thin bridges between brain and scalp across the dark skull;
3. the brain: the candidate components lying deep in the head (median depth over ``min_depth_px``): the scalp,
   separated from the brain by the dark skull, lies within a few millimetres of the head's outline;
4. a closing (sulcal CSF and ventricles back in), holes filled, largest component.

A slice where this finds too little or too much of the head (the vertex and the skull base, where brain and
scalp mix) keeps its skull: a stripped copy must not cut brain off. The manual tumour mask is always kept inside
the brain, since tumour is brain tissue by definition.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

# A stripped brain covers roughly 35-85 % of the head on axial slices through the cerebrum; outside that range the
# method has either lost the brain or kept the scalp.
BRAIN_SHARE_OF_HEAD = (0.25, 0.9)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def _otsu(values: np.ndarray) -> float:
    level, _ = cv2.threshold(values.reshape(-1, 1).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(level)


def brain_mask(image: np.ndarray, min_depth_px: float = 14.0) -> np.ndarray | None:
    """The brain in one skull-on axial FLAIR slice, or None where the method cannot tell brain from scalp.

    Args:
        image: (H, W) intensities, any scale.
        min_depth_px: how deep inside the head (in pixels, about 0.9 mm each in the LGG set) a tissue component's
            median pixel must lie to count as brain rather than scalp.

    Example:
        >>> yy, xx = np.mgrid[:128, :128]
        >>> radius = np.hypot(yy - 64, xx - 64)
        >>> head = np.where(radius < 36, 120, np.where(radius < 42, 0, np.where(radius < 50, 200, 0)))
        >>> mask = brain_mask(head.astype(np.float32))
        >>> bool(mask[64, 64]), bool(mask[64, 64 + 46])  # brain kept, scalp dropped
        (True, False)
    """
    scaled = cv2.normalize(np.asarray(image, dtype=np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    head = _largest_component(ndimage.binary_fill_holes(scaled > 0.5 * _otsu(scaled)))
    if head.sum() < 500:
        return None
    depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, 5)
    tissue = (depth > 3) & (scaled > 0.5 * _otsu(scaled[head]))
    tissue = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_OPEN, _disk(2)) > 0
    labels, count = ndimage.label(tissue)
    deep = np.zeros_like(tissue)
    for label in range(1, count + 1):
        component = labels == label
        if component.sum() >= 30 and np.median(depth[component]) > min_depth_px:
            deep |= component
    if not deep.any():
        return None
    brain = cv2.morphologyEx(deep.astype(np.uint8), cv2.MORPH_CLOSE, _disk(7)) > 0
    brain = _largest_component(ndimage.binary_fill_holes(brain) & head)
    share = brain.sum() / head.sum()
    return brain if BRAIN_SHARE_OF_HEAD[0] <= share <= BRAIN_SHARE_OF_HEAD[1] else None


def strip_skull(volume: np.ndarray, tumour: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Skull-stripped copy of a (S, H, W) volume: everything outside the brain set to the volume's darkest level.

    Args:
        volume: skull-on axial slices.
        tumour: the manual tumour mask, kept inside the brain.

    Returns:
        The stripped volume and a (S,) boolean array saying which slices were stripped (the others keep their
        skull, see the module docstring).
    """
    volume = np.asarray(volume, dtype=np.float32)
    background = float(volume.min())
    stripped = volume.copy()
    done = np.zeros(len(volume), dtype=bool)
    for index, image in enumerate(volume):
        brain = brain_mask(image)
        if brain is None:
            continue
        if tumour is not None:
            brain |= np.asarray(tumour[index], dtype=bool)
        stripped[index][~brain] = background
        done[index] = True
    return stripped, done
