"""Overlap and distance metrics between a predicted and a ground-truth mask.

Conventions (those of the field): when both masks are empty, Dice, IoU, precision and recall are 1 (a correct
"no tumour"); when exactly one is empty they are 0 except where the definition says otherwise below. HD95 is in
pixels unless a spacing is given, and undefined (None) when either mask is empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # only for the annotation: measuring a mask needs no reader
    from mriseg.data.io import Volume


def _counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} must have the same shape")
    true_positive = int(np.count_nonzero(prediction & truth))
    false_positive = int(np.count_nonzero(prediction)) - true_positive
    return true_positive, false_positive, int(np.count_nonzero(truth)) - true_positive


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); 1.0 when both are empty."""
    tp, fp, fn = _counts(prediction, truth)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P∪T|; 1.0 when both are empty."""
    tp, fp, fn = _counts(prediction, truth)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def precision(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P|; 1.0 when nothing is predicted (no false positive was made)."""
    tp, fp, _ = _counts(prediction, truth)
    return 1.0 if tp + fp == 0 else tp / (tp + fp)


def recall(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |T|; 1.0 when there is no tumour to find."""
    tp, _, fn = _counts(prediction, truth)
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Coordinates (slice, row, col) of boundary pixels of each 2D slice of a mask."""
    mask = np.asarray(mask, dtype=np.uint8)
    eroded = np.stack([cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
                       for m in mask.reshape(-1, *mask.shape[-2:])]).reshape(mask.shape)
    return np.argwhere(mask.astype(bool) & ~eroded.astype(bool))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float | None:
    """95th percentile symmetric Hausdorff distance between mask surfaces.

    Args:
        prediction: boolean mask, 2D (H, W) or 3D (slices, H, W).
        truth: boolean mask of the same shape.
        spacing: physical size of one step along each axis (mm); pixels when None.

    Returns:
        The distance, or None when either mask is empty (the distance is undefined).
    """
    from scipy.spatial import cKDTree

    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    _counts(prediction, truth)
    if not prediction.any() or not truth.any():
        return None
    scale = np.ones(prediction.ndim) if spacing is None else np.asarray(spacing[-prediction.ndim:], dtype=float)
    if prediction.ndim == 2:
        pred_points, truth_points = _surface_points(prediction[None])[:, 1:], _surface_points(truth[None])[:, 1:]
    else:
        pred_points, truth_points = _surface_points(prediction), _surface_points(truth)
    pred_points = pred_points * scale
    truth_points = truth_points * scale
    to_truth, _ = cKDTree(truth_points).query(pred_points)
    to_prediction, _ = cKDTree(pred_points).query(truth_points)
    return float(np.percentile(np.concatenate([to_truth, to_prediction]), 95))


@dataclass(frozen=True)
class OverlapReport:
    """All metrics of one prediction against one ground truth."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float | None
    predicted_pixels: int
    truth_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> OverlapReport:
    """Every metric at once (Dice, IoU, precision, recall, HD95, pixel counts)."""
    return OverlapReport(
        dice=dice(prediction, truth),
        iou=iou(prediction, truth),
        precision=precision(prediction, truth),
        recall=recall(prediction, truth),
        hd95=hd95(prediction, truth, spacing),
        predicted_pixels=int(np.count_nonzero(prediction)),
        truth_pixels=int(np.count_nonzero(truth)),
    )


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per patient).

    With a few dozen patients, a mean Dice is uncertain by several hundredths; the interval says how far the
    same model could land on another draw of patients like these. Seeded, so a report is reproducible.

    Args:
        values: one number per patient (at least one).
        confidence: the share of resampled means the interval holds.
        resamples: how many times the patients are drawn again, with replacement.
        seed: seeds the draws.

    Returns:
        (low, high), the interval's ends.

    Example:
        >>> bootstrap_interval([0.5, 0.5, 0.5])  # every patient alike: no uncertainty
        (0.5, 0.5)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("a bootstrap interval needs a non-empty list of per-patient values")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


class ReliabilityCounts:
    """Pixel counts per probability bin, for a reliability diagram: does a probability of 0.8 mean 80%?

    Add (probabilities, truth) pairs one volume at a time; the counts stay small however many pixels pass.

    Args:
        bins: equal-width probability bins over [0, 1].

    Example:
        >>> counts = ReliabilityCounts(bins=2)
        >>> counts.add(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0, 0, 1, 0]))
        >>> [row["tumour_fraction"] for row in counts.table()]
        [0.0, 0.5]
    """

    def __init__(self, bins: int = 10) -> None:
        if bins < 1:
            raise ValueError("a reliability diagram needs at least one bin")
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.pixels = np.zeros(bins)
        self.probability_sum = np.zeros(bins)
        self.tumour = np.zeros(bins)

    def add(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        # float32, as the model gives them: in float64 a float32 0.7 is 0.69999998 and would land in the bin below
        probabilities = np.asarray(probabilities, dtype=np.float32).ravel()
        truth = np.asarray(truth, dtype=bool).ravel()
        if probabilities.shape != truth.shape:
            raise ValueError(f"{probabilities.size} probabilities but {truth.size} ground-truth pixels")
        bins = len(self.pixels)
        index = np.clip((probabilities * np.float32(bins)).astype(np.int64), 0, bins - 1)
        self.pixels += np.bincount(index, minlength=bins)
        self.probability_sum += np.bincount(index, weights=probabilities, minlength=bins)
        self.tumour += np.bincount(index, weights=truth, minlength=bins)

    def table(self) -> list[dict]:
        """One row per bin: its range, pixel count, mean predicted probability and observed tumour fraction
        (None for an empty bin)."""
        rows = []
        for low, high, pixels, probability_sum, tumour in zip(self.edges[:-1], self.edges[1:], self.pixels,
                                                              self.probability_sum, self.tumour, strict=True):
            rows.append({"low": float(low), "high": float(high), "pixels": int(pixels),
                         "mean_probability": float(probability_sum / pixels) if pixels else None,
                         "tumour_fraction": float(tumour / pixels) if pixels else None})
        return rows

    def expected_calibration_error(self, from_probability: float = 0.0) -> float | None:
        """Pixel-weighted mean gap between predicted probability and observed tumour fraction.

        Over all pixels the confident background (probability near 0, almost never tumour) dominates and the
        error looks tiny; ``from_probability`` = 0.1 keeps only the bins from 0.1 up, where the model sees
        possible tumour, which is what the heat map shows. None when those bins hold no pixel.
        """
        kept = self.edges[:-1] >= from_probability - 1e-9
        pixels = self.pixels[kept].sum()
        if pixels == 0:
            return None
        return float(np.abs(self.probability_sum[kept] - self.tumour[kept]).sum() / pixels)


def tumour_size(mask: np.ndarray, volume: Volume) -> dict:
    """Area per slice and in total, in pixels and (when the file records spacing) mm² and mL.

    Args:
        mask: boolean (slices, H, W) mask.
        volume: the volume it belongs to (for the spacing).

    Returns:
        ``pixels`` (all slices), ``slice_pixels`` (list), ``largest_slice`` (index, None without tumour),
        ``area_mm2`` (a single slice's area; None for a volume, whose size is its ``volume_ml``, or without
        spacing: areas of different slices do not add up to anything), ``volume_ml`` (None when the spacing is
        unknown or there is a single slice).
    """
    mask = np.asarray(mask, dtype=bool)
    slice_pixels = mask.reshape(len(mask), -1).sum(axis=1).astype(int).tolist()
    total = int(sum(slice_pixels))
    pixel_area = volume.pixel_area_mm2
    voxel_ml = volume.voxel_volume_ml
    return {
        "pixels": total,
        "slice_pixels": slice_pixels,
        "largest_slice": int(np.argmax(slice_pixels)) if total else None,
        "area_mm2": None if pixel_area is None or len(mask) > 1 else total * pixel_area,
        "volume_ml": None if voxel_ml is None or len(mask) < 2 else total * voxel_ml,
    }
