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

VOLUME_SCORES = ("voxels", "mass", "mass_x_slices")


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
        volume_score: what the 3D filter compares with the largest component, in a volume: "voxels" (its size, the
            default), "mass" (the sum of its probabilities) or "mass_x_slices" (that sum times the number of slices
            the component spans, so a thin cap or a one-slice artefact weighs little against a tumour that extends
            across slices). ``min_volume_fraction`` is the fraction of the largest score kept.
        min_peak_probability: in a volume, 3D components whose highest probability stays below this are removed;
            0 keeps everything.
        keep_attached_specks: in a volume, keep the 2D specks that are 26-connected to a component the 3D filter
            keeps: the tip of a tumour on its first or last slice, which the speck filter alone removes.

    The last three are off by default, so a weights folder that does not name them behaves as before. Like the
    other filters they only ever remove pixels above the threshold (or filled holes).
    """

    threshold: float = 0.5
    min_component_fraction: float = 0.0
    min_volume_fraction: float = 0.0
    fill_holes: bool = False
    volume_score: str = "voxels"
    min_peak_probability: float = 0.0
    keep_attached_specks: bool = False

    def __post_init__(self) -> None:
        if self.volume_score not in VOLUME_SCORES:
            raise ValueError(f"volume_score must be one of {', '.join(VOLUME_SCORES)}, not {self.volume_score!r}")

    def volume_filter_rule(self) -> str:
        """What the 3D filter keeps, in words (the app's note on a removed region, the model card).

        Example:
            >>> PostprocessingConfig(min_volume_fraction=0.2).volume_filter_rule()
            'keeps only components at least 20% of the largest'
            >>> config = PostprocessingConfig(min_volume_fraction=0.117, volume_score="mass_x_slices")
            >>> rule = config.volume_filter_rule()
            >>> rule.removeprefix("keeps only components whose summed probability times the slices they span ")
            "is at least 11.7% of the largest one's"
        """
        if self.volume_score == "voxels":
            return f"keeps only components at least {self.min_volume_fraction:.0%} of the largest"
        measure = "summed probability" + (" times the slices they span" if self.volume_score == "mass_x_slices" else "")
        return f"keeps only components whose {measure} is at least {self.min_volume_fraction:.1%} of the largest one's"

    @property
    def judges_volumes(self) -> bool:
        """Whether the volume-level options (score, peak, attached specks) differ from the plain 3D filter."""
        return self.volume_score != "voxels" or self.min_peak_probability > 0 or self.keep_attached_specks


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
        kept = stats[:, cv2.CC_STAT_AREA] >= min_area
        kept[0] = False  # label 0 is the background
        cleaned.reshape(-1, *mask.shape[-2:])[index] = kept[labels]  # a lookup: np.isin sorts on every call
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
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background
    return (sizes >= min_fraction * sizes[1:].max())[labels]


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
    labels, count = ndimage.label(~planes, structure)
    open_to_edge = np.zeros(count + 1, bool)
    open_to_edge[labels[:, [0, -1], :]] = True
    open_to_edge[labels[:, :, [0, -1]]] = True
    open_to_edge[0] = True  # label 0 is the mask itself
    return (planes | ~open_to_edge[labels]).reshape(mask.shape)


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
    box = bounding_box(above)
    if box is None:
        return mask
    crop = above[box]
    if config.fill_holes:
        crop = fill_enclosed(crop)
    slice_area = above.shape[-1] * above.shape[-2]
    candidates = crop
    crop = remove_small_components(crop, int(round(config.min_component_fraction * slice_area)))
    # The 3D filter belongs to volumes: a volume whose pixels above the threshold lie on one slice is still one.
    is_volume = above.ndim == 3 and len(above) > 1
    if is_volume and config.judges_volumes:
        crop_probabilities = np.asarray(probabilities)[box]
        kept = judge_components(crop, crop_probabilities, config.min_volume_fraction, config.volume_score,
                                config.min_peak_probability)
        if config.keep_attached_specks:
            kept = kept | attached(candidates & ~crop, kept)
        mask[box] = kept
        return mask
    mask[box] = keep_main_components(crop, config.min_volume_fraction) if is_volume and len(crop) > 1 else \
        _keep_main_in_plane(crop, config.min_volume_fraction if is_volume else 0.0)
    return mask


def judge_components(mask: np.ndarray, probabilities: np.ndarray, min_fraction: float, score: str = "voxels",
                     min_peak: float = 0.0) -> np.ndarray:
    """Keep the 3D (26-connected) components of a (slices, H, W) mask whose ``score`` (see
    :class:`PostprocessingConfig`) is at least ``min_fraction`` of the largest one's and whose highest probability
    reaches ``min_peak``.

    Example: a thin confident blob four times the size of a faint tumour that spans five slices.
        >>> probabilities = np.zeros((6, 40, 40), np.float32)
        >>> probabilities[0, 2:22, 2:22] = 0.95  # 400 voxels on one slice
        >>> probabilities[1:6, 30:35, 30:34] = 0.6  # 100 voxels over five slices
        >>> mask = probabilities >= 0.5
        >>> [int(judge_components(mask, probabilities, 0.3, score)[1:].sum()) for score in VOLUME_SCORES]
        [0, 0, 100]
        >>> int(judge_components(mask, probabilities, 0.0, min_peak=0.9).sum())
        400
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    inside = labels[mask]  # only the voxels above the threshold: a fraction of the box, and of the time
    values = np.asarray(probabilities)[mask].astype(np.float64)
    if score == "voxels":
        scores = np.bincount(inside, minlength=count + 1).astype(np.float64)
    else:
        scores = np.bincount(inside, weights=values, minlength=count + 1)
    if score == "mass_x_slices":
        spans = [0] + [where[0].stop - where[0].start for where in ndimage.find_objects(labels)]
        scores = scores * np.asarray(spans)
    scores[0] = 0  # the background
    kept = scores >= min_fraction * scores[1:].max()
    if min_peak > 0:
        peaks = np.full(count + 1, -np.inf)
        np.maximum.at(peaks, inside, values)
        kept[1:] &= peaks[1:] >= min_peak
    kept[0] = False
    return kept[labels]


def attached(specks: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The pixels of ``specks`` that are 26-connected, through specks or ``kept`` pixels, to ``kept``.

    Example:
        >>> kept = np.zeros((3, 8, 8), bool); kept[1, 2:5, 2:5] = True
        >>> specks = np.zeros_like(kept); specks[0, 3, 3] = specks[2, 7, 7] = True
        >>> np.argwhere(attached(specks, kept)).tolist()
        [[0, 3, 3]]
    """
    from scipy import ndimage

    if not specks.any() or not kept.any():
        return np.zeros_like(specks)
    labels, count = ndimage.label(specks | kept, structure=np.ones((3, 3, 3)))
    touching = np.zeros(count + 1, bool)
    touching[labels[kept]] = True
    touching[0] = False
    return specks & touching[labels]


def _keep_main_in_plane(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """:func:`keep_main_components` of a volume whose mask lies on one slice (26-connected there is 8-connected)."""
    if min_fraction <= 0 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.reshape(mask.shape[-2:]).astype(np.uint8),
                                                               connectivity=8)
    sizes = stats[:, cv2.CC_STAT_AREA].copy()
    sizes[0] = 0
    return (sizes >= min_fraction * sizes.max())[labels].reshape(mask.shape)


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """The slices, rows and columns of a (slices, H, W) or (H, W) mask that hold any pixel, with ``margin`` pixels
    of background around them in-plane (so a hole touching the box's edge is still open to the outside); None for
    an empty mask.

    Example:
        >>> mask = np.zeros((4, 8, 8), bool); mask[1:3, 2, 3:5] = True
        >>> bounding_box(mask)
        (slice(1, 3, None), slice(1, 4, None), slice(2, 6, None))
        >>> bounding_box(mask[1])
        (Ellipsis, slice(1, 4, None), slice(2, 6, None))
    """
    mask = np.asarray(mask, bool)
    planes = mask.reshape(-1, *mask.shape[-2:])
    filled = np.flatnonzero(planes.any(axis=(1, 2))).tolist()
    if not filled:
        return None
    rows = np.flatnonzero(planes.any(axis=(0, 2))).tolist()
    columns = np.flatnonzero(planes.any(axis=(0, 1))).tolist()
    in_plane = (slice(max(rows[0] - margin, 0), rows[-1] + 1 + margin),
                slice(max(columns[0] - margin, 0), columns[-1] + 1 + margin))
    return (slice(filled[0], filled[-1] + 1), *in_plane) if mask.ndim == 3 else (..., *in_plane)


def removed_regions(probabilities: np.ndarray, config: PostprocessingConfig = PostprocessingConfig(),
                    threshold: float | None = None) -> list[dict]:
    """What the filters of :func:`binarize` remove at ``threshold``, so a page can say why a confident region has
    no outline: one dict per connected region (26-connected in a volume), the most confident first.

    Each dict holds ``first_slice`` and ``last_slice`` (0-based), ``voxels``, ``peak`` (the highest probability
    inside) and ``reason``: "speck" (the 2D filter: smaller than ``min_component_fraction`` of its slice) or
    "volume" (the 3D filter: smaller than ``min_volume_fraction`` of the volume's largest component).

    Example:
        >>> probabilities = np.zeros((3, 40, 40)); probabilities[:, 5:25, 5:25] = 0.9
        >>> probabilities[1, 30:33, 30:33] = 0.8  # a 9-voxel blob beside a 1,200-voxel mass
        >>> [(r["first_slice"], r["voxels"], r["peak"], r["reason"])
        ...  for r in removed_regions(probabilities, PostprocessingConfig(min_volume_fraction=0.2), 0.5)]
        [(1, 9, 0.8, 'volume')]
    """
    from scipy import ndimage

    threshold = config.threshold if threshold is None else threshold
    probabilities = np.asarray(probabilities)
    above = probabilities >= threshold
    box = bounding_box(above)
    if box is None:
        return []
    candidates = fill_enclosed(above[box]) if config.fill_holes else above[box]
    min_area = int(round(config.min_component_fraction * above.shape[-1] * above.shape[-2]))
    without_specks = remove_small_components(candidates, min_area)
    kept = binarize(probabilities, config, threshold)[box]
    first = box[0].start if above.ndim == 3 else 0
    crop = probabilities[box].reshape(-1, *candidates.shape[-2:])
    regions = []
    # A speck the volume-level options keep (attached to the tumour) is not removed.
    for removed, reason in ((candidates & ~without_specks & ~kept, "speck"), (without_specks & ~kept, "volume")):
        labels, count = ndimage.label(removed.reshape(crop.shape), structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        peaks = ndimage.maximum(crop, labels, np.arange(1, count + 1)) if count else []
        for label, (where, peak) in enumerate(zip(ndimage.find_objects(labels), peaks, strict=True), start=1):
            regions.append({"first_slice": first + where[0].start, "last_slice": first + where[0].stop - 1,
                            "voxels": int(sizes[label]), "peak": float(peak), "reason": reason})
    return sorted(regions, key=lambda region: (-region["peak"], -region["voxels"]))
