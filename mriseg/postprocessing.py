"""From probabilities to a mask: threshold, fill enclosed cores, then drop connected components too small to be
tumour.

Two filters, both tuned on validation patients: 2D specks smaller than a fraction of the slice, and, in
volumes, 3D components much smaller than the largest one (a lower-grade glioma is usually one mass; the
stray blobs it leaves on tumour-free slices near the skull base are the commonest false positives).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mriseg.config import DictConfig


@dataclass(frozen=True)
class PostprocessingConfig(DictConfig):
    """Args:
        threshold: probability at or above which a pixel is tumour.
        min_component_fraction: 2D connected components smaller than this fraction of the slice area are
            removed (specks that are almost always false positives); 0 keeps everything.
        min_volume_fraction: in a volume (several slices), 3D connected components smaller than this fraction
            of the largest one are removed; 0 keeps everything.
        fill_holes: fill what the mask encloses on each slice. The manual masks of the training set draw a dark
            core (a cyst, necrosis) surrounded by FLAIR abnormality as tumour, and so does the whole-tumour
            outline of the BraTS challenge; the network, reading intensities, tends to leave such a core out.
    """

    threshold: float = 0.5
    min_component_fraction: float = 0.0
    min_volume_fraction: float = 0.0
    fill_holes: bool = False


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_area`` pixels from each 2D slice."""
    mask = np.asarray(mask, dtype=bool)
    if min_area <= 1:
        return mask
    cleaned = np.zeros_like(mask)
    for index, plane in enumerate(mask.reshape(-1, *mask.shape[-2:])):
        if not plane.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(plane.astype(np.uint8), connectivity=8)
        keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
        keep = keep[keep != 0]
        cleaned.reshape(-1, *mask.shape[-2:])[index] = np.isin(labels, keep)
    return cleaned


def keep_main_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Drop 3D (26-connected) components smaller than ``min_fraction`` of the largest in a (slices, H, W) mask."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if min_fraction <= 0 or mask.ndim != 3 or len(mask) < 2 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each 2D slice of a mask: background not 4-connected to the slice's edge.

    Example:
        >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
        >>> bool(fill_enclosed(ring)[3, 3])
        True
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    planes = mask.reshape(-1, *mask.shape[-2:])
    # One labelling of the background of every slice at once: connected within a slice, never across slices.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, _ = ndimage.label(~planes, structure)
    edge = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    holes = (labels > 0) & ~np.isin(labels, edge)
    return (planes | holes).reshape(mask.shape)


def binarize(probabilities: np.ndarray, config: PostprocessingConfig = PostprocessingConfig(),
             threshold: float | None = None) -> np.ndarray:
    """Threshold probabilities (``threshold`` overrides the configured one), fill enclosed holes where configured
    and remove small components.

    The filters run on the rows and columns that hold any pixel above the threshold (plus a one-pixel margin of
    background, so a hole touching that box's edge is still open to the outside): the same mask, in a fraction
    of the time for a small tumour, which is what lets the app precompute every threshold step.
    """
    threshold = config.threshold if threshold is None else threshold
    above = np.asarray(probabilities) >= threshold
    mask = np.zeros_like(above)
    rows, columns = np.flatnonzero(above.any(axis=-1).reshape(-1, above.shape[-2]).any(axis=0)), \
        np.flatnonzero(above.any(axis=-2).reshape(-1, above.shape[-1]).any(axis=0))
    if not len(rows):
        return mask
    box = (..., slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(columns[0] - 1, 0), columns[-1] + 2))
    crop = above[box]
    if config.fill_holes:
        crop = fill_enclosed(crop)
    slice_area = above.shape[-1] * above.shape[-2]
    crop = remove_small_components(crop, int(round(config.min_component_fraction * slice_area)))
    mask[box] = keep_main_components(crop, config.min_volume_fraction)
    return mask
